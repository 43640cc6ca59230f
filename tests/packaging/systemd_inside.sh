#!/bin/sh
# Runs inside the systemd_check.sh container (systemd is PID 1) as a oneshot unit; writes
# RESULTS/checks.txt (CHECK PASS|FAIL name detail, INFO lines), RESULTS/journal.txt.
# The package is installed the operator's way; xen9pd runs under the packaged unit with a drop-in
# that lifts the dom0-only conditions and points it at the simulated Xen (a container is no dom0).
RES=${1:-/results}; OUT=$RES/checks.txt; : > "$OUT"
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
SIM=/run/xen9psim
check() { echo "CHECK $1 $2 ${3:-}" >> "$OUT"; }
info() { echo "INFO $*" >> "$OUT"; }
ok() { if [ "$2" = "$3" ]; then check "$1" PASS "$2"; else check "$1" FAIL "want [$3] got [$2]"; fi; }
up() { cut -d' ' -f1 /proc/uptime; }
# until_ok SECONDS CMD...: poll CMD every 0.2 s until it succeeds (0) or the deadline (1).
until_ok() { local end; end=$(awk "BEGIN{print $(up) + $1}"); shift
    while ! "$@" >/dev/null 2>&1; do awk "BEGIN{exit !($(up) > $end)}" && return 1; sleep 0.2; done; return 0; }
