#!/bin/bash
# Builds (or finds cached) the real-Xen lab images from Debian packages: Xen ELF, dom0 kernel,
# dom0 ext4 root with the project's runtime deps, loader initramfs, domU base initramfs.
#   usage: build.sh            prints the image directory on the last line of stdout
# env: XEN9P_XEN_SUITE (bookworm = Xen 4.17 + Linux 6.1, the default; trixie = Xen 4.20 + Linux 6.12),
#      XEN9P_CACHE (default /var/tmp/xen9p-cache), XEN9P_REBUILD=1 to ignore the cache.
# Every package comes from the NAMED Debian suite through a private apt configuration (its own
# sources.list, lists, status and cache under the cache dir): the host's apt sources and release
# (Debian 12 or 13) do not matter and are never touched.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${XEN9P_CACHE:-/var/tmp/xen9p-cache}
MIRROR=${XEN9P_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${XEN9P_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
SUITE=${XEN9P_XEN_SUITE:-bookworm}
# Per suite: the Xen version, the kernel package (what linux-image-amd64 depends on), dom0's Python
# (for the wheels' ABI) and the suite-only dom0 packages (4.17's xl serves 9pfs through QEMU; 4.20's
# xen-utils carries xen-9pfsd, the peer of the `type=xen_9pfsd` cases).
case $SUITE in
bookworm) XENVER=4.17; KRE='linux-image-6\.1\.0-[0-9]+-amd64'; PYVER=3.11; SUITE_PKGS=qemu-system-xen;;
trixie)   XENVER=4.20; KRE='linux-image-6\.12\.[0-9][^ ]*-amd64'; PYVER=3.13; SUITE_PKGS=;;
*) echo "[build] XEN9P_XEN_SUITE=$SUITE: known suites are bookworm (Xen 4.17) and trixie (Xen 4.20)" >&2; exit 2;;
esac
XENPKG=xen-hypervisor-$XENVER-amd64
# Everything dom0 needs, offline: Xen's toolstack, the xen9p .deb's dependencies (the lab installs
# the project's package at boot), pytest, and the workload tools copied into the domU.
DOM0_PKGS="kmod,busybox,python3,procps,iproute2,xen-utils-$XENVER,xenstore-utils,python3-pytest,python3-pytest-timeout,python3-pyxs,python3-zmq,python3-cffi-backend,python3-psutil,python3-prometheus-client,fio,attr,e2fsprogs${SUITE_PKGS:+,$SUITE_PKGS}"
# The platform stage runs the checkout with the project's pinned wheels (Debian's python3-zmq and
# python3-pyxs 0.4.2~git differ); xen9pd itself runs from the installed .deb on Debian's packages.
WHEELS="pyzmq>=25 psutil>=5.9 pyxs==0.4.1"
DOMU_MODS="9pnet_xen 9p"
LOADER_MODS="virtio_pci virtio_blk crc32c_generic ext4 9pnet_virtio 9p"

say() { echo "[build] $*" >&2; }

need_host_tools() {
    local need="" c
    for c in qemu-system-x86_64:qemu-system-x86 debootstrap:debootstrap cpio:cpio mkfs.ext4:e2fsprogs; do
        command -v "${c%%:*}" >/dev/null || need="$need ${c##*:}"
    done
    file -L /bin/busybox 2>/dev/null | grep -q static || need="$need busybox-static"
    command -v file >/dev/null || need="$need file"
    if [ -n "$need" ]; then
        say "installing host packages:$need"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq $need >&2
    fi
}

# apt-get/apt-cache reading only $SUITE (+ its security suite), never the host's configuration.
APTD=$CACHE/xen/apt-$SUITE
APTO=(-o "Dir::Etc::sourcelist=$APTD/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::lists=$APTD/lists"
      -o "Dir::State::status=$APTD/status" -o "Dir::Cache=$APTD/cache" -o Acquire::Languages=none
      -o APT::Architectures=amd64 -o APT::Sandbox::User=root)
suite_apt_update() {  # the suite's lists, refreshed once a day; a failure leaves the cached ones
    mkdir -p "$APTD/lists/partial" "$APTD/cache/archives/partial"; touch "$APTD/status"
    printf 'deb [signed-by=%s] %s %s main\ndeb [signed-by=%s] %s %s-security main\n' \
        "$KEYRING" "$MIRROR" "$SUITE" "$KEYRING" "$SECURITY_MIRROR" "$SUITE" > "$APTD/sources.list"
    [ -n "$(find "$APTD/updated" -mmin -1440 2>/dev/null)" ] && return 0
    if apt-get "${APTO[@]}" update -q --error-on=any >&2; then touch "$APTD/updated"
    else say "apt-get update of $SUITE failed; using its cached lists"; fi
}

