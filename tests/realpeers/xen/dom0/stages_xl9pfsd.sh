# Stages of the Xen >= 4.19 lab (Debian 13's Xen 4.20): devices that plain `xl create` makes from
# `p9=[ '...,type=xen_9pfsd' ]` lines. Sourced by main.sh (its helpers: check, timing, log, up, since,
# tick, run_domu, start_xen9pd, stop_xen9pd, XCTL). libxl serves such a device through whatever holds
# /local/domain/0/libxl/xen-9pfs/state, and spawns Xen's own xen-9pfsd when nothing does.
NODE=/local/domain/0/libxl/xen-9pfs
XEN_9PFSD=$(ls /usr/lib/xen-*/bin/xen-9pfsd 2>/dev/null | head -1)

node_pid() { xenstore-read $NODE/pid 2>/dev/null; }
node_state() { xenstore-read $NODE/state 2>/dev/null; }
peer_pids() { pgrep -x xen-9pfsd | tr '\n' ' '; }
workers() { pgrep -f xen9p_worker | tr '\n' ' '; }
# until_true SECONDS CMD...: polls CMD every 0.5 s; 0 as soon as it succeeds, 1 at the deadline.
until_true() {
    local end; tick; end=$(( NOW + $1 )); shift
    while tick; [ "$NOW" -lt $end ]; do "$@" && return 0; sleep 0.5; done
    "$@"
}
proc_gone() { local p; for p in "$@"; do [ ! -e /proc/$p ] || grep -q '^State:.*Z' /proc/$p/status || return 1; done; }  # exited (a zombie counts)
peer_holds_node() { [ -n "$(peer_pids)" ] && [ "$(node_state)" = running ]; }
state_is() { [ "$(xenstore-read $1/state 2>/dev/null)" = "$2" ]; }  # state_is XENSTORE-DIR STATE
gone_backend() { ! xenstore-read /local/domain/0/backend/xen_9pfs/$1 > /dev/null 2>&1; }
no_workers() { [ -z "$(workers)" ]; }
no_segments() { [ -z "$(ls /dev/shm 2>/dev/null | grep "^xen9p-ds-$1-")" ]; }
verdict() { "$@" && echo PASS || echo FAIL; }  # verdict CMD...: PASS if CMD succeeds

# xen9pd holds libxl's node, with its pid.
check_node_held() {  # CASE
    local st pid; st=$(node_state); pid=$(node_pid)
    [ "$st" = running ] && [ "$pid" = "$XEN9PD" ] && check $1:holds-libxl-node PASS "state=$st pid=$pid" \
        || check $1:holds-libxl-node FAIL "state=[$st] pid=[$pid], xen9pd is $XEN9PD"
}

# Paused-domU hook: libxl made both devices, nothing spawned xen-9pfsd, xen9pd made xl's default
# directory for the device without path=; the hello file goes into it.
xl_devices_hook() {  # NAME DOMID
    local N=$1 id=$2 be=/local/domain/0/backend/xen_9pfs/$2 d tag path keys
    [ -z "$(peer_pids)" ] && [ "$(node_pid)" = "$XEN9PD" ] \
        && check $N:libxl-spawned-no-xen-9pfsd PASS "node pid $(node_pid) = xen9pd" \
        || check $N:libxl-spawned-no-xen-9pfsd FAIL "xen-9pfsd pids [$(peer_pids)], node pid [$(node_pid)]"
    for d in $(xenstore-list $be 2>/dev/null); do
        tag=$(xenstore-read /local/domain/$id/device/9pfs/$d/tag 2>/dev/null)
        path=$(xenstore-read $be/$d/path 2>/dev/null)
        keys=$(for k in max-files max-open-files max-space auto-delete state; do printf '%s=%s ' $k "$(xenstore-read $be/$d/$k 2>/dev/null)"; done)
        log "device $d tag=$tag path=$path $keys"
        case $tag in
        xa) check $N:xa:libxl-device PASS "backend/xen_9pfs/$id/$d path=$path $keys";;
        xb) # xl's default directory: created by xen9pd when the device starts (InitWait: libxl waited for it)
            if until_true 30 test -d "$path"; then check $N:xb:default-path-created PASS "$path $keys"
            else check $N:xb:default-path-created FAIL "$path missing ($keys)"; mkdir -p "$path"; fi
            echo "hello xb" > "$path/hello.txt";;
        esac
    done
    echo "$path" > /tmp/xb-path
}

