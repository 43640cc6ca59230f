"""Splitting a byte stream into whole 9P frames (for socket transports and tests)."""
from __future__ import annotations

from ..errors import DecodeError
import struct

from .messages import HEADER_SIZE

_U32 = struct.Struct("<I")


class FrameBuffer:
    """Accumulates bytes; `frames()` yields each complete frame once, as bytes.

    A frame is yielded only when all of its `size` bytes have arrived. A size
    below the header or above `max_size` raises DecodeError (the stream is then
    unusable: the peer must be disconnected).
    """

    def __init__(self, max_size: int = 1 << 24) -> None:
        self._buf = bytearray()
        self.max_size = max_size

    def feed(self, data) -> None:
        self._buf += data

    def frames(self):
        buf = self._buf
        start = 0
        try:
            while True:
                if len(buf) - start < 4:
                    break
                (n,) = _U32.unpack_from(buf, start)
                if n < HEADER_SIZE:
                    raise DecodeError(f"frame size {n} is below the 7-byte header")
                if n > self.max_size:
                    raise DecodeError(f"frame of {n} bytes exceeds the limit {self.max_size}")
                if len(buf) - start < n:
                    break
                yield bytes(buf[start:start + n])
                start += n
        finally:
            if start:
                del buf[:start]

    def pending(self) -> int:
        return len(self._buf)
