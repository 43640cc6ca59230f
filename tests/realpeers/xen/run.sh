#!/bin/bash
# The real-Xen harness, one command: build (cached) Xen 4.17 + dom0 + domU images from Debian
# packages, boot them under QEMU/TCG, run this checkout's platform tests and xen9pd against the
# real hypervisor in dom0, print a summary; exit 0 only if every check passed.
#   env: XEN9P_CACHE (image cache), XEN9P_REALXEN_RUN_DIR (default /var/tmp/xen9p-realxen/run-<time>),
#        XEN9P_REALXEN_CASES (default "platform qemu_xen9p xen9p_9pfs"; CI's reduced run: "xen9p_only"),
#        XEN9P_REALXEN_TIMEOUT (wall-clock seconds per boot, default 5400), XEN9P_REBUILD=1,
#        dom0 knobs: XEN9P_DOMU_EXTRA (domU kernel args, e.g. "p9steps=fio"), XEN9P_TAG_BUDGET (s per tag,
#        1500), XEN9P_DOMU_STALL (s of domU console silence = stall, 600), XEN9P_READY_TIMEOUT (120)
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../../.." && pwd)
CASES=${XEN9P_REALXEN_CASES:-platform qemu_xen9p xen9p_9pfs}
RUN=${XEN9P_REALXEN_RUN_DIR:-/var/tmp/xen9p-realxen/run-$(date +%Y%m%d-%H%M%S)}
T0=$SECONDS
say() { echo "[realxen +$((SECONDS - T0))s] $*"; }

mkdir -p "$RUN/results/domu"
say "run dir $RUN; cases: $CASES"
IMG=$("$HERE/build.sh" 2> "$RUN/build.log" | tail -1)
if [ ! -e "$IMG/ready" ]; then
    say "image build failed:"; tail -15 "$RUN/build.log"; echo "REALXEN RESULT: FAIL (build)"; exit 1
fi
echo "build_s	$((SECONDS - T0))" > "$RUN/results/host-timings.tsv"
say "images: $IMG ($(grep built_s "$IMG/manifest.txt" 2>/dev/null || echo cached))"

# The domU gets the cached base initramfs plus this checkout's workload as a second archive.
OV=$(mktemp -d); trap 'rm -rf "$OV"' EXIT
install -m 755 "$HERE/guest/workload.sh" "$OV/workload.sh"
(cd "$OV" && echo workload.sh | cpio -o -H newc --quiet | gzip -1) > "$OV/overlay.cpio.gz"
cat "$IMG/domu-base.cpio.gz" "$OV/overlay.cpio.gz" > "$RUN/results/domu/initrd.cpio.gz"
cp "$IMG/vmlinuz" "$RUN/results/domu/vmlinuz"
echo "$CASES" > "$RUN/results/cases"
# dom0 knobs (main.sh sources this): domU kernel args, per-tag budget, console-silence stall, xen9pd ready timeout.
env | grep -E '^XEN9P_(DOMU_EXTRA|TAG_BUDGET|DOMU_STALL|READY_TIMEOUT)=' | sed "s/=\(.*\)/='\1'/" > "$RUN/results/lab-env"

B=$SECONDS
python3 "$HERE/boot.py" --images "$IMG" --src "$SRC" --results "$RUN/results" \
    --timeout "${XEN9P_REALXEN_TIMEOUT:-5400}" --stall "${XEN9P_REALXEN_STALL:-240}"
say "QEMU finished in $((SECONDS - B))s"
echo "boot_total_s	$((SECONDS - B))" >> "$RUN/results/host-timings.tsv"
python3 "$HERE/summarize.py" "$RUN" --cases "$CASES"
rc=$?
say "total $((SECONDS - T0))s; summary in $RUN/summary.txt"
exit $rc