# Beside the workload: restart xen9pd (SIGTERM, keep-serving exit mode, then start again) while the
# guest creates its 1,000 files; the workers must be the same before and after, the guest must see
# no error (its own checks), and the new xen9pd must hold the node.
restart_watch() {  # NAME DOMID
    local N=$1 f=/var/log/xen/console/guest-$1.log before after t0 rc
    until_true 900 grep -qE "P9T progress xa create 250|P9T DONE" $f
    grep -q "P9T progress xa create 250" $f || { check restart:reached-workload FAIL "the guest never reached create 250"; return; }
    before=$(workers); t0=$(up)
    kill -TERM $XEN9PD
    if until_true 60 sh -c "! kill -0 $XEN9PD 2>/dev/null"; then log "xen9pd $XEN9PD exited $(since $t0)s after SIGTERM"
    else check restart:exit FAIL "xen9pd $XEN9PD alive 60s after SIGTERM"; return; fi
    after=$(workers)
    [ -n "$before" ] && [ "$after" = "$before" ] && check restart:workers-kept-serving PASS "[$after]" \
        || check restart:workers-kept-serving FAIL "before [$before] after exit [$after]"
    start_xen9pd xen_9pfs $N --on-sigterm keep-serving; rc=$?
    echo $XEN9PD > /tmp/xen9pd.pid  # the stage stops this one, answering or not
    [ $rc = 0 ] || return
    timing restart_daemon_away_s $(since $t0)
    # The guest's slowest create in the block(s) of 250 the daemon was away in (its progress lines).
    echo "$(grep -c 'P9T progress xa create' $f)" > /tmp/restart-blocks
    after=$(workers)
    [ "$after" = "$before" ] && check restart:adopted PASS "same workers [$after]; daemon away $(since $t0)s" \
        || check restart:adopted FAIL "before [$before] after [$after]"
    check_node_held restart
    timeout 30 $XCTL --timeout 30 --json status > $R/restart-xen9pctl-status.json 2>&1
}

