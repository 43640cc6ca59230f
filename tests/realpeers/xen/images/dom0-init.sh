#!/bin/sh
# PID 1 of the lab dom0: start Xen's control stack, mount the checkout (tag "src", read-only)
# and the results share (tag "results"), run the checkout's dom0/main.sh, power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
up() { cut -d' ' -f1 /proc/uptime; }
log() { echo "DOM0[$(up)] $*" > /dev/console; }
mount -t proc proc /proc; mount -t sysfs sys /sys
[ -e /dev/null ] || mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp; mkdir -p /run/lock
mount -o remount,rw / 2>/dev/null
hostname dom0; ip link set lo up 2>/dev/null
log "init start (kernel $(uname -r))"
for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs 9pnet_virtio 9p; do modprobe $m || log "modprobe $m failed"; done
mount -t xenfs xenfs /proc/xen
rm -rf /var/log/xen; mkdir -p /var/log/xen/console /var/lib/xen /var/run/xen
T0=$(up)
/etc/init.d/xen start > /tmp/xen-start.log 2>&1
log "xen start rc=$? in $(awk "BEGIN{print $(up)-$T0}")s; daemons: $(ps -eo comm | grep -E 'xenstored|xenconsoled|qemu' | tr '\n' ' ')"
log "DOM0-READY uptime=$(up)"
mkdir -p /src /results
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro src /src &&
   mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 results /results; then
    M=/src/tests/realpeers/xen/dom0/main.sh
    if [ -f $M ]; then
        log "running $M"; sh $M > /dev/console 2>&1; log "main.sh exit=$?"
    else
        log "no $M in the checkout"
    fi
    sync; umount /results; umount /src
else
    log "cannot mount the src/results shares"
fi
for a in $(cat /proc/cmdline); do [ "$a" = xen9pshell ] && setsid sh -c 'exec sh </dev/console >/dev/console 2>&1'; done
log "DOM0-POWEROFF uptime=$(up)"
sync; busybox poweroff -f
