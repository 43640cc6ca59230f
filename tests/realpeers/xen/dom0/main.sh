#!/bin/sh
# Runs in the lab dom0 from the read-only checkout (/src); writes everything to /results.
# Stages: info + xenstore before, platform tests, xenstore exercise, domU cases, xenstore after.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PYTHONPATH=/src:/opt/xen9p-site PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
H=/src/tests/realpeers/xen; R=/results; mkdir -p $R
# Deadlines on /proc/uptime: dom0's date(1) is not monotonic under the lab's Xen. Read with the
# shell's own read (no fork/exec): dom0 programs segfault now and then under nested TCG, and a
# failed $(cut ...) once ended a 1500 s wait after 422 s ("[: -lt: unexpected operator").
up() { read -r _u _r < /proc/uptime; echo "$_u"; }
since() { read -r _u _r < /proc/uptime; awk "BEGIN{printf \"%.1f\", $_u-$1}"; }
tick() { read -r _u _r < /proc/uptime; NOW=${_u%.*}; }  # sets NOW (whole seconds) in this shell
now() { tick; echo $NOW; }
log() { echo "LAB[$(up)] $*"; echo "$(up) $*" >> $R/timeline.txt; }
# check NAME PASS|FAIL DETAIL: one line per verdict; the host's summary reads checks.tsv.
check() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> $R/checks.tsv; echo "CHECK $2 $1 $3"; }
timing() { printf '%s\t%s\n' "$1" "$2" >> $R/timings.tsv; }
CASES=$(cat $R/cases 2>/dev/null || echo "platform qemu_xen9p xen9p_9pfs")
# Knobs from the host's environment (run.sh): XEN9P_DOMU_EXTRA, XEN9P_TAG_BUDGET, XEN9P_DOMU_STALL, ...
[ -f $R/lab-env ] && . $R/lab-env
DOMU_EXTRA=${XEN9P_DOMU_EXTRA:-}
DOMU_KERNEL=$R/domu/vmlinuz; DOMU_INITRD=$R/domu/initrd.cpio.gz
log "main.sh start cases=[$CASES] python=$(python3 -V 2>&1)"

# Heartbeat while a step runs, so the host can tell slow from stalled.
heartbeat() {  # also copies the domU consoles out, for post-mortems of a stalled run
    mkdir -p $R/live
    while :; do sleep 20; log "  heartbeat: $(xl list 2>/dev/null | awk 'NR>1{printf "%s:%s ", $1, $5}')"
        cp /var/log/xen/console/guest-*.log $R/live/ 2>/dev/null; done
}
heartbeat & HB=$!

{ echo "== xl info"; xl info; echo "== versions"; dpkg -l | awk '/xen|qemu|python3 |pyxs|fio/{print $2, $3}'
  echo "== wheels"; ls /opt/xen9p-site; echo "== /dev/xen"; ls -l /dev/xen; uname -a; } > $R/dom0-info.txt 2>&1
xenstore-ls -f > $R/xenstore-before.txt 2>&1
python3 $H/dom0/xs_watch.py /local/domain /libxl @introduceDomain @releaseDomain > $R/xenstore-watch.log 2>&1 &
WATCH=$!

stage_platform() {
    local t0=$(up)
    python3 -c 'import time; t = time.monotonic(); import xen9p_worker.cli, zmq, psutil; print("%.1f" % (time.monotonic() - t))' \
        > /tmp/imp 2>&1 && timing worker_import_s $(cat /tmp/imp) || check platform:worker-import FAIL "$(tail -1 /tmp/imp)"
    t0=$(up)
    ( cd /src && timeout 300 python3 -m pytest -p no:cacheprovider -v -rA \
        --junitxml=$R/pytest-realxen.xml tests/realpeers/test_real_xen_devices.py ) > $R/pytest-realxen.txt 2>&1
    local rc=$?
    grep -E '^tests/[^ ]+::[^ ]+ (PASSED|FAILED|ERROR|SKIPPED)' $R/pytest-realxen.txt | sed 's/ *\[.*//' | sort -u |
        while read -r name verdict rest; do
            case $verdict in PASSED) v=PASS;; *) v=FAIL;; esac  # a skip in dom0 means the lab is broken
            check "platform:${name##*::}" $v "$verdict $rest"
        done
    [ $rc = 0 ] || check platform:pytest FAIL "rc=$rc (see pytest-realxen.txt)"
    timing platform_pytest_s $(since $t0)
    t0=$(up)
    timeout 120 python3 $H/dom0/xs_exercise.py > $R/xs-exercise.txt 2>&1; rc=$?
    grep -E '^(PASS|FAIL) ' $R/xs-exercise.txt | while read -r v name rest; do check "xenstore:$name" $v "$rest"; done
    [ $rc = 0 ] || check xenstore:exercise FAIL "rc=$rc (see xs-exercise.txt)"
    timing xenstore_exercise_s $(since $t0)
}

