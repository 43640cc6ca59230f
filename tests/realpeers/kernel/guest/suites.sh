#!/bin/sh
# Debian's fio and stress-ng run from the host root (chroot /sysroot) against the 9p mount.
# The host picks the jobs: FIO_JOBS + FIO_ARGS_<job>, STRESSORS, STRESS_TIMEOUT (run.conf).
. /lib.sh
if [ "$HAVE_SYSROOT" != 1 ]; then
    for j in $FIO_JOBS; do result SKIP fio.$j "host root not mounted in the guest"; done
    for s in $STRESSORS; do result SKIP stress.$s "host root not mounted in the guest"; done
    exit 0
fi
C="chroot /sysroot"
W=/mnt/suites.$$            # path as seen inside the chroot
$C mkdir -p $W

phase fio
for j in $FIO_JOBS; do
    eval "args=\$FIO_ARGS_$j"
    t=$(uptime_s)
    # busybox timeout: a wedged job must not eat the host's wall-clock budget for the whole run
    timeout -s KILL ${FIO_LIMIT:-180} $C fio --name=$j --directory=$W --ioengine=psync \
        --verify_fatal=1 $args > /tmp/fio.out 2>&1
    rc=$?
    bw=$(grep -E '^ *(READ|WRITE):' /tmp/fio.out | sed 's/,.*//; s/^ *//' | tr '\n' ' ')
    if [ $rc = 0 ]; then
        result PASS fio.$j "($(elapsed $t)s) $bw"
    else
        result FAIL fio.$j "rc=$rc ($(elapsed $t)s) $(grep -i -E 'err|fail|verify' /tmp/fio.out | head -3 | tr '\n' ' ')"
        tail -5 /tmp/fio.out | sed 's/^/   | /'
    fi
    $C rm -f $W/$j.*
done

phase stress-ng
for s in $STRESSORS; do
    eval "args=\$STRESS_ARGS_$s"
    t=$(uptime_s)
    timeout -s KILL $((STRESS_TIMEOUT + ${STRESS_GRACE:-60})) $C stress-ng --$s 1 --timeout ${STRESS_TIMEOUT}s \
        --temp-path $W --metrics-brief --verify $args > /tmp/st.out 2>&1
    rc=$?
    ops=$(grep -E "(metrc|info).* $s " /tmp/st.out | tail -1 | sed 's/.*\] *//' | tr -s ' ')
    case $rc in
    0) result PASS stress.$s "($(elapsed $t)s) $ops" ;;
    3|4) result SKIP stress.$s "stress-ng rc=$rc (resource unavailable or not implemented): $(grep -i skip /tmp/st.out | head -1)" ;;
    137) result FAIL stress.$s "killed after $(elapsed $t)s: ignored --timeout ${STRESS_TIMEOUT}s"
         killall -9 stress-ng 2>/dev/null ;;   # its workers would keep the mount busy
    *) result FAIL stress.$s "rc=$rc ($(elapsed $t)s) $(grep -i -E 'fail|error' /tmp/st.out | head -3 | tr '\n' ' ')"
       tail -5 /tmp/st.out | sed 's/^/   | /' ;;
    esac
done
$C rm -rf $W