kernel_pkg() {
    local p
    p=$(apt-cache "${APTO[@]}" depends linux-image-amd64 2>/dev/null | grep -oE "$KRE" | head -1 || true)
    if [ -z "$p" ]; then p=$(ls -d "$CACHE"/xen/kernel-linux-image-* 2>/dev/null | sed 's|.*/kernel-||' | grep -E "^$KRE\$" | sort -V | tail -1 || true); fi
    [ -n "$p" ] || { say "no $KRE in Debian $SUITE (apt) or cached"; exit 1; }
    echo "$p"
}

fetch_deb() {  # name -> path of the .deb in the shared debs cache (the suite's candidate version)
    local v f
    v=$(apt-cache "${APTO[@]}" policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p')
    mkdir -p "$CACHE/debs"
    f=$(ls "$CACHE"/debs/"$1"_"${v//:/%3a}"_*.deb 2>/dev/null | head -1 || true)
    if [ -z "$f" ] || [ -z "$v" ] || [ "$v" = "(none)" ]; then
        (cd "$CACHE/debs" && apt-get "${APTO[@]}" download "$1" >&2)
        f=$(ls "$CACHE"/debs/"$1"_"${v//:/%3a}"_*.deb 2>/dev/null | head -1 || ls "$CACHE"/debs/"$1"_*.deb | sort -V | tail -1)
    fi
    echo "$f"
}

need_host_tools
suite_apt_update
KPKG=$(kernel_pkg); KV=${KPKG#linux-image-}
# Cache key: the suite, the package versions its apt would give us + the build inputs (this script, the inits).
VERS=$(apt-cache "${APTO[@]}" policy "$KPKG" "$XENPKG" "xen-utils-$XENVER" $SUITE_PKGS 2>/dev/null | grep -E '^[^ ]|Candidate' | tr -d ' \n')
KEY=$( { echo "$SUITE $VERS $KPKG $DOM0_PKGS $WHEELS $DOMU_MODS $LOADER_MODS"; cat "$0" "$HERE"/images/*; } | sha256sum | cut -c1-16)
X=$CACHE/xen; OUT=$X/img-$SUITE-$KEY
if [ -e "$OUT/ready" ] && [ "${XEN9P_REBUILD:-0}" != 1 ]; then say "cached: $OUT"; echo "$OUT"; exit 0; fi
T0=$SECONDS
mkdir -p "$X"; rm -rf "$OUT" "$OUT.tmp"; mkdir -p "$OUT.tmp"

# 1. Xen and the kernel: unpacked, never installed on the host.
K=$X/kernel-$KPKG
if [ ! -e "$K/ready" ]; then rm -rf "$K"; dpkg -x "$(fetch_deb "$KPKG")" "$K"; touch "$K/ready"; fi
XD=$X/xen-deb-$SUITE
rm -rf "$XD"; dpkg -x "$(fetch_deb "$XENPKG")" "$XD"
# QEMU's multiboot loader only takes the uncompressed image.
zcat "$XD"/boot/xen-$XENVER-amd64.gz > "$OUT.tmp/xen.elf"
cp "$K/boot/vmlinuz-$KV" "$OUT.tmp/vmlinuz"
say "xen + kernel unpacked (+$((SECONDS - T0))s)"

# 2. dom0 root filesystem (debootstrap keyed like the images; reused if its key matches).
# The rootfs depends only on the package set, so script edits do not re-run debootstrap.
RKEY=$(echo "$SUITE $VERS $DOM0_PKGS $MIRROR" | sha256sum | cut -c1-16); R=$X/rootfs-$SUITE-$RKEY
if [ ! -e "$R/.ready" ]; then
    rm -rf "$R"
    debootstrap --variant=minbase --include="$DOM0_PKGS" "$SUITE" "$R" "$MIRROR" > "$X/debootstrap-$RKEY.log" 2>&1 \
        || { say "debootstrap failed: see $X/debootstrap-$RKEY.log"; tail -5 "$X/debootstrap-$RKEY.log" >&2; exit 1; }
    chroot "$R" apt-get clean
    touch "$R/.ready"
fi
say "rootfs ready (+$((SECONDS - T0))s)"
WH=$X/wheels-$SUITE; mkdir -p "$WH"
PIPT="--only-binary=:all: --python-version $PYVER --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64"
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps $PIPT -d "$WH" $WHEELS >&2 2>/dev/null \
    || python3 -m pip download -q --no-deps -d "$WH" $WHEELS >&2
rm -rf "$R/opt/xen9p-site"
# For dom0's Python ($PYVER), which need not be the host's.
# shellcheck disable=SC2086
python3 -m pip install -q --no-deps --no-index $PIPT --target "$R/opt/xen9p-site" "$WH"/*.whl >&2
KMODS=$K/lib/modules; [ -d "$KMODS/$KV" ] || KMODS=$K/usr/lib/modules  # merged /usr (trixie's packages)
rm -rf "$R/lib/modules"; mkdir -p "$R/lib/modules"; cp -a "$KMODS/$KV" "$R/lib/modules/"
( cd "$R/lib/modules/$KV/kernel" && rm -rf sound drivers/gpu drivers/media drivers/infiniband drivers/iio \
    drivers/net/wireless drivers/net/ethernet drivers/staging drivers/usb drivers/bluetooth net/bluetooth \
    net/wireless net/mac80211 )
chroot "$R" depmod "$KV"
mkdir -p "$R/xen9p" "$R/src" "$R/results" "$R/srv"
install -m 755 "$HERE/images/dom0-init.sh" "$R/xen9p/dom0-init.sh"
sed -i '/XENCONSOLED_ARGS/d' "$R/etc/default/xen" 2>/dev/null || true
echo 'XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console"' >> "$R/etc/default/xen"
echo dom0 > "$R/etc/hostname"; printf '/dev/vda / ext4 rw 0 1\n' > "$R/etc/fstab"
rm -rf "$R"/usr/share/locale/* "$R"/usr/share/doc/* "$R"/usr/share/man/*
SZ=$(( $(du -sm "$R" | cut -f1) + 600 ))
mkfs.ext4 -q -F -L dom0root -d "$R" "$OUT.tmp/dom0.ext4" "${SZ}M"
say "dom0.ext4 ${SZ}M (+$((SECONDS - T0))s)"

modlist() { for m in "$@"; do chroot "$R" modprobe -S "$KV" --show-depends "$m" | awk '$1=="insmod"{print $2}'; done | awk '!seen[$0]++'; }

# copy_bin DIR BIN...: a dynamically linked binary of the rootfs with its libraries, for an initramfs.
copy_bin() {
    local d=$1 b l; shift
    for b in "$@"; do
        mkdir -p "$d$(dirname "$b")"; cp -L "$R$b" "$d$b"
        for l in $(chroot "$R" ldd "$b" 2>/dev/null | grep -o '/[^ ]*' | sort -u); do
            [ -e "$d$l" ] || { mkdir -p "$d$(dirname "$l")"; cp -L "$R$l" "$d$l"; }
        done
    done
}

mkinitrd() {  # DIR INIT-FILE OUT MODULES...
    local d=$1 init=$2 out=$3 i=0 f a; shift 3
    mkdir -p "$d"/{bin,proc,sys,dev,mnt,mods,tmp,newroot}
    cp /bin/busybox "$d/bin/busybox"
    for a in $(/bin/busybox --list); do [ -e "$d/bin/$a" ] || ln -s busybox "$d/bin/$a"; done
    for f in $(modlist "$@"); do  # busybox insmod wants a plain ELF object (Debian 13's are .ko.xz)
        i=$((i + 1))
        case $f in *.xz) xz -dc "$R$f" > "$d/mods/$(printf %02d $i)-$(basename "$f" .xz)";;
                   *) cp "$R$f" "$d/mods/$(printf %02d $i)-$(basename "$f")";; esac
    done
    install -m 755 "$init" "$d/init"
    (cd "$d" && find . | cpio -o -H newc --quiet | gzip -1) > "$out"
}

# 3. loader initramfs (mounts the dom0 disk, switch_root) and the domU base initramfs.
TMP=$(mktemp -d "$X/tmp.XXXX"); trap 'rm -rf "$TMP"' EXIT
# shellcheck disable=SC2086
mkinitrd "$TMP/loader" "$HERE/images/loader-init.sh" "$OUT.tmp/loader.cpio.gz" $LOADER_MODS
mkdir -p "$TMP/domu"; copy_bin "$TMP/domu" /usr/bin/fio /usr/bin/setfattr /usr/bin/getfattr
# shellcheck disable=SC2086
mkinitrd "$TMP/domu" "$HERE/images/domu-init.sh" "$OUT.tmp/domu-base.cpio.gz" $DOMU_MODS
{ echo "key=$KEY"; echo "suite=$SUITE"; echo "xen=$XENVER"; echo "kernel=$KPKG"; echo "versions=$VERS"; ls "$WH"; echo "built_s=$((SECONDS - T0))"; } > "$OUT.tmp/manifest.txt"
touch "$OUT.tmp/ready"; mv "$OUT.tmp" "$OUT"
say "images ready in $((SECONDS - T0))s: $OUT"
echo "$OUT"
