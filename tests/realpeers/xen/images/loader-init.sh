#!/bin/sh
# PID 1 of the dom0 loader initramfs: load virtio-blk + ext4, mount /dev/vda, switch_root into
# it and exec the program named by xen9pinit= (the dom0 image's own init).
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo "LOADER: start uptime=$(cut -d' ' -f1 /proc/uptime)"
for m in /mods/*.ko; do insmod "$m" || echo "LOADER: insmod $m failed"; done
INIT=/sbin/init
for a in $(cat /proc/cmdline); do case $a in xen9pinit=*) INIT=${a#xen9pinit=};; esac; done
n=0; while [ ! -b /dev/vda ] && [ $n -lt 200 ]; do sleep 0.1; n=$((n+1)); done
mount -t ext4 -o rw /dev/vda /newroot || { echo "LOADER: cannot mount /dev/vda"; poweroff -f; }
echo "LOADER: root mounted uptime=$(cut -d' ' -f1 /proc/uptime), exec $INIT"
umount /proc /sys; mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot "$INIT"
