#!/bin/sh
# What Linux can do over a version=9p2000.u mount, checked with busybox at $MNT.
# Every check's name is listed in catalog.py (POSIX_U_CHECKS); keep the two in step.
. /lib.sh
BIGDIR_N=${POSIX_BIGDIR_N:-1000}
W=$MNT/posixu.$$

chk posixu.workdir "mkdir $W"
cd $W || { result FAIL posixu.cd "cannot enter $W"; exit 1; }

phase data
dd if=/dev/urandom of=/tmp/src bs=65536 count=32 2>/dev/null
dd if=/dev/urandom bs=12345 count=1 2>/dev/null >> /tmp/src
SRC_SUM=$(md5 /tmp/src); SRC_SIZE=$(stat -c %s /tmp/src)
export SRC_SUM SRC_SIZE
chk posixu.create_write "dd if=/tmp/src of=big bs=100000 2>&1 && [ \$(stat -c %s big) -eq \$SRC_SIZE ]"
echo 3 > /proc/sys/vm/drop_caches
chk posixu.read_md5 "[ \$(md5 big) = \$SRC_SUM ]"
chk posixu.read_4k_md5 "[ \$(dd if=big bs=4096 2>/dev/null | md5sum | cut -c1-32) = \$SRC_SUM ]"
dd if=/dev/urandom of=/tmp/patch bs=7777 count=3 2>/dev/null
chk posixu.overwrite_middle "dd if=/tmp/patch of=big bs=7777 seek=9 conv=notrunc 2>&1 &&
    dd if=/tmp/patch of=/tmp/src bs=7777 seek=9 conv=notrunc 2>&1 && [ \$(md5 big) = \$(md5 /tmp/src) ]"
chk posixu.append "echo 1 > ap && echo 2 >> ap && [ \"\$(cat ap)\" = \"\$(printf '1\n2')\" ]"
# Linux's .u fsync is a Twstat with every field "don't touch" (the server fsyncs the file).
chk posixu.fsync "timeout 60 dd if=/tmp/patch of=fs bs=7777 conv=fsync 2>&1 && [ \$(stat -c %s fs) -eq 23331 ]"

phase namespace
chk posixu.mkdir_nested "mkdir -p d/a/b && [ -d d/a/b ]"
chk posixu.rename_in_dir "echo x > d/r1 && mv d/r1 d/r2 && [ \"\$(cat d/r2)\" = x ] && [ ! -e d/r1 ]"
chk posixu.rename_dir_in_dir "mv d/a d/a2 && [ -d d/a2/b ] && [ ! -e d/a ]"
chk posixu.symlink "ln -s d/r2 sl && [ \"\$(readlink sl)\" = d/r2 ] && [ \"\$(cat sl)\" = x ] &&
    [ \"\$(stat -c %F sl)\" = 'symbolic link' ]"
chk posixu.hardlink "ln big hl && [ \$(stat -c %h hl) -eq 2 ] && [ \$(stat -c %i hl) = \$(stat -c %i big) ] &&
    rm big && [ \$(stat -c %h hl) -eq 1 ] && [ \$(md5 hl) = \$(md5 /tmp/src) ]"

phase attributes
chk posixu.chmod "echo m > pm && chmod 640 pm && [ \$(stat -c %a pm) = 640 ] && mkdir pd && chmod 1777 pd &&
    [ \$(stat -c %a pd) = 1777 ]"
head -c 10000 /tmp/src > tr
chk posixu.truncate "truncate -s 4096 tr && [ \$(stat -c %s tr) -eq 4096 ] && truncate -s 8192 tr &&
    [ \$(stat -c %s tr) -eq 8192 ] && [ \$(dd if=tr bs=4096 skip=1 2>/dev/null | md5sum | cut -c1-32) = \$(head -c 4096 /dev/zero | md5sum | cut -c1-32) ]"
chk posixu.utimes "echo t > tm && touch -d '2001-02-03 04:05:06' tm && [ \$(stat -c %Y tm) -eq \$(date -d '2001-02-03 04:05:06' +%s) ] &&
    touch -a -d '2002-03-04 05:06:07' tm && [ \$(stat -c %X tm) -eq \$(date -d '2002-03-04 05:06:07' +%s) ]"
chk posixu.mkfifo "mkfifo ff && [ -p ff ]"

phase bigdir
t=$(uptime_s)
chk posixu.bigdir_create "mkdir big.d && i=0; while [ \$i -lt $BIGDIR_N ]; do
    : > big.d/entry-with-a-rather-long-name-to-fill-directory-reads-\$i || exit 1; i=\$((i+1)); done"
chk posixu.bigdir_readdir "[ \$(ls big.d | wc -l) -eq $BIGDIR_N ] && [ \$(ls big.d | sort -u | wc -l) -eq $BIGDIR_N ]"
phase bigdir_done "n=$BIGDIR_N $(elapsed $t)s"

ls -la $W | head -30 | sed 's/^/   | /'
cd /
chk posixu.rm_r "rm -r $W && [ ! -e $W ]"
