"""The /dev/xen ioctl numbers and argument layouts, checked against reference/xen-9pfs.md.

Pure: nothing here opens a device.
"""
from __future__ import annotations

import struct

import pytest

from xen9p_common.platform.xen import evtchn, gntdev


@pytest.mark.parametrize("name, number", [
    ("IOCTL_GNTDEV_MAP_GRANT_REF", 0x00184700),
    ("IOCTL_GNTDEV_UNMAP_GRANT_REF", 0x00104701),
    ("IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR", 0x00184702),
    ("IOCTL_GNTDEV_SET_MAX_GRANTS", 0x00044703),
    ("IOCTL_GNTDEV_SET_UNMAP_NOTIFY", 0x00104707),
])
def test_gntdev_ioctl_numbers(name, number):
    assert getattr(gntdev, name) == number


@pytest.mark.parametrize("name, number", [
    ("IOCTL_EVTCHN_BIND_INTERDOMAIN", 0x00084501),
    ("IOCTL_EVTCHN_BIND_UNBOUND_PORT", 0x00044502),
    ("IOCTL_EVTCHN_UNBIND", 0x00044503),
    ("IOCTL_EVTCHN_NOTIFY", 0x00044504),
    ("IOCTL_EVTCHN_RESET", 0x00004505),
    ("IOCTL_EVTCHN_RESTRICT_DOMID", 0x00024506),
])
def test_evtchn_ioctl_numbers(name, number):
    assert getattr(evtchn, name) == number


def test_ioc_encoding_fields():
    # dir in bits 30-31, size in 16-29, type in 8-15, number in 0-7
    n = gntdev.ioc(0, "G", 7, 16)
    assert (n >> 30, (n >> 16) & 0x3FFF, (n >> 8) & 0xFF, n & 0xFF) == (0, 16, ord("G"), 7)
    assert gntdev.ioc(3, "E", 1, 8) == 0xC0084501


def test_struct_sizes_match_the_kernel_headers():
    assert gntdev.MAP_GRANT_REF_HDR.size == 16
    assert gntdev.GRANT_REF.size == 8
    assert gntdev.UNMAP_GRANT_REF.size == 16
    assert gntdev.GET_OFFSET_FOR_VADDR.size == 24
    assert gntdev.UNMAP_NOTIFY.size == 16
    assert evtchn.BIND_INTERDOMAIN.size == 8
    assert evtchn.PORT.size == 4
    assert evtchn.RESTRICT_DOMID.size == 2


def test_map_grant_ref_packs_count_pad_index_then_refs():
    buf = gntdev.pack_map_grant_ref(7, [8, 9, 0x12345678])
    assert isinstance(buf, bytearray)  # ioctl must be able to write the index back
    assert len(buf) == 16 + 3 * 8
    count, pad, index = struct.unpack_from("<IIQ", buf, 0)
    assert (count, pad, index) == (3, 0, 0)
    assert [struct.unpack_from("<II", buf, 16 + 8 * i) for i in range(3)] == \
        [(7, 8), (7, 9), (7, 0x12345678)]


def test_map_buffer_longer_than_the_encoded_size_for_a_ring():
    refs = list(range(8, 8 + 513))  # one intf page + 512 data pages
    buf = gntdev.pack_map_grant_ref(1, refs)
    assert len(buf) > gntdev.IOCTL_GNTDEV_MAP_GRANT_REF >> 16 & 0x3FFF
    assert len(buf) > 1024  # fcntl.ioctl then passes the buffer itself, no 1 KiB copy


def test_map_index_reads_the_kernel_output_field():
    buf = gntdev.pack_map_grant_ref(1, [8])
    struct.pack_into("<Q", buf, 8, 0x5000)
    assert gntdev.map_index(buf) == 0x5000


def test_unmap_packs_index_count_pad():
    assert bytes(gntdev.pack_unmap_grant_ref(0x3000, 513)) == struct.pack("<QII", 0x3000, 513, 0)


def test_evtchn_args_are_little_endian_u32s():
    assert evtchn.BIND_INTERDOMAIN.pack(3, 17) == bytes([3, 0, 0, 0, 17, 0, 0, 0])
    assert evtchn.PORT.pack(0x01020304) == bytes([4, 3, 2, 1])


def test_missing_devices_raise_platform_error_with_errno(tmp_path):
    from xen9p_common.errors import PlatformError
    with pytest.raises(PlatformError) as e:
        gntdev.GntdevMapper(str(tmp_path / "no-gntdev"))
    assert e.value.errno == 2
    with pytest.raises(PlatformError):
        evtchn.XenEventChannels(str(tmp_path / "no-evtchn"))


class _FakeStore:
    def __init__(self, value):
        self.value, self.closed, self.asked = value, False, None

    def read(self, path):
        self.asked = path
        return self.value

    def close(self):
        self.closed = True


@pytest.mark.parametrize("value, domid", [("7", 7), ("0", 0), (None, 0), ("junk", 0)])
def test_self_domid_comes_from_the_relative_domid_node(value, domid):
    from xen9p_common.platform.xen import read_self_domid
    store = _FakeStore(value)
    assert read_self_domid(lambda: store) == domid
    assert store.asked == "domid" and store.closed


def test_self_domid_is_zero_without_a_xenstore():
    from xen9p_common.errors import XenStoreError
    from xen9p_common.platform.xen import read_self_domid

    def unreachable():
        raise XenStoreError(2, "no xenstored")
    assert read_self_domid(unreachable) == 0
