#!/bin/sh
# The domU's verified workload, run by the domU init for each tag in p9tag=a,b on the kernel
# command line: mount -t 9p -o trans=xen, checks as 'CHECK PASS|FAIL tag:name detail', timings as 'TIME k s'.
# Per tag (kernel args): p9v_TAG=9p2000.u (protocol, default 9p2000.L), p9s_TAG=steps (default p9steps=),
# p9lim_TAG=FILES:SPACE_MIB:OPEN:AUTODELETE (the limits the toolstack set, for the `limits` step).
export PATH=/bin:/usr/bin
echo 1 > /proc/sys/kernel/sysrq 2>/dev/null  # dom0's post-mortem asks for blocked tasks (xl sysrq w)
up() { cut -d' ' -f1 /proc/uptime; }
el() { awk "BEGIN{printf \"%.2f\", $(up)-$1}"; }
PASS=0; FAIL=0
ok() { echo "CHECK PASS $T:$1 $2"; PASS=$((PASS+1)); }
bad() { echo "CHECK FAIL $T:$1 $2"; FAIL=$((FAIL+1)); }
is() { [ "$2" = "$3" ] && ok "$1" "$2" || bad "$1" "want [$3] got [$2]"; }
TAGS=share; FIO_S=15; STEPS=basic,many,fio
for a in $(cat /proc/cmdline); do
    case $a in p9tag=*) TAGS=${a#p9tag=};; p9fio=*) FIO_S=${a#p9fio=};; p9steps=*) STEPS=${a#p9steps=};;
    p9v_*=*|p9s_*=*|p9lim_*=*) k=${a%%=*}; eval "$k='${a#*=}'";; esac
done
tagvar() { eval "echo \${$1_$2:-$3}"; }  # tagvar p9v TAG DEFAULT
# mount9p TAG DIR VERSION: 0 mounted, else the mount failed or hung. A 9p mount whose server died waits
# for its Rflush for ever (not even SIGKILL ends it): after 60 s it is reported and left behind.
mount9p() {
    mount -t 9p -o trans=xen,version=$3 $1 $2 2>/tmp/mount.err & local mp=$! n=0
    while kill -0 $mp 2>/dev/null && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done
    if kill -0 $mp 2>/dev/null; then
        kill -KILL $mp 2>/dev/null; echo "mount hung for 60 s (no reply from the server)" > /tmp/mount.err; return 124
    fi
    wait $mp
}
step() { case ",$(tagvar p9s $T $STEPS)," in *,$1,*) echo "P9T STEP $T $1 uptime=$(up)"; return 0;; esac; return 1; }
TAGS=$(echo $TAGS | tr , ' '); NT=$(echo $TAGS | wc -w)

# p9hot: the domU boots with no 9pfs device; dom0 attaches one to the running domain (three rounds,
# told apart by nothing but the device appearing): mount, read, write, see the earlier rounds' files,
# unmount, then wait for dom0 to take the device away (its sysfs entry goes) before the next round.
hot() {
    local r d M n rc
    T=hot; echo "P9T HOT READY uptime=$(up)"
    for r in 1 2 3; do
        d=""; n=0
        while [ $n -lt 6000 ]; do  # 600 s
            for x in /sys/bus/xen/devices/9pfs-*; do [ "$(cat $x/state 2>/dev/null)" = Connected ] && d=$x; done
            [ -n "$d" ] && break; sleep 0.1; n=$((n+1))
        done
        [ -n "$d" ] || { bad appear-$r "no 9pfs device Connected within 600 s"; return; }
        ok appear-$r "$(basename $d) after $((n / 10)) s"
        M=/mnt/hot$r; mkdir -p $M
        mount9p hot $M 9p2000.L; rc=$?
        if [ $rc != 0 ]; then
            bad mount-$r "rc=$rc $(cat /tmp/mount.err) $(dmesg | tail -3 | tr '\n' ' ')"; return
        fi
        ok mount-$r ""
        is read-$r "$(cat $M/hello.txt 2>&1)" "hello hot"
        echo round$r > $M/r$r.txt
        is write-$r "$(cat $M/r$r.txt 2>&1)" round$r
        is earlier-rounds-$r "$(ls $M | grep -c '^r[0-9].txt$')" $r
        umount $M && ok umount-$r "" || bad umount-$r "rc=$?"
        echo "P9T HOT SERVED $r $(basename $d) uptime=$(up)"
        n=0; while [ -e $d ] && [ $n -lt 6000 ]; do sleep 0.1; n=$((n+1)); done
        [ ! -e $d ] && ok gone-$r "$(basename $d) removed after $((n / 10)) s" \
            || bad gone-$r "$(basename $d) still there, state $(cat $d/state 2>/dev/null)"
        echo "P9T HOT GONE $r uptime=$(up)"
    done
}
if grep -qw p9hot /proc/cmdline; then
    hot; echo "P9T DONE pass=$PASS fail=$FAIL"; exec sleep 1000000