# xen9p as an operator has it: installed from the project's .deb (run.sh builds it with
# `./xen9p-dev deb` into results/deb), run as /usr/bin/xen9pd on Debian's python3 packages;
# PYTHONPATH (the checkout, for the platform stage) is dropped so nothing shadows the package.
XEN9PD_BIN="env -u PYTHONPATH /usr/bin/xen9pd"; XCTL="env -u PYTHONPATH /usr/bin/xen9pctl"
install_xen9p() {
    local deb t0=$(up)
    deb=$(ls /results/deb/xen9p_*_all.deb 2>/dev/null | head -1)
    [ -n "$deb" ] || { check install:deb FAIL "no results/deb/xen9p_*_all.deb (run.sh builds it)"; return 1; }
    if dpkg -i "$deb" > $R/dpkg-install.log 2>&1 && dpkg -s xen9p 2>/dev/null | grep -q '^Status: install ok installed'; then
        check install:deb PASS "$(basename $deb) in $(since $t0)s: $(dpkg-query -W -f '${Version}' xen9p), $(ls /usr/bin/xen9p* | tr '\n' ' ')"
    else
        check install:deb FAIL "dpkg -i rc=$?: $(tail -2 $R/dpkg-install.log | tr '\n' ' ')"; return 1
    fi
    timing install_deb_s $(since $t0)
}

XEN9PD=""
start_xen9pd() {  # KINDS NAME [XEN9PD ARGS...]
    local kinds=$1 name=$2; shift 2
    mkdir -p /run/xen9p
    $XEN9PD_BIN --platform xen --kinds "$kinds" --log-level debug \
        --ready-timeout ${XEN9P_READY_TIMEOUT:-120} --heartbeat-timeout 90 --startsecs 5 \
        --worker-spin-us 0 "$@" >> $R/$name-xen9pd.log 2>&1 &
    XEN9PD=$!
    local end; tick; end=$(( NOW + 300 ))
    while tick; [ "$NOW" -lt $end ]; do
        timeout 60 $XCTL --timeout 30 ping > /dev/null 2>&1 && { log "xen9pd up (pid $XEN9PD, kinds $kinds)"; return 0; }
        kill -0 $XEN9PD 2>/dev/null || break; sleep 0.5
    done
    log "xen9pd did not answer ping: $(tail -3 $R/$name-xen9pd.log | tr '\n' ' ')"; check "$name:xen9pd-start" FAIL "no ping in 300s"
    return 1
}
stop_xen9pd() {  # [SIGNAL]: TERM by default; INT always closes every device (whatever on_sigterm says)
    [ -n "$XEN9PD" ] || return 0
    kill -${1:-TERM} $XEN9PD 2>/dev/null
    local end; tick; end=$(( NOW + 30 ))
    while kill -0 $XEN9PD 2>/dev/null && tick && [ "$NOW" -lt $end ]; do sleep 0.3; done
    kill -0 $XEN9PD 2>/dev/null && { check xen9pd:stop FAIL "still alive 30s after SIG${1:-TERM}"; kill -KILL $XEN9PD; }
    wait $XEN9PD 2>/dev/null; log "xen9pd stopped rc=$?"; XEN9PD=""
}

