#!/bin/sh
# POSIX behaviour checks run by the guest's busybox against the 9p mount at $MNT.
# Every check's name is listed in catalog.py; keep the two in step.
. /lib.sh
DATA_MIB=${POSIX_DATA_MIB:-8}
BIGDIR_N=${POSIX_BIGDIR_N:-1024}
SMALL_N=${POSIX_SMALL_N:-100}
W=$MNT/posix.$$
U=t65531            # an unprivileged user present in the guest's /etc/passwd
export U

chk posix.workdir "mkdir $W"
cd $W || { result FAIL posix.cd "cannot enter $W"; exit 1; }

# --- data: several MiB of random bytes, written and read with block sizes that straddle
#     pages and msize, then a patch in the middle; every read is checked against a tmpfs copy.
phase data
dd if=/dev/urandom of=/tmp/src bs=65536 count=$((DATA_MIB * 16)) 2>/dev/null
dd if=/dev/urandom bs=12345 count=1 2>/dev/null >> /tmp/src
SRC_SUM=$(md5 /tmp/src); SRC_SIZE=$(stat -c %s /tmp/src)
export SRC_SUM SRC_SIZE
chk posix.write_big "dd if=/tmp/src of=big bs=1000000 conv=fsync"
echo 3 > /proc/sys/vm/drop_caches
chk posix.read_big_md5 "[ \$(md5 big) = \$SRC_SUM ]"
chk posix.read_big_4k_md5 "[ \$(dd if=big bs=4096 2>/dev/null | md5sum | cut -c1-32) = \$SRC_SUM ]"
chk posix.size_big "[ \$(stat -c %s big) -eq \$SRC_SIZE ]"
dd if=/dev/urandom of=/tmp/patch bs=7777 count=3 2>/dev/null
chk posix.overwrite_middle "dd if=/tmp/patch of=big bs=7777 seek=99 conv=notrunc 2>&1 &&
    dd if=/tmp/patch of=/tmp/src bs=7777 seek=99 conv=notrunc 2>&1 && [ \$(md5 big) = \$(md5 /tmp/src) ]"
