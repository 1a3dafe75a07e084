"""A few ISO-BMFF boxes read the way hls.js and other HLS players read fMP4: the timeline comes
from each fragment's tfdt and the samples' composition offsets, and edit lists are ignored.

PyAV (FFmpeg's demuxer) applies edit lists, so it cannot show what such a player sees.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import m3u8

#: Boxes that hold other boxes, on the paths these tests walk.
_CONTAINERS = {b"moov", b"trak", b"mdia", b"edts", b"moof", b"traf"}


def boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, bytes]]:
    """(type, payload) of each box in ``data[start:end]``."""
    end = len(data) if end is None else end
    while start + 8 <= end:
        size, kind = struct.unpack(">I4s", data[start:start + 8])
        header = 8
        if size == 1:
            size = struct.unpack(">Q", data[start + 8:start + 16])[0]
            header = 16
        elif size == 0:
            size = end - start
        if size < header:
            raise ValueError(f"box {kind!r} at {start} has size {size}")
        yield kind, data[start + header:start + size]
        start += size


def find(data: bytes, path: str) -> list[bytes]:
    """Payloads of every box at ``path`` (``"moov/trak/mdia/mdhd"``)."""
    head, _, rest = path.partition("/")
    found = []
    for kind, payload in boxes(data):
        if kind == head.encode():
            if not rest:
                found.append(payload)
            elif kind in _CONTAINERS:
                found += find(payload, rest)
    return found


def timescale(init: bytes) -> int:
    """The (only) track's media timescale, from the init segment's mdhd."""
    (mdhd,) = find(init, "moov/trak/mdia/mdhd")
    offset = 4 + (16 if mdhd[0] == 1 else 8)
    return int(struct.unpack(">I", mdhd[offset:offset + 4])[0])


def has_edit_list(init: bytes) -> bool:
    return bool(find(init, "moov/trak/edts/elst"))


def first_presentation(init: bytes, segment: bytes) -> Fraction:
    """When a player that ignores edit lists shows the first sample of ``segment``, in seconds:
    the first fragment's tfdt plus the first sample's composition offset."""
    tfdt = find(segment, "moof/traf/tfdt")[0]
    decode_time = int.from_bytes(tfdt[4:12] if tfdt[0] == 1 else tfdt[4:8], "big")
    trun = find(segment, "moof/traf/trun")[0]
    version, flags = trun[0], int.from_bytes(trun[1:4], "big")
    offset = 8 + (4 if flags & 0x1 else 0) + (4 if flags & 0x4 else 0)
    offset += sum(4 for bit in (0x100, 0x200, 0x400) if flags & bit)
    composition = 0
    if flags & 0x800:
        composition = struct.unpack(">i" if version == 1 else ">I", trun[offset:offset + 4])[0]
    return Fraction(decode_time + composition, timescale(init))


def rendition_start(folder: Path) -> Fraction:
    """:func:`first_presentation` of a rendition's first listed segment, from its playlist."""
    playlist = m3u8.load(str(folder / "index.m3u8"))
    return first_presentation((folder / playlist.segment_map[0].uri).read_bytes(),
                              (folder / playlist.segments[0].uri).read_bytes())
