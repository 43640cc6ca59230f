#!/bin/bash
# The real-Xen harness, one command: build (cached) Xen + dom0 + domU images from Debian packages
# (XEN9P_XEN_SUITE: bookworm = Xen 4.17, the default; trixie = Xen 4.20), build xen9p's .deb from
# this checkout (dom0 installs it), boot under QEMU/TCG, run this checkout's platform tests and the
# installed xen9pd against the real hypervisor in dom0, print a summary; exit 0 only if every check passed.
#   env: XEN9P_CACHE (image cache), XEN9P_REALXEN_RUN_DIR (default /var/tmp/xen9p-realxen/run-<time>),
#        XEN9P_REALXEN_CASES (default for 4.17 "platform qemu_xen9p xen9p_9pfs", its CI run "platform xen9p_only";
#        for 4.20 "platform xl_xen9pd vs_9pfsd hotattach", its CI run "xl_xen9pd"), XEN9P_RESTART=0 (no xen9pd restart in xl_xen9pd),
#        XEN9P_REALXEN_TIMEOUT (wall-clock seconds per boot, default 5400), XEN9P_REBUILD=1,
#        dom0 knobs: XEN9P_DOMU_EXTRA (domU kernel args, e.g. "p9steps=fio"), XEN9P_TAG_BUDGET (s per tag,
#        1500), XEN9P_DOMU_STALL (s of domU console silence = stall, 600), XEN9P_READY_TIMEOUT (120)
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../../.." && pwd)
export XEN9P_XEN_SUITE=${XEN9P_XEN_SUITE:-bookworm}
case $XEN9P_XEN_SUITE in trixie) DEFAULT_CASES="platform xl_xen9pd vs_9pfsd hotattach";; *) DEFAULT_CASES="platform qemu_xen9p xen9p_9pfs";; esac
CASES=${XEN9P_REALXEN_CASES:-$DEFAULT_CASES}
RUN=${XEN9P_REALXEN_RUN_DIR:-/var/tmp/xen9p-realxen/run-$(date +%Y%m%d-%H%M%S)}
T0=$SECONDS
say() { echo "[realxen +$((SECONDS - T0))s] $*"; }

mkdir -p "$RUN/results/domu"
say "run dir $RUN; suite $XEN9P_XEN_SUITE; cases: $CASES"
IMG=$("$HERE/build.sh" 2> "$RUN/build.log" | tail -1)
if [ ! -e "$IMG/ready" ]; then
    say "image build failed:"; tail -15 "$RUN/build.log"; echo "REALXEN RESULT: FAIL (build)"; exit 1
fi
echo "build_s	$((SECONDS - T0))" > "$RUN/results/host-timings.tsv"
say "images: $IMG ($(grep built_s "$IMG/manifest.txt" 2>/dev/null || echo cached))"
# What dom0 installs: this checkout's Debian package, built the documented way.
D=$SECONDS
if ! (cd "$SRC" && ./xen9p-dev deb "$RUN/results/deb") > "$RUN/deb-build.log" 2>&1; then
    say "xen9p .deb build failed:"; tail -15 "$RUN/deb-build.log"; echo "REALXEN RESULT: FAIL (deb)"; exit 1
fi
echo "deb_build_s	$((SECONDS - D))" >> "$RUN/results/host-timings.tsv"
say "package: $(ls "$RUN"/results/deb/*.deb) in $((SECONDS - D))s"

# The domU gets the cached base initramfs plus this checkout's workload as a second archive.
OV=$(mktemp -d); trap 'rm -rf "$OV"' EXIT
install -m 755 "$HERE/guest/workload.sh" "$OV/workload.sh"
(cd "$OV" && echo workload.sh | cpio -o -H newc --quiet | gzip -1) > "$OV/overlay.cpio.gz"
cat "$IMG/domu-base.cpio.gz" "$OV/overlay.cpio.gz" > "$RUN/results/domu/initrd.cpio.gz"
cp "$IMG/vmlinuz" "$RUN/results/domu/vmlinuz"
echo "$CASES" > "$RUN/results/cases"
# dom0 knobs (main.sh sources this): domU kernel args, per-tag budget, console-silence stall, xen9pd ready timeout.
env | grep -E '^XEN9P_(DOMU_EXTRA|TAG_BUDGET|DOMU_STALL|READY_TIMEOUT|RESTART)=' | sed "s/=\(.*\)/='\1'/" > "$RUN/results/lab-env"

B=$SECONDS
python3 "$HERE/boot.py" --images "$IMG" --src "$SRC" --results "$RUN/results" \
    --timeout "${XEN9P_REALXEN_TIMEOUT:-5400}" --stall "${XEN9P_REALXEN_STALL:-240}"
say "QEMU finished in $((SECONDS - B))s"
echo "boot_total_s	$((SECONDS - B))" >> "$RUN/results/host-timings.tsv"
python3 "$HERE/summarize.py" "$RUN" --cases "$CASES"
rc=$?
say "total $((SECONDS - T0))s; summary in $RUN/summary.txt"
exit $rc