# What the guest waited while xen9pd was away: its slowest create in the blocks of 250 that the
# away window spanned (block 2 up to the one in progress when the new daemon answered), beside block 1.
restart_latency() {
    [ -f /tmp/restart-blocks ] || return 0
    local last=$(( $(cat /tmp/restart-blocks) + 1 )) ms
    rm -f /tmp/restart-blocks
    ms=$(tr -d '\r' < $R/xl_xen9pd-console.log | awk -v last=$last '/^P9T progress xa create/ {
        n++; split($6, a, "="); if (n == 1) b = a[2]; else if (n <= last && a[2] > m) m = a[2] }
        END { print m + 0, b + 0 }')
    timing restart_guest_slowest_create_ms ${ms% *}; timing before_restart_slowest_create_ms ${ms#* }
    log "restart: the guest's slowest create while xen9pd was away (blocks 2..$last of 250 creates): ${ms% *} ms; block 1 (before): ${ms#* } ms"
}

stage_xl_xen9pd() {
    local N=xl_xen9pd id
    start_xen9pd xen_9pfs $N --on-sigterm keep-serving || return
    check_node_held $N
    mkdir -p /srv/xa; echo "hello xa" > /srv/xa/hello.txt
    DOMU_HOOK=xl_devices_hook; DESTROY_AT_DONE=1
    # xb's limits are small on purpose (the limits step); xa's leave the whole workload room.
    DOMU_ARGS="p9s_xb=limits p9lim_xb=12:2:4:1 p9hold"
    [ "${XEN9P_RESTART:-1}" = 1 ] && DOMU_WATCH=restart_watch
    run_domu $N xa,xb "'tag=xa,path=/srv/xa,security_model=none,type=xen_9pfsd,max-files=5000,max-open-files=64,max-space=256,auto-delete=0', 'tag=xb,security_model=none,type=xen_9pfsd,max-files=12,max-open-files=4,max-space=2,auto-delete=1'"
    [ -f /tmp/xen9pd.pid ] && XEN9PD=$(cat /tmp/xen9pd.pid) && rm -f /tmp/xen9pd.pid
    id=$LAST_DOMID
    restart_latency
    # xl destroy (run_domu did it at P9T DONE): nothing of the domU's devices may remain.
    check $N:destroy-no-backend $(verdict until_true 60 gone_backend $id) "backend/xen_9pfs/$id"
    check $N:destroy-no-worker $(verdict until_true 60 no_workers) "workers left: [$(workers)]"
    check $N:destroy-no-shm $(verdict until_true 30 no_segments $id) "$(ls /dev/shm | grep xen9p-ds- | tr '\n' ' ')"
    local got want; got=$(md5sum /srv/xa/big.bin 2>/dev/null | cut -d' ' -f1)
    want=$(tr -d '\r' < $R/$N-console.log | sed -n "s/^SUM xa big.bin //p")
    [ -n "$want" ] && [ "$want" = "$got" ] && check $N:xa:dom0-sees-data PASS "md5 $got" \
        || check $N:xa:dom0-sees-data FAIL "guest md5=$want dom0 md5=$got"
    stop_xen9pd INT  # SIGTERM would keep serving (and keep libxl's node) by design
    check $N:released-libxl-node $(verdict [ -z "$(node_state)" ]) "state [$(node_state)] after xen9pd stopped"
}

# The real xen-9pfsd (spawned by libxl; xen9pd not running) and xen9p on the same workload, in the
# same kind of domU: .u on both, .L on xen9p as well. xen-9pfsd's FAILs are the peer's (PEERFAIL).
peer_hook() {  # NAME DOMID
    local p; p=$(peer_pids)
    [ -n "$p" ] && [ "$(node_state)" = running ] && [ "$(node_pid)" = "${p% }" ] \
        && check $1:libxl-spawned-xen-9pfsd PASS "pid $p ($XEN_9PFSD)" \
        || check $1:libxl-spawned-xen-9pfsd FAIL "xen-9pfsd pids [$p], node [$(node_state)] pid [$(node_pid)]"
}

stage_vs_9pfsd() {
    local N=vs_9pfsd rc p t0 opts="security_model=none,type=xen_9pfsd,max-open-files=64"
    [ -z "$XEN9PD" ] && [ -z "$(node_state)" ] || { check $N:peer-alone FAIL "xen9pd [$XEN9PD] node [$(node_state)]"; return; }
    [ -x "$XEN_9PFSD" ] || { check $N:peer-installed FAIL "no /usr/lib/xen-*/bin/xen-9pfsd"; return; }
    mkdir -p /srv/pu; echo "hello xu" > /srv/pu/hello.txt
    DOMU_HOOK=peer_hook PEER=1 DOMU_ARGS="p9v_xu=9p2000.u"
    run_domu ${N}_peer xu "'tag=xu,path=/srv/pu,$opts'"
    # takeover: xen9pd refuses to start while xen-9pfsd holds the node (exit 69, a clear message) ...
    # The peer libxl started may have died meanwhile (its node then names a dead pid, which xen9pd
    # rightly takes over): start one by hand so that a live xen-9pfsd holds the node.
    if [ -z "$(peer_pids)" ]; then
        log "takeover: no xen-9pfsd left running (node [$(node_state)] pid [$(node_pid)]); starting one"
        xenstore-rm $NODE 2>/dev/null  # xen-9pfsd exits at once while the node says running, dead pid or not
        $XEN_9PFSD > $R/takeover-xen-9pfsd.log 2>&1 &
        until_true 30 peer_holds_node \
            || check takeover:peer-started FAIL "xen-9pfsd [$(peer_pids)] node [$(node_state)] pid [$(node_pid)]"
    fi
    p=$(peer_pids)
    timeout 180 $XEN9PD_BIN --platform xen --kinds xen_9pfs > $R/takeover-refused.log 2>&1; rc=$?
    [ $rc = 69 ] && grep -q "held by a running daemon" $R/takeover-refused.log \
        && check takeover:refused-while-peer-runs PASS "rc=69: $(grep -m1 'held by' $R/takeover-refused.log | cut -c1-160)" \
        || check takeover:refused-while-peer-runs FAIL "rc=$rc: $(tail -2 $R/takeover-refused.log | tr '\n' ' ')"
    # ... and takes over once it has stopped. A xen-9pfsd started by hand was seen to leave its node
    # (state, no pid) behind: a node no live daemon holds, which xen9pd takes over.
    t0=$(up); [ -n "$p" ] && kill -TERM $p
    check takeover:peer-stopped $(verdict until_true 30 proc_gone $p) "xen-9pfsd [$p] $(since $t0)s after SIGTERM"
    [ -n "$(node_state)" ] && log "takeover: xen-9pfsd left its node behind (state [$(node_state)] pid [$(node_pid)])"
    start_xen9pd xen_9pfs $N || return
    check_node_held takeover
    mkdir -p /srv/xu /srv/xl; echo "hello xu" > /srv/xu/hello.txt; echo "hello xl" > /srv/xl/hello.txt
    DOMU_HOOK=xen9p_serves_hook DOMU_ARGS="p9v_xu=9p2000.u"
    run_domu $N xu,xl "'tag=xu,path=/srv/xu,$opts', 'tag=xl,path=/srv/xl,$opts'"
    stop_xen9pd
}

xen9p_serves_hook() {  # NAME DOMID: libxl used xen9pd, started no xen-9pfsd
    [ -z "$(peer_pids)" ] && [ "$(node_pid)" = "$XEN9PD" ] && check $1:libxl-spawned-no-xen-9pfsd PASS "" \
        || check $1:libxl-spawned-no-xen-9pfsd FAIL "xen-9pfsd [$(peer_pids)] node pid [$(node_pid)]"
}

# Hot-attach to a running Linux domU (booted with no 9pfs device, `p9hot`): `xen9pctl attach`, the guest
# mounts and serves, `xen9pctl detach --remove` (round 1) and libxl's own path (round 2: online=0 +
# state=5 in one transaction, wait for Closed, remove both dirs) take it away, and it is attached again.
hot_attach() {  # N DOMID ROUND
    local t0=$(up) f=/var/log/xen/console/guest-$1.log
    if timeout 60 $XCTL --timeout 30 attach --domid $2 --devid 0 --path /srv/hot --tag hot > $R/$1-attach-$3.log 2>&1; then
        check hotattach:attach-running-$3 PASS "$(tail -1 $R/$1-attach-$3.log | cut -c1-120)"
    else check hotattach:attach-running-$3 FAIL "$(tail -2 $R/$1-attach-$3.log | tr '\n' ' ')"; return 1; fi
    until_true 600 grep -q "P9T HOT SERVED $3" $f || { check hotattach:served-$3 FAIL "no SERVED $3 in 600 s"; return 1; }
    check hotattach:served-$3 PASS "attach to served in $(since $t0)s"; timing hotattach_round$3_s $(since $t0)
}
hot_gone() {  # N DOMID ROUND: the guest saw its device go; nothing of it is left in dom0
    local f=/var/log/xen/console/guest-$1.log
    until_true 300 grep -q "P9T HOT GONE $3" $f || { check hotattach:guest-saw-removal-$3 FAIL "no GONE $3 in 300 s"; return 1; }
    check hotattach:removed-$3 $(verdict until_true 60 gone_backend $2/0) "backend/xen_9pfs/$2/0"
    check hotattach:no-worker-$3 $(verdict until_true 60 no_workers) "workers left: [$(workers)]"
    check hotattach:no-shm-$3 $(verdict until_true 30 no_segments $2) "$(ls /dev/shm | grep xen9p-ds- | tr '\n' ' ')"
}
hot_watch() {  # N DOMID
    local N=$1 id=$2 be=/local/domain/0/backend/xen_9pfs/$2/0 fe=/local/domain/$2/device/9pfs/0 t0 st
    until_true 600 grep -q "P9T HOT READY" /var/log/xen/console/guest-$N.log \
        || { check hotattach:guest-booted FAIL "no HOT READY in 600 s"; return; }
    hot_attach $N $id 1 || return
    t0=$(up)
    timeout 60 $XCTL --timeout 30 detach --remove dom$id/dev0 > $R/$N-detach-1.log 2>&1 \
        && check hotattach:xen9pctl-detach-remove PASS "in $(since $t0)s: $(tail -1 $R/$N-detach-1.log | cut -c1-120)" \
        || check hotattach:xen9pctl-detach-remove FAIL "$(tail -2 $R/$N-detach-1.log | tr '\n' ' ')"
    hot_gone $N $id 1 || return
    hot_attach $N $id 2 || return
    # libxl's detach, as libxl__initiate_device_generic_remove does it: it waits 10 s for Closed.
    t0=$(up); xenstore-write $be/online 0 $be/state 5
    if until_true 10 state_is $be 6; then
        check hotattach:libxl-offline-answered PASS "backend Closed $(since $t0)s after online=0 + state=5"
    else check hotattach:libxl-offline-answered FAIL "state [$(xenstore-read $be/state 2>&1)] 10 s after online=0"; fi
    xenstore-rm $fe; xenstore-rm $be
    hot_gone $N $id 2 || return
    hot_attach $N $id 3 || return
    timeout 60 $XCTL --timeout 30 detach --remove dom$id/dev0 > $R/$N-detach-3.log 2>&1
    hot_gone $N $id 3
}
stage_hotattach() {
    local N=hotattach
    start_xen9pd xen_9pfs $N || return
    mkdir -p /srv/hot; rm -f /srv/hot/r*.txt; echo "hello hot" > /srv/hot/hello.txt
    DOMU_ARGS="p9hot" DOMU_WATCH=hot_watch DESTROY_AT_DONE=1
    run_domu $N hot ""
    stop_xen9pd INT
}