# Waits: the deadline test never forks, so a crashing helper program only costs one poll.
# wait_domu NAME BUDGET STALL: 0 when the domU printed P9T DONE, 1 when BUDGET seconds passed,
# 2 when its console did not grow for STALL seconds (the workload prints at least every ~100 s).
wait_domu() {
    local f=/var/log/xen/console/guest-$1.log end moved size last=x
    tick; end=$(( NOW + $2 )); moved=$NOW
    while tick; [ "$NOW" -lt $end ]; do
        grep -q "P9T DONE" $f 2>/dev/null && return 0
        size=$(wc -c < $f 2>/dev/null)
        if [ "$size" != "$last" ]; then last=$size; moved=$NOW
        elif [ $(( NOW - moved )) -ge $3 ]; then return 2; fi
        sleep 2
    done
    grep -q "P9T DONE" $f 2>/dev/null && return 0
    return 1
}
# What a stuck domU and its xen9p devices look like: the guest's blocked tasks (sysrq w, printed
# on its console), each ring's indexes and queued headers from dom0, xen9pd's view.
post_mortem() {  # NAME DOMID ATTACH...
    local N=$1 id=$2 spec devs=""; shift 2
    timeout 20 xl sysrq $id 9; timeout 20 xl sysrq $id w; sleep 10  # loglevel 9 first: the task dump prints at KERN_INFO
    # Every xen9p process: its threads' kernel state, and its Python stacks (SIGUSR1 dumps them
    # into xen9pd's log without stopping anything).
    for pid in $(pgrep -f 'xen9p_worker|bin/xen9pd') $(pgrep -x xen-9pfsd); do
        { echo "== pid $pid: $(tr '\0' ' ' < /proc/$pid/cmdline | cut -c1-160)"
          for t in /proc/$pid/task/*; do echo "-- $t $(cut -d' ' -f2,3 $t/stat) wchan=$(cat $t/wchan)"; cat $t/stack; done
        } >> $R/$N-procs-stuck.txt 2>&1
        case "$(cat /proc/$pid/comm 2>/dev/null)" in xen-9pfsd) ;; *) kill -USR1 $pid;; esac  # only ours dump stacks on USR1
    done
    pgrep -x xen-9pfsd > /dev/null || [ "$PEER" != 1 ] || echo "== no xen-9pfsd process is running" >> $R/$N-procs-stuck.txt
    sleep 5
    timeout 60 python3 $H/dom0/journal_peek.py >> $R/$N-journal-stuck.txt 2>&1
    for spec in "$@"; do devs="$devs $id/$(echo $spec | cut -d: -f2)"; done
    timeout 60 python3 $H/dom0/ring_peek.py $devs > $R/$N-rings-stuck.txt 2>&1
    xenstore-ls -f > $R/$N-xenstore-stuck.txt 2>&1
    for q in status rings metrics; do
        timeout 90 $XCTL --timeout 30 --json $q > $R/$N-xen9pctl-$q-stuck.json 2>&1
    done
    log "post-mortem of $N: $(grep -c 'queued [1-9]' $R/$N-rings-stuck.txt) ring half(s) with queued data"
    cat $R/$N-rings-stuck.txt
}
wait_gone() { local end; tick; end=$(( NOW + $2 )); while xl domid $1 >/dev/null 2>&1 && tick && [ "$NOW" -lt $end ]; do sleep 0.5; done; }
# dom0 segfaults (the lab's, or ours): every one is reported in the summary, never hidden.
segfaults() { dmesg | grep -E 'segfault at|general protection|traps:' > $R/dom0-segfaults.txt; }

# run_domu NAME TAGS P9LINE ATTACH...   ATTACH = kind:devid:tag:path (written by xen9pctl attach)
# Stage knobs (reset after each domU): DOMU_ARGS = more domU kernel args; DOMU_HOOK = a command run
# with NAME DOMID while the domU is paused; DOMU_WATCH = one run with NAME DOMID beside the workload
# (in the background); DESTROY_AT_DONE=1 = `xl destroy` as soon as the workload reports P9T DONE.
# PEER=1: the domU is served by a peer (xen-9pfsd): the guest's FAILs are recorded as PEERFAIL, the
# peer's, which the summary lists apart and which do not fail the run. LAST_DOMID: the last domU's id.
DOMU_ARGS=""; DOMU_HOOK=""; DOMU_WATCH=""; DESTROY_AT_DONE=""; PEER=""; LAST_DOMID=""
run_domu() {
    local N=$1 TAGS=$2 P9=$3 spec t0 t1 id rc; shift 3
    log "== domU $N tags=$TAGS p9=[${P9:-none}] attach=[$*]"
    { echo "name = \"$N\""; echo 'type = "pv"'; echo "kernel = \"$DOMU_KERNEL\""
      echo "ramdisk = \"$DOMU_INITRD\""; echo "extra = \"console=hvc0 loglevel=4 p9tag=$TAGS $DOMU_ARGS $DOMU_EXTRA\""
      echo 'memory = 384'; echo 'vcpus = 1'; echo 'on_poweroff = "destroy"'; echo 'on_crash = "destroy"'
      [ -n "$P9" ] && echo "p9 = [ $P9 ]"; } > $R/$N.cfg
    t0=$(up)
    timeout 120 xl create -p $R/$N.cfg > $R/$N-xl-create.log 2>&1; rc=$?
    id=$(xl domid $N 2>/dev/null)
    timing ${N}_xl_create_s $(since $t0); log "xl create -p rc=$rc domid=$id in $(since $t0)s"
    [ -n "$id" ] || { check $N:create FAIL "xl create rc=$rc: $(tail -2 $R/$N-xl-create.log | tr '\n' ' ')"; return; }
    LAST_DOMID=$id
    for spec in "$@"; do
        IFS=: read -r kind devid tag path <<EOS
$spec
EOS
        mkdir -p $path; echo "hello $tag" > $path/hello.txt
        if timeout 30 $XCTL --timeout 30 attach --domid $id --devid $devid --kind $kind \
                --path $path --tag $tag --security-model none > $R/$N-attach-$devid.log 2>&1; then
            check $N:attach-$kind PASS "dev$devid tag=$tag"
        else
            check $N:attach-$kind FAIL "$(tail -1 $R/$N-attach-$devid.log)"
        fi
    done
    [ -n "$DOMU_HOOK" ] && $DOMU_HOOK $N $id
    xenstore-ls -f > $R/$N-xenstore-paused.txt 2>&1
    t1=$(up); timeout 60 xl unpause $N; log "xl unpause rc=$?"
    local wpid=""; [ -n "$DOMU_WATCH" ] && { $DOMU_WATCH $N $id & wpid=$!; }
    # The workload runs once per tag: the budget is per tag (TCG on a loaded host; about 10 min seen).
    local budget=$(( ${XEN9P_TAG_BUDGET:-1500} * $(echo $TAGS | tr , ' ' | wc -w) ))
    wait_domu $N $budget ${XEN9P_DOMU_STALL:-600}; rc=$?
    # A domU served by the peer that never finishes is the peer's failure (PEERFAIL), with the same post-mortem.
    local fail=FAIL; [ "$PEER" = 1 ] && fail=PEERFAIL
    case $rc in
    0) log "domU $N finished in $(since $t1)s";;
    1) check $N:finished $fail "no P9T DONE: gave up $(since $t1)s after unpause (budget $budget)";;
    *) check $N:finished $fail "stalled: console silent for ${XEN9P_DOMU_STALL:-600}s, $(since $t1)s after unpause; last: $(tr -d '\r' < /var/log/xen/console/guest-$N.log | grep -v '^ *$' | tail -1 | cut -c1-100)";;
    esac
    [ $rc = 0 ] || post_mortem $N $id "$@"
    timing ${N}_run_s $(since $t1)
    [ -n "$wpid" ] && wait $wpid
    if [ "$DESTROY_AT_DONE" = 1 ]; then
        local td=$(up); timeout 60 xl destroy $N > $R/$N-xl-destroy.log 2>&1; rc=$?
        check $N:xl-destroy $([ $rc = 0 ] && echo PASS || echo FAIL) "rc=$rc in $(since $td)s"
    fi
    [ -n "$XEN9PD" ] && timeout 30 $XCTL --timeout 30 --json status > $R/$N-xen9pctl-status.json 2>&1
    wait_gone $N 60; xl destroy $N 2>/dev/null
    timing ${N}_total_s $(since $t0)
    cp /var/log/xen/console/guest-$N.log $R/$N-console.log 2>/dev/null
    cp /var/log/xen/qemu-dm-$N.log $R/$N-qemu-dm.log 2>/dev/null
    xenstore-ls -f > $R/$N-xenstore-after.txt 2>&1
    # The domU's verdicts, and dom0's own look at what the guest left behind.
    tr -d '\r' < $R/$N-console.log | grep -E '^CHECK (PASS|FAIL) ' | while read -r _ v name rest; do
        [ "$PEER" = 1 ] && [ $v = FAIL ] && v=PEERFAIL; check "$N:$name" $v "$rest"; done
    tr -d '\r' < $R/$N-console.log | grep -E '^TIME ' | while read -r _ k v; do timing "${N}_$k" "$v"; done
    for spec in "$@"; do
        IFS=: read -r kind devid tag path <<EOS
$spec
EOS
        tr -d '\r' < $R/$N-console.log | grep -q "^P9T STEP $tag basic" || continue  # p9steps= left it out
        local want=$(tr -d '\r' < $R/$N-console.log | sed -n "s/^SUM $tag big.bin //p")
        local got=$(md5sum $path/big.bin 2>/dev/null | cut -d' ' -f1)
        [ -n "$want" ] && [ "$want" = "$got" ] && check $N:$tag:dom0-sees-data PASS "md5 $got" \
            || check $N:$tag:dom0-sees-data FAIL "guest md5=$want dom0 md5=$got"
    done
    DOMU_ARGS=""; DOMU_HOOK=""; DOMU_WATCH=""; DESTROY_AT_DONE=""; PEER=""
}

stage_qemu_xen9p() {  # one domU: a QEMU-served tag and an xen9p-served xen_9pfs tag, same workload on each
    mkdir -p /srv/qemu; echo "hello qemu" > /srv/qemu/hello.txt
    # xen9pd must not also claim backend/9pfs/<domid>/0, which QEMU serves here.
    start_xen9pd xen_9pfs qemu_xen9p || return
    run_domu qemu_xen9p xen9p,qemu "'tag=qemu,security_model=none,path=/srv/qemu'" xen_9pfs:1:xen9p:/srv/xen9p
    stop_xen9pd
    tr -d '\r' < $R/qemu_xen9p-console.log | grep -q "^P9T STEP qemu basic" || return 0
    local got=$(md5sum /srv/qemu/big.bin 2>/dev/null | cut -d' ' -f1)
    local want=$(tr -d '\r' < $R/qemu_xen9p-console.log | sed -n "s/^SUM qemu big.bin //p")
    [ -n "$want" ] && [ "$want" = "$got" ] && check qemu_xen9p:qemu:dom0-sees-data PASS "md5 $got" \
        || check qemu_xen9p:qemu:dom0-sees-data FAIL "guest md5=$want dom0 md5=$got"
}

stage_xen9p_9pfs() {  # the QEMU kind served by xen9p; no p9 line, so libxl starts no QEMU for this domU
    start_xen9pd "9pfs xen_9pfs" xen9p_9pfs || return
    run_domu xen9p_9pfs xen9p "" 9pfs:0:xen9p:/srv/xen9p9
    stop_xen9pd
}

stage_xen9p_only() {  # the reduced CI case: one domU, one kind
    start_xen9pd xen_9pfs xen9p_only || return
    run_domu xen9p_only xen9p "" xen_9pfs:0:xen9p:/srv/xen9p1
    stop_xen9pd
}

. $H/dom0/stages_xl9pfsd.sh
install_xen9p
for c in $CASES; do
    t=$(up); log "=== stage $c"; stage_$c; timing stage_${c}_s $(since $t)
done
xenstore-ls -f > $R/xenstore-after.txt 2>&1
kill $WATCH $HB 2>/dev/null
cp /var/log/xen/*.log $R/ 2>/dev/null; dmesg > $R/dom0-dmesg.txt; segfaults
log "main.sh done"