chk posix.small_files "i=0; while [ \$i -lt $SMALL_N ]; do echo content-\$i > s\$i || exit 1; i=\$((i+1)); done
    i=0; while [ \$i -lt $SMALL_N ]; do [ \"\$(cat s\$i)\" = content-\$i ] || exit 1; i=\$((i+1)); done
    rm s* && [ -z \"\$(ls | grep '^s[0-9]')\" ]"

# --- directories and rename semantics
phase namespace
chk posix.mkdir_nested "mkdir -p d/a/b/c && [ -d d/a/b/c ]"
must_fail posix.rmdir_nonempty_refused "rmdir d/a"
chk posix.rename_over_file "echo new > r1 && echo old > r2 && mv -f r1 r2 && [ \"\$(cat r2)\" = new ] && [ ! -e r1 ]"
chk posix.rename_keeps_inode "echo x > r3 && i=\$(stat -c %i r3) && mv r3 r4 && [ \$(stat -c %i r4) = \$i ]"
chk posix.rename_dir "echo deep > d/a/b/c/f && mv d/a d/a2 && [ \"\$(cat d/a2/b/c/f)\" = deep ] && [ ! -e d/a ]"
chk posix.rename_dir_over_empty "mkdir e1 e2 && echo in > e1/f && mv -T e1 e2 && [ \"\$(cat e2/f)\" = in ] && [ ! -e e1 ]"
must_fail posix.rename_dir_over_nonempty_refused "mkdir n1 n2 && : > n2/keep && mv -T n1 n2"
must_fail posix.rename_file_over_dir_refused "echo f > rf && mkdir rd && mv -T rf rd"
chk posix.rename_open_file "echo a > ro && exec 7>>ro && mv ro ro2 && echo b >&7 && [ \"\$(cat ro2)\" = \"\$(printf 'a\nb')\" ]"
chk posix.rename_parent_of_open_file "mkdir rp && echo a > rp/f && exec 8>>rp/f && mv rp rp2 && echo b >&8 &&
    [ \"\$(cat rp2/f)\" = \"\$(printf 'a\nb')\" ]"

# --- symlinks and hard links
phase links
chk posix.symlink_readlink "ln -s d/a2/b/c/f sl && [ \"\$(readlink sl)\" = d/a2/b/c/f ]"
chk posix.symlink_follow "[ \"\$(cat sl)\" = deep ] && [ \$(stat -L -c %s sl) -eq 5 ]"
chk posix.symlink_lstat "[ \"\$(stat -c %F sl)\" = 'symbolic link' ]"
chk posix.symlink_dangling "ln -s nowhere dang && [ -L dang ] && [ ! -e dang ]"
chk posix.symlink_dir_traverse "ln -s d/a2/b sdir && [ \"\$(cat sdir/c/f)\" = deep ]"
chk posix.hardlink_nlink "ln big hl && [ \$(stat -c %h hl) -eq 2 ] && [ \$(stat -c %h big) -eq 2 ]"
chk posix.hardlink_same_inode "[ \$(stat -c %i hl) = \$(stat -c %i big) ]"
chk posix.hardlink_shared_data "echo tail >> hl && [ \$(stat -c %s big) -eq \$((SRC_SIZE + 5)) ]"
chk posix.hardlink_survives_unlink "rm big && [ \$(stat -c %h hl) -eq 1 ] && [ \$(stat -c %s hl) -eq \$((SRC_SIZE + 5)) ]"

# --- modes, permissions as an unprivileged user, ownership
phase permissions
chk posix.chmod_modes "echo m > pm && chmod 640 pm && [ \$(stat -c %a pm) = 640 ] && chmod 4755 pm &&
    [ \$(stat -c %a pm) = 4755 ] && mkdir pd && chmod 1777 pd && [ \$(stat -c %a pd) = 1777 ]"
echo public > p644; chmod 644 p644
echo secret > p600; chmod 600 p600
chk posix.perm_user_read_0644 "[ \"\$(su -s /bin/sh \$U -c 'cat p644')\" = public ]"
must_fail posix.perm_user_write_0644_refused "su -s /bin/sh \$U -c 'echo x >> p644'"
must_fail posix.perm_user_read_0600_refused "su -s /bin/sh \$U -c 'cat p600'"
must_fail posix.perm_user_create_in_root_dir_refused "su -s /bin/sh \$U -c ': > not_mine'"
chk posix.perm_owner_write "echo o > po && chmod 600 po && chown 65531 po && su -s /bin/sh \$U -c 'echo more >> po' &&
    [ \"\$(cat po)\" = \"\$(printf 'o\nmore')\" ]"
chk posix.perm_user_creates_owned "mkdir pub && chmod 1777 pub && su -s /bin/sh \$U -c 'echo x > pub/mine' &&
    [ \$(stat -c %u pub/mine) = 65531 ]"
chk posix.chown_root "echo c > ow && chown 65532:65533 ow && [ \$(stat -c %u:%g ow) = 65532:65533 ]"
chk posix.chgrp_root "chgrp 65531 ow && [ \$(stat -c %u:%g ow) = 65532:65531 ]"

# --- timestamps, truncate, sparse files, O_APPEND
phase attributes
chk posix.mtime_set "echo t > tm && touch -d '2001-02-03 04:05:06' tm && [ \$(stat -c %Y tm) -eq \$(date -d '2001-02-03 04:05:06' +%s) ]"
chk posix.atime_set "touch -a -d '2002-03-04 05:06:07' tm && [ \$(stat -c %X tm) -eq \$(date -d '2002-03-04 05:06:07' +%s) ]"
chk posix.mtime_on_write "touch -d '2001-02-03 04:05:06' tm && echo more >> tm && [ \$(stat -c %Y tm) -gt 1600000000 ]"
head -c 10000 /tmp/src > tr
chk posix.truncate_shrink "truncate -s 4096 tr && [ \$(stat -c %s tr) -eq 4096 ] && [ \$(md5 tr) = \$(head -c 4096 /tmp/src | md5sum | cut -c1-32) ]"
chk posix.truncate_extend_zero "truncate -s 1048576 tr && [ \$(stat -c %s tr) -eq 1048576 ] &&
    [ \$(dd if=tr bs=4096 skip=2 count=254 2>/dev/null | md5sum | cut -c1-32) = \$(head -c 1040384 /dev/zero | md5sum | cut -c1-32) ]"
head -c 4096 /tmp/src > /tmp/blk
chk posix.sparse_write "dd if=/tmp/blk of=sp bs=4096 seek=16384 2>&1"
chk posix.sparse_size "[ \$(stat -c %s sp) -eq \$((16385 * 4096)) ]"
chk posix.sparse_blocks "[ \$(du -k sp | cut -f1) -lt 1024 ]"
chk posix.sparse_hole_zero "[ \$(dd if=sp bs=4096 skip=100 count=1 2>/dev/null | md5sum | cut -c1-32) = \$(head -c 4096 /dev/zero | md5sum | cut -c1-32) ]"
chk posix.sparse_data "[ \$(dd if=sp bs=4096 skip=16384 count=1 2>/dev/null | md5sum | cut -c1-32) = \$(md5 /tmp/blk) ]"
chk posix.append_two_fds ": > ap && exec 6>>ap 7>>ap && echo 1 >&6 && echo 2 >&7 && echo 3 >&6 &&
    [ \"\$(cat ap)\" = \"\$(printf '1\n2\n3')\" ]"
chk posix.append_after_extend "echo a > ap2 && exec 6>>ap2 && truncate -s 100 ap2 && echo b >&6 && [ \$(stat -c %s ap2) -eq 102 ]"

# --- files that are open when unlinked stay readable and writable
phase unlinked
chk posix.unlinked_open_read "echo hello > un && exec 5<un && rm un && [ ! -e un ] && [ \"\$(cat <&5)\" = hello ]"
chk posix.unlinked_open_write "echo hello > un2 && exec 5<un2 6>>un2 && rm un2 && echo more >&6 &&
    [ \"\$(cat <&5)\" = \"\$(printf 'hello\nmore')\" ]"

# --- a directory large enough to need several Treaddir rounds
phase bigdir
t=$(uptime_s)
chk posix.bigdir_create "mkdir big.d && i=0; while [ \$i -lt $BIGDIR_N ]; do
    echo \$i > big.d/entry-with-a-rather-long-name-to-fill-readdir-buffers-\$i || exit 1; i=\$((i+1)); done"
chk posix.bigdir_ls_count "[ \$(ls big.d | wc -l) -eq $BIGDIR_N ] && [ \$(ls big.d | sort -u | wc -l) -eq $BIGDIR_N ]"
chk posix.bigdir_lookup "[ \"\$(cat big.d/entry-with-a-rather-long-name-to-fill-readdir-buffers-$((BIGDIR_N - 7)))\" = $((BIGDIR_N - 7)) ]"
chk posix.bigdir_rm "rm -r big.d && [ ! -e big.d ]"
phase bigdir_done "n=$BIGDIR_N $(elapsed $t)s"

# --- xattrs: busybox has no setfattr, so Debian's attr tools run from the host root, named by path:
# Debian 13's busybox has a getfattr applet (no --only-values) that its chroot prefers to a bare name
phase xattr
XP=${W#/sysroot}
if [ "$HAVE_SYSROOT" = 1 ] && [ -x /sysroot/usr/bin/setfattr ]; then
    export XP
    echo x > xf
    chk posix.xattr_set_get "chroot /sysroot /usr/bin/setfattr -n user.xen9p -v hello \$XP/xf &&
        [ \"\$(chroot /sysroot /usr/bin/getfattr --only-values -n user.xen9p \$XP/xf)\" = hello ]"
    chk posix.xattr_list "chroot /sysroot /usr/bin/setfattr -n user.second -v 2 \$XP/xf &&
        chroot /sysroot /usr/bin/getfattr -d \$XP/xf | grep -q user.second && chroot /sysroot /usr/bin/getfattr -d \$XP/xf | grep -q user.xen9p"
    chk posix.xattr_remove "chroot /sysroot /usr/bin/setfattr -x user.xen9p \$XP/xf && ! chroot /sysroot /usr/bin/getfattr -n user.xen9p \$XP/xf"
else
    for n in xattr_set_get xattr_list xattr_remove; do
        result SKIP posix.$n "no setfattr: host root not mounted in the guest or attr not installed"
    done
fi

# --- special files, statfs, recursive removal
phase misc
chk posix.mkfifo "mkfifo ff && [ -p ff ]"
chk posix.statfs "df -k $MNT && [ \$(stat -f -c %b $MNT) -gt 0 ]"
ls -la $W | head -40 | sed 's/^/   | /'
cd /
chk posix.rm_r "rm -r $W && [ ! -e $W ]"
