"""The 9P codec: decode any bytes, round-trip every message type of messages.REGISTRY, split streams.

Properties: decode raises only DecodeError; what it accepts re-encodes to the same bytes; a frame built
from any field values of any registered type decodes to those values; FrameBuffer yields exactly the
frames fed to it, whatever the chunking.
"""
from __future__ import annotations

from xen9p_common.errors import DecodeError
from xen9p_common.p9 import messages as M
from xen9p_common.p9.stream import FrameBuffer

from ..draw import Draw
from ..frames import draw_message, known_fields, mangle


def _decode_or_none(frame: bytes):
    try:
        msg = M.decode(frame)
    except DecodeError as e:
        assert isinstance(e.errno, int) and e.errno > 0, f"DecodeError without an errno: {e!r}"
        return None
    again = M.encode(msg)
    assert again == frame, f"{msg!r} re-encodes to other bytes"
    return msg


def _raw(data: bytes) -> None:
    _decode_or_none(data)
    try:
        M.frame_size(data)
        M.peek_header(data)
    except DecodeError:
        pass


def _structured(d: Draw) -> None:
    frames = []
    for _ in range(1 + d.below(4)):
        tag = d.uint(2)
        cls, values, frame = draw_message(d, M.REGISTRY, tag, (0, 1, M.NOFID), [tag])
        intact = not d.chance(64)
        if not intact:
            frame = mangle(d, frame)
        msg = _decode_or_none(frame)
        if intact and msg is not None and known_fields(cls):
            assert type(msg) is cls and msg.tag == tag, f"{cls.__name__} decoded as {msg!r}"
            got = [bytes(v) if isinstance(v, memoryview) else v for v in (getattr(msg, n) for n, _ in cls.FIELDS)]
            assert got == values, f"{cls.__name__}: decoded {got!r}, sent {values!r}"
        frames.append(frame)
    _split(d, frames)


def _split(d: Draw, frames: list[bytes]) -> None:
    stream = b"".join(frames)
    fb = FrameBuffer(max_size=1 << 20)
    out: list[bytes] = []
    pos = 0
    try:
        while pos < len(stream):
            n = 1 + d.below(64) if d.flag() else len(stream) - pos
            fb.feed(stream[pos:pos + n])
            pos += n
            out.extend(fb.frames())
    except DecodeError:
        return  # a mangled size: the stream is unusable, as documented
    assert b"".join(out) + stream[len(b"".join(out)):] == stream
    assert fb.pending() == len(stream) - sum(map(len, out))
    for f in out:
        assert int.from_bytes(f[:4], "little") == len(f)


def one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] & 1:
        _raw(data[1:])
    else:
        _structured(Draw(data[1:]))