ring_pids() { xen9pctl --json status 2>/dev/null | python3 -c '
import json, sys
st = json.load(sys.stdin)
print(" ".join(str(r["pid"]) for d in sorted(st["devices"], key=lambda d: d["name"]) for r in d["rings"]))'; }
main_pid() { systemctl show -p MainPID --value xen9pd; }
be_state() { python3 -c "
from xen9p_sim.toolstack import dom0_client
xs = dom0_client('$SIM'); print(xs.read('/local/domain/0/backend/xen_9pfs/$1/0/state')); xs.close()"; }
guest_ops() { tail -n 50 /tmp/guest$1.out 2>/dev/null | grep '"progress"' | tail -1 | sed 's/.*"ops": \([0-9]*\).*/\1/'; }
ops_above() { [ "$(guest_ops $1)" -gt $2 ] 2>/dev/null; }  # ops_above GUEST N
back_from() {  # back_from OLD_MAIN_PID: the unit active again with another main pid that answers
    [ "$(systemctl is-active xen9pd)" = active ] && [ "$(main_pid)" != "$1" ] && xen9pctl ping; }
# The guests' operation counts grow (the workload goes on) within 30 s.
guests_progress() {  # NAME
    local g a b ok=1
    for g in 5 6; do
        a=$(guest_ops $g); a=${a:-0}
        until_ok 30 ops_above $g $a || ok=0
        b=$(guest_ops $g); info "$1: guest dom$g ops $a -> $b"
    done
    [ $ok = 1 ] && check "$1:guests-progress" PASS || check "$1:guests-progress" FAIL "a guest made no progress in 30 s"
}
daemon_back() {  # NAME OLD_MAIN_PID T0: the unit is active again with a new main pid that answers
    local m
    if until_ok 60 back_from "$2"; then
        m=$(main_pid); check "$1:daemon-back" PASS "main pid $2 -> $m, $(awk "BEGIN{printf \"%.1f\", $(up) - $3}") s"
    else check "$1:daemon-back" FAIL "is-active $(systemctl is-active xen9pd), main pid $(main_pid)"; fi
}

info "$(cat /etc/debian_version) $(systemctl --version | head -1) $(python3 -V)"
cd /root || exit 1
# 1. install, the documented way
if apt-get install -y -q ./old.deb > "$RES/apt-install.log" 2>&1; then
    check install PASS "$(dpkg-query -W -f '${Version}' xen9p)"
else check install FAIL "$(tail -2 "$RES/apt-install.log" | tr '\n' ' ')"; fi
ok unit-enabled "$(systemctl is-enabled xen9pd 2>&1)" enabled
# Not a dom0: the unit's condition keeps it from starting (no failure, nothing running).
info "not a dom0: xen9pd $(systemctl is-active xen9pd), ConditionResult=$(systemctl show -p ConditionResult --value xen9pd)"
ok no-start-outside-dom0 "$(systemctl is-active xen9pd)" inactive

# 2. the simulated Xen under the packaged unit
cat > /etc/systemd/system/xen9psim-xenstored.service <<EOF
[Unit]
Description=simulated xenstored (xen9psim) for the lifecycle check
[Service]
ExecStart=/usr/bin/xen9psim --sim-dir $SIM xenstored
RuntimeDirectory=xen9psim
RuntimeDirectoryPreserve=yes
EOF
mkdir -p /etc/systemd/system/xen9pd.service.d
cat > /etc/systemd/system/xen9pd.service.d/sim.conf <<EOF
[Unit]
ConditionPathExists=
Requires=xen9psim-xenstored.service
After=xen9psim-xenstored.service
[Service]
ExecStartPre=
EOF
echo "XEN9PD_ARGS=\"--platform sim --sim-dir $SIM\"" > /etc/default/xen9pd
systemctl daemon-reload
systemctl start xen9pd; rc=$?
ok start "rc=$rc $(systemctl is-active xen9pd)" "rc=0 active"  # Type=notify: active = READY=1 received
until_ok 30 xen9pctl ping && check ping PASS || check ping FAIL "no answer in 30 s"
for g in 5 6; do
    mkdir -p /srv/g$g
    xen9psim --sim-dir $SIM attach --domid $g --path /srv/g$g --tag g$g > "$RES/attach$g.log" 2>&1 \
        || check attach-$g FAIL "$(tail -1 "$RES/attach$g.log")"
    xen9psim --sim-dir $SIM guest --domid $g --tag g$g --rounds 0 --progress run fsstress,copy,smoke \
        > /tmp/guest$g.out 2> "$RES/guest$g.err" &
    eval "GPID$g=$!"
done
until_ok 60 sh -c 'grep -q mounted /tmp/guest5.out && grep -q mounted /tmp/guest6.out' \
    && check guests-mounted PASS || check guests-mounted FAIL "$(cat "$RES"/guest*.err | tail -3 | tr '\n' ' ')"
guests_progress start
PIDS0=$(ring_pids); info "ring workers: $PIDS0"
[ -n "$PIDS0" ] || check ring-workers FAIL "xen9pctl status lists no ring worker"

# 3. systemctl restart: the workers stay, the next xen9pd adopts them
M=$(main_pid); T=$(up)
systemctl restart xen9pd; ok restart-rc "$?" 0
daemon_back restart "$M" "$T"
ok restart:workers-adopted "$(ring_pids)" "$PIDS0"
guests_progress restart

# 4. the main process killed (a crash): Restart=on-failure starts it again; the workers stay
M=$(main_pid); T=$(up)
systemctl kill --kill-whom=main -s KILL xen9pd
daemon_back crash "$M" "$T"
ok crash:workers-adopted "$(ring_pids)" "$PIDS0"
guests_progress crash

# 5. upgrade to the new package: its postinst restarts the unit; then the workers move to the new code
M=$(main_pid); T=$(up)
if apt-get install -y -q ./new.deb > "$RES/apt-upgrade.log" 2>&1; then
    check upgrade:install PASS "$(dpkg-query -W -f '${Version}' xen9p)"
else check upgrade:install FAIL "$(tail -2 "$RES/apt-upgrade.log" | tr '\n' ' ')"; fi
daemon_back upgrade "$M" "$T"
ok upgrade:workers-adopted "$(ring_pids)" "$PIDS0"
info "xen9pd now: $(xen9pctl --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["daemon"].get("version"))')"
xen9pctl upgrade > "$RES/xen9pctl-upgrade.log" 2>&1; ok upgrade:xen9pctl-upgrade-rc "$?" 0
PIDS1=$(ring_pids); info "ring workers after xen9pctl upgrade: $PIDS1"
n_old=0; for p in $PIDS1; do case " $PIDS0 " in *" $p "*) n_old=$((n_old + 1));; esac; done
[ -n "$PIDS1" ] && [ $n_old = 0 ] && check upgrade:workers-replaced PASS "$(echo $PIDS1 | wc -w) new worker(s)" \
    || check upgrade:workers-replaced FAIL "before [$PIDS0] after [$PIDS1]"
guests_progress upgrade

# 6. the guests finish their workload: no error anywhere through all of the above
for g in 5 6; do
    eval "kill -INT \$GPID$g; wait \$GPID$g"; rc=$?
    s=$(grep '"summary"' /tmp/guest$g.out | python3 -c 'import json,sys; s=json.loads(sys.stdin.read())["summary"]; print(s["ops"], s["errors"])')
    [ $rc = 0 ] && [ "${s#* }" = 0 ] && check guest$g:no-errors PASS "rc 0, ${s% *} ops, 0 errors" \
        || check guest$g:no-errors FAIL "rc $rc, ops/errors [$s]: $(tail -2 "$RES/guest$g.err" | tr '\n' ' ')"
    cp /tmp/guest$g.out "$RES/"
done

# 7. systemctl stop (as at host shutdown): every device closed, no worker left
xen9psim --sim-dir $SIM attach --domid 7 --path /srv/g5 --tag g7 > "$RES/attach7.log" 2>&1
xen9psim --sim-dir $SIM guest --domid 7 --tag g7 --rounds 0 --progress run smoke > /tmp/guest7.out 2> "$RES/guest7.err" &
G7=$!
until_ok 60 grep -q mounted /tmp/guest7.out || check stop:guest-mounted FAIL ""
ok stop:before "$(be_state 7)" 4
systemctl stop xen9pd; ok stop:rc "$?" 0
ok stop:inactive "$(systemctl is-active xen9pd)" inactive
ok stop:device-closed "$(be_state 7)" 6
until_ok 30 sh -c '! pgrep -f "^xen9p dom"' && check stop:no-worker PASS || check stop:no-worker FAIL "$(pgrep -af '^xen9p dom')"
kill -INT $G7 2>/dev/null; wait $G7
journalctl -u xen9pd --no-pager -o short-monotonic > "$RES/journal.txt" 2>&1
grep -qi traceback "$RES/journal.txt" && check journal:no-traceback FAIL "see journal.txt" || check journal:no-traceback PASS
check done PASS