fi

# Every 9pfs device Connected before mounting (wall-clock bound).
t0=$(up); n=0
while [ $n -lt 600 ]; do
    c=0; for d in /sys/bus/xen/devices/9pfs-*; do [ "$(cat $d/state 2>/dev/null)" = Connected ] && c=$((c+1)); done
    [ $c -ge $NT ] && break; sleep 0.1; n=$((n+1))
done
echo "P9T DEVICES $(for d in /sys/bus/xen/devices/9pfs-*; do echo -n "$(basename $d)=$(cat $d/state 2>/dev/null) "; done)"
echo "TIME connect_s $(el $t0)"

# One 4 MiB random file, made once, written to every tag.
dd if=/dev/urandom of=/tmp/src.bin bs=64k count=64 2>/dev/null
SRC_SUM=$(md5sum /tmp/src.bin | cut -d' ' -f1)

workload() {  # TAG MOUNTPOINT
    T=$1; M=$2; local t0 t V
    V=$(tagvar p9v $T 9p2000.L)
    mkdir -p $M
    t0=$(up)
    mount9p $T $M $V; local rc=$?
    if [ $rc != 0 ]; then
        bad mount "rc=$rc $(cat /tmp/mount.err) $(dmesg | tail -3 | tr '\n' ' ')"; return
    fi
    ok mount "$(grep " $M " /proc/mounts | cut -d' ' -f4)"
    echo "TIME ${T}_mount_s $(el $t0)"
    t0=$(up)
    is read-hello "$(cat $M/hello.txt 2>&1)" "hello $T"
    step basic && basic
    step many && many
    step fio && fio_jobs
    step limits && limits
    echo "TIME ${T}_workload_s $(el $t0)"
    umount $M && ok umount "" || bad umount "rc=$?"
}

