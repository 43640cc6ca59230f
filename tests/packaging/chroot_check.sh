#!/bin/bash
# Install a built .deb in a Debian root made with debootstrap and run its entry points:
#   debootstrap --variant=minbase bookworm ROOT && tests/packaging/chroot_check.sh ROOT dist/xen9p_*.deb
# (systemd does not run in a chroot: the unit is enabled, not started; xen9psim demo runs the daemon).
set -u
C=$1; DEB=$2
cp "$DEB" "$C/root/"
mountpoint -q "$C/proc" || mount -t proc proc "$C/proc"
mkdir -p "$C/dev/shm"; mountpoint -q "$C/dev/shm" || mount -t tmpfs tmpfs "$C/dev/shm"
run() { echo "+ $*"; chroot "$C" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root DEBIAN_FRONTEND=noninteractive sh -c "$*"; echo "rc=$?"; }
run "cat /etc/debian_version"
run "apt-get install -y -q ./root/$(basename $DEB) 2>&1 | tail -n 5"
run "dpkg -s xen9p | sed -n '1,3p;/^Version/p'"
run "ls -l /usr/bin/xen9p* /etc/default/xen9pd /etc/xen9p/xen9pd.toml /lib/systemd/system/xen9pd.service /usr/lib/systemd/system/xen9pd.service 2>&1; readlink -f /etc/systemd/system/multi-user.target.wants/xen9pd.service"
run "xen9pd --version; xen9pd --help | head -n 3; xen9pctl --help | head -n 2"
run "cd /tmp && timeout 120 xen9psim demo 2>&1 | tail -n 15"
run "apt-get remove -y -q xen9p 2>&1 | tail -n 2; ls /usr/bin/xen9p* /etc/xen9p/xen9pd.toml 2>&1"
run "apt-get purge -y -q xen9p 2>&1 | tail -n 2; ls -d /etc/xen9p /etc/default/xen9pd /etc/systemd/system/multi-user.target.wants/xen9pd.service 2>&1; dpkg -l xen9p 2>&1 | tail -n 1"
umount "$C/dev/shm" "$C/proc"
