#!/bin/sh
# PID 1 of a test domU: load the 9p/xen modules, then run /workload.sh (appended per run as a
# second cpio archive) which mounts each tag with trans=xen and reports on hvc0; power off.
export PATH=/bin:/usr/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /tmp; mount -t tmpfs tmpfs /tmp
echo "P9T BOOTED uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"
for m in /mods/*.ko; do insmod "$m" || echo "P9T INSMOD-FAIL $m"; done
if [ -f /workload.sh ]; then sh /workload.sh; else echo "P9T FAIL no /workload.sh"; echo "P9T DONE pass=0 fail=1"; fi
sync; poweroff -f