basic() {  # uses T, M
    local t
    # create + write 4 MiB with checksums, read back through the mount
    t=$(up); cp /tmp/src.bin $M/big.bin && sync; echo "TIME ${T}_write4m_s $(el $t)"
    echo 3 > /proc/sys/vm/drop_caches
    t=$(up); got=$(md5sum $M/big.bin | cut -d' ' -f1); echo "TIME ${T}_read4m_s $(el $t)"
    is write-read-4MiB "$got" "$SRC_SUM"
    echo "SUM $T big.bin $got"
    is size "$(stat -c %s $M/big.bin)" 4194304
    # append and partial overwrite keep the rest of the file
    printf 'tail' >> $M/big.bin; is append-size "$(stat -c %s $M/big.bin)" 4194308
    truncate -s 4194304 $M/big.bin 2>/dev/null || dd if=/dev/null of=$M/big.bin bs=1 seek=4194304 2>/dev/null
    is truncate-back "$(md5sum $M/big.bin | cut -d' ' -f1)" "$SRC_SUM"
    # directories, rename, symlink, hard link, xattr
    mkdir -p $M/d1/d2 && echo x > $M/d1/d2/f && ok mkdir-p "" || bad mkdir-p ""
    mv $M/d1/d2/f $M/d1/g && is rename-file "$(cat $M/d1/g)" x
    mv $M/d1 $M/d3 && is rename-dir "$(cat $M/d3/g 2>&1)" x
    ln -s d3/g $M/sl && is symlink "$(readlink $M/sl):$(cat $M/sl)" "d3/g:x"
    ln $M/d3/g $M/hl 2>/dev/null && is hardlink "$(stat -c %h $M/hl)" 2 || bad hardlink "ln failed"
    if [ "$(tagvar p9v $T 9p2000.L)" = 9p2000.u ]; then
        # 9P2000.u has no xattr messages: the server must refuse Linux's Txattrwalk/Txattrcreate cleanly.
        if setfattr -n user.xen9p -v lab-value $M/d3/g 2>/tmp/xe; then bad xattr-refused-in-9p2000.u "setfattr succeeded"
        else grep -q "not supported" /tmp/xe && ok xattr-refused-in-9p2000.u "$(cat /tmp/xe)" \
            || bad xattr-refused-in-9p2000.u "$(cat /tmp/xe)"; fi
    elif setfattr -n user.xen9p -v lab-value $M/d3/g 2>/tmp/xe; then
        is xattr "$(getfattr --absolute-names --only-values -n user.xen9p $M/d3/g 2>&1)" lab-value
        setfattr -x user.xen9p $M/d3/g && is xattr-remove "$(getfattr --absolute-names -n user.xen9p $M/d3/g 2>&1 | grep -c lab-value)" 0
    else bad xattr "setfattr: $(cat /tmp/xe)"; fi
    chmod 640 $M/d3/g && is chmod "$(stat -c %a $M/d3/g)" 640
    # open-then-unlink keeps the file readable
    echo keep > $M/ou; exec 7< $M/ou; rm $M/ou; is open-unlinked "$(cat <&7)" keep; exec 7<&-
    rm -r $M/d3 $M/sl $M/hl
    is rm-r "$(ls $M/d3 2>/dev/null | wc -l)" 0
}

