#!/bin/bash
# The operator's lifecycle under a real systemd: a fresh Debian root (debootstrap of the NAMED suite,
# cached) booted with systemd as PID 1 in systemd-nspawn; inside, `apt-get install ./xen9p_A.deb`,
# then xen9pd under its own unit (on the simulated platform: a container is no dom0) serving guests
# that run a verified workload through `systemctl restart`, a SIGKILL of the main process
# (Restart=on-failure), an upgrade to xen9p_B.deb (its postinst restarts the unit) and `xen9pctl
# upgrade`; then `systemctl stop` closes every device. The checks are in systemd_inside.sh.
#   usage (root): tests/packaging/systemd_check.sh SUITE OLD.deb NEW.deb     (SUITE: bookworm | trixie)
#   env: XEN9P_CACHE (default /var/tmp/xen9p-cache; the roots live in $XEN9P_CACHE/systemd),
#        XEN9P_MIRROR. Prints CHECK lines and `SYSTEMD CHECK RESULT: PASS|FAIL`; exit 0 only on PASS,
#        2 when a tool is missing or not root, 3 when the root cannot be made (debootstrap: no mirror).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SUITE=${1:?suite}; OLD=$(readlink -f "${2:?old deb}"); NEW=$(readlink -f "${3:?new deb}")
CACHE=${XEN9P_CACHE:-/var/tmp/xen9p-cache}/systemd
MIRROR=${XEN9P_MIRROR:-http://deb.debian.org/debian}
# What xen9p's Depends pull in, preinstalled so the boot needs no network; python3-cffi-backend is
# named because python3-zmq's cffi API dependency is not resolved by debootstrap.
PKGS=systemd-sysv,dbus,python3,python3-cffi-backend,python3-zmq,python3-psutil,python3-pyxs,python3-prometheus-client,procps
for t in debootstrap systemd-nspawn; do
    command -v $t >/dev/null || { echo "systemd_check: $t is missing (apt-get install debootstrap systemd-container)"; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "systemd_check: needs root (debootstrap, systemd-nspawn)"; exit 2; }
BASE=$CACHE/root-$SUITE
if [ ! -e "$BASE/.ready" ]; then
    rm -rf "$BASE"; mkdir -p "$CACHE"
    echo "[systemd] debootstrap $SUITE (once; cached in $BASE)"
    debootstrap --variant=minbase --include="$PKGS" "$SUITE" "$BASE" "$MIRROR" > "$CACHE/debootstrap-$SUITE.log" 2>&1 \
        || { echo "systemd_check: cannot make a $SUITE root: debootstrap failed (no mirror?), see $CACHE/debootstrap-$SUITE.log"; exit 3; }
    chroot "$BASE" apt-get clean
    touch "$BASE/.ready"
fi
# Every run on a fresh copy of the pristine root.
RUN=$(mktemp -d /var/tmp/xen9p-systemd-XXXX); R=$RUN/root
trap 'rm -rf "$RUN"' EXIT
cp -a "$BASE" "$R"
mkdir -p "$RUN/results" "$R/results"
cp "$OLD" "$R/root/old.deb"; cp "$NEW" "$R/root/new.deb"
install -m 755 "$HERE/systemd_inside.sh" "$R/root/systemd_inside.sh"
cat > "$R/etc/systemd/system/xen9p-check.service" <<'EOF'
[Unit]
Description=xen9p lifecycle check (systemd_inside.sh)
After=multi-user.target
[Service]
Type=oneshot
TimeoutStartSec=900
ExecStart=/root/systemd_inside.sh /results
ExecStartPost=/bin/systemctl --no-block poweroff
EOF
mkdir -p "$R/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/xen9p-check.service "$R/etc/systemd/system/multi-user.target.wants/xen9p-check.service"
echo "[systemd] booting $SUITE with systemd in systemd-nspawn"
T0=$SECONDS
timeout 1200 systemd-nspawn -D "$R" -b --register=no --keep-unit --console=pipe -M "xen9p-$SUITE" \
    --bind="$RUN/results:/results" > "$RUN/results/console.log" 2>&1
echo "[systemd] container ended (rc $?) after $((SECONDS - T0)) s"
OUT=${XEN9P_SYSTEMD_OUT:-/var/tmp/xen9p-systemd-$SUITE}
rm -rf "$OUT"; cp -a "$RUN/results" "$OUT"
grep -E '^(CHECK|INFO) ' "$OUT/checks.txt" 2>/dev/null
# CHECK NAME PASS|FAIL DETAIL; the last one (done) says the script ran to its end.
if [ -s "$OUT/checks.txt" ] && ! grep -q '^CHECK [^ ]* FAIL' "$OUT/checks.txt" && grep -q '^CHECK done PASS' "$OUT/checks.txt"; then
    echo "SYSTEMD CHECK RESULT: PASS ($SUITE; everything in $OUT)"; exit 0
fi
echo "SYSTEMD CHECK RESULT: FAIL ($SUITE; see $OUT/checks.txt, $OUT/journal.txt, $OUT/console.log)"; exit 1
