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
    after=$(workers)
    [ "$after" = "$before" ] && check restart:adopted PASS "same workers [$after]; daemon away $(since $t0)s" \
        || check restart:adopted FAIL "before [$before] after [$after]"
    check_node_held restart
    timeout 30 $XCTL --timeout 30 --json status > $R/restart-xen9pctl-status.json 2>&1
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
    p=$(peer_pids)
    timeout 180 $XEN9PD_BIN --platform xen --kinds xen_9pfs > $R/takeover-refused.log 2>&1; rc=$?
    [ $rc = 69 ] && grep -q "held by a running daemon" $R/takeover-refused.log \
        && check takeover:refused-while-peer-runs PASS "rc=69: $(grep -m1 'held by' $R/takeover-refused.log | cut -c1-160)" \
        || check takeover:refused-while-peer-runs FAIL "rc=$rc: $(tail -2 $R/takeover-refused.log | tr '\n' ' ')"
    # ... and takes over once it has stopped (xen-9pfsd removes the node on SIGTERM).
    t0=$(up); [ -n "$p" ] && kill -TERM $p
    check takeover:peer-released-node $(verdict until_true 30 sh -c '! xenstore-read '$NODE'/state >/dev/null 2>&1') "in $(since $t0)s"
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