many() {  # a directory of 1,000 files; a progress line every 250 so a stall is told from slowness
    local t i
    # The slowest create of each block of 250, in 10 ms ticks of /proc/uptime read with the shell's own
    # read (no fork): the longest a guest waited while dom0 restarted xen9pd (the lab's restart watch).
    local a b u slow=0 worst=0
    t=$(up); mkdir $M/many; i=0
    while [ $i -lt 1000 ]; do
        read -r u _ < /proc/uptime; a=${u%.*}${u#*.}
        echo $i > $M/many/f$i
        read -r u _ < /proc/uptime; b=${u%.*}${u#*.}
        [ $((b - a)) -gt $slow ] && slow=$((b - a))
        i=$((i+1))
        if [ $((i % 250)) = 0 ]; then
            echo "P9T progress $T create $i slowest_ms=$((slow * 10))"
            [ $slow -gt $worst ] && worst=$slow; slow=0
        fi
    done
    echo "TIME ${T}_create1000_s $(el $t)"
    echo "TIME ${T}_create_slowest_s $((worst / 100)).$((worst % 100 / 10))$((worst % 10))"
    t=$(up); is dir-1000 "$(ls $M/many | wc -l)" 1000; echo "TIME ${T}_list1000_s $(el $t)"
    is dir-1000-content "$(cat $M/many/f999)" 999
    t=$(up); rm -r $M/many; echo "TIME ${T}_rm1000_s $(el $t)"
    is rm-r-1000 "$(ls $M/many 2>/dev/null | wc -l)" 0
}

fio_jobs() {  # sequential and random, verified, bounded in time (TCG is slow)
    local t job
    for job in "seqw write 1m 8m --verify=md5" "seqr read 1m 8m" "randw randwrite 4k 4m --verify=md5" "randr randread 4k 4m"; do
        set -- $job
        t=$(up); echo "P9T STEP $T fio-$1 uptime=$t"
        if fio --name=$1 --directory=$M --rw=$2 --bs=$3 --size=$4 $5 --runtime=$FIO_S \
               --ioengine=psync --thread --output-format=terse --terse-version=3 \
               > /tmp/fio.out 2>/tmp/fio.err; then
            # terse v3: field 7 read KiB/s, 8 read IOPS, 48 write KiB/s, 49 write IOPS
            ok fio-$1 "$(awk -F';' '{printf "read=%sKiB/s,%siops write=%sKiB/s,%siops", $7, $8, $48, $49}' /tmp/fio.out)"
            echo "TIME ${T}_fio_${1}_s $(el $t)"
            echo "FIO $T $1 $(awk -F';' '{print $7, $8, $48, $49}' /tmp/fio.out)"
        else bad fio-$1 "$(tail -2 /tmp/fio.err | tr '\n' ' ')"; fi
    done
    rm -f $M/seq[wr].* $M/rand[wr].*
}

limits() {  # the toolstack's max-files/max-space/max-open-files/auto-delete (p9lim_TAG), seen from the guest
    local L F S O A n i opened pids
    L=$(tagvar p9lim $T ""); [ -n "$L" ] || { bad limits "no p9lim_$T on the command line"; return; }
    IFS=: read -r F S O A <<EOL
$L
EOL
    echo "P9T limits $T files=$F space=${S}MiB open=$O auto-delete=$A"
    # max-open-files: 7 holders, each a subshell that opens one file and keeps it open (a failed
    # redirection ends only that subshell); each outcome is waited for before the next open.
    i=1; while [ $i -le 7 ]; do echo $i > $M/o$i; i=$((i+1)); done
    opened=0; pids=""; rm -f /tmp/op*
    for i in 1 2 3 4 5 6 7; do
        ( exec 0< $M/o$i; echo > /tmp/op$i; exec sleep 600 ) 2>/dev/null & pids="$pids $!"
        while [ ! -e /tmp/op$i ] && kill -0 $! 2>/dev/null; do sleep 0.1; done
        [ -e /tmp/op$i ] && opened=$((opened+1))
    done
    kill $pids 2>/dev/null; wait 2>/dev/null
    [ $opened -le $O ] && [ $opened -lt 7 ] && ok max-open-files "$opened of 7 opens allowed (limit $O)" \
        || bad max-open-files "$opened of 7 opens allowed (limit $O)"
    rm -f $M/o[1-7]
    # max-files: create F+5 names; without auto-delete the extra ones fail, with it the oldest go.
    n=0; i=1
    while [ $i -le $((F + 5)) ]; do echo $i > $M/lf$i 2>/dev/null && n=$((n+1)); i=$((i+1)); done
    local have=$(ls -A $M | wc -l)
    if [ "$A" = 1 ]; then
        [ $n = $((F + 5)) ] && [ $have -le $F ] && [ ! -e $M/lf1 ] && [ "$(cat $M/lf$((F + 5)))" = $((F + 5)) ] \
            && ok max-files-auto-delete "all $n created, $have names left, the oldest gone" \
            || bad max-files-auto-delete "created $n of $((F + 5)), $have names left (limit $F), lf1 $([ -e $M/lf1 ] && echo kept || echo gone)"
    else
        [ $n -lt $((F + 5)) ] && [ $have -le $F ] && ok max-files "$n created, $have names (limit $F)" \
            || bad max-files "$n of $((F + 5)) created, $have names (limit $F)"
    fi
    rm -f $M/lf*
    # max-space: a file one MiB over the limit cannot be written whole.
    if dd if=/dev/zero of=$M/space.bin bs=64k count=$(( (S + 1) * 16 )) 2>/tmp/dd.err && sync; then
        bad max-space "wrote $(( S + 1 )) MiB (limit $S MiB): $(stat -c %s $M/space.bin) bytes"
    else
        ok max-space "$(stat -c %s $M/space.bin 2>/dev/null) bytes written before: $(tail -1 /tmp/dd.err)"
    fi
    rm -f $M/space.bin
}

for TAG in $TAGS; do workload $TAG /mnt/$TAG; done
echo "P9T DONE pass=$PASS fail=$FAIL"
# p9hold: stay up (dom0 destroys the domain with its devices still connected: `xl destroy`'s path).
grep -qw p9hold /proc/cmdline && exec sleep 1000000
