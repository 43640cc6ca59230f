"""Structured values drawn from a fuzzer's byte string (the same bytes always give the same values).

Our own provider instead of atheris.FuzzedDataProvider, so a target runs and replays without atheris
(regression files, the seeded CI run). An exhausted input draws zeros: every input is a valid program.
"""
from __future__ import annotations

# Integers a hostile peer tries first: edges of every width, page and ring sizes, "-1".
EDGES_U32 = (0, 1, 2, 6, 7, 8, 23, 24, 4095, 4096, 4097, 8192, 65535, 65536, 0x7FFFFFFF, 0x80000000,
             0xFFFFFFFE, 0xFFFFFFFF)
EDGES_U64 = EDGES_U32 + (1 << 32, (1 << 32) + 1, (1 << 62), (1 << 63) - 1, 1 << 63, (1 << 64) - 2, (1 << 64) - 1)


class Draw:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def bytes(self, n: int) -> bytes:
        b = self.data[self.pos:self.pos + n]
        self.pos += len(b)
        return b

    def uint(self, nbytes: int) -> int:
        return int.from_bytes(self.bytes(nbytes).ljust(nbytes, b"\0"), "little")

    def below(self, n: int) -> int:
        """0 <= x < n (n >= 1)."""
        if n <= 1:
            return 0
        width = (n.bit_length() + 7) // 8
        return self.uint(width) % n

    def between(self, lo: int, hi: int) -> int:
        return lo + self.below(hi - lo + 1)

    def pick(self, seq):
        return seq[self.below(len(seq))]

    def flag(self) -> bool:
        return bool(self.uint(1) & 1)

    def chance(self, in_256: int) -> bool:
        """True with probability in_256/256."""
        return self.uint(1) < in_256

    def blob(self, max_len: int) -> bytes:
        return self.bytes(self.below(max_len + 1))

    def int_of(self, width: int) -> int:
        """A value of a `width`-byte field: an edge value half the time, else any."""
        edges = EDGES_U64 if width == 8 else EDGES_U32
        if self.flag():
            return self.pick(edges) & ((1 << (8 * width)) - 1)
        return self.uint(width)
