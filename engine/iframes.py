"""Where each segment's I-frame lies, for the I-frame playlists players scrub with.

Apple's players show pictures while the viewer scrubs, and fast-forward, from I-frame playlists
(``EXT-X-I-FRAME-STREAM-INF``; Apple's HLS authoring specification, 6.1, asks for them, and
6.3 allows the I-frames of the content itself). Every segment opens with an IDR frame, so a
rung's I-frame playlist lists one byte range per segment: in fMP4, from the fragment's ``moof``
box to the end of its first sample (the IDR frame, first in decode order); in MPEG-TS, from the
start of the segment (its PAT and PMT, which the muxer writes at each) to the packet where the
next video PES starts. Reading each segment up to there finds it; nothing is re-encoded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

#: How much of an fMP4 segment is read first to find its ``moof`` (after ``styp`` and
#: ``sidx``); a larger ``moof`` (a long segment's table of samples) is read whole, up to the
#: most a fragment's header could need.
_MOOF_SEARCH_BYTES = 64 * 1024
_MOOF_MAX_BYTES = 16 * 1024 * 1024
_TS_PACKET = 188
_TS_SYNC = 0x47


@dataclass(frozen=True)
class IFrameRange:
    """The bytes of a segment file that hold its I-frame (``EXT-X-BYTERANGE``)."""

    offset: int
    length: int


def locate(path: Path) -> IFrameRange | None:
    """The byte range of the I-frame that opens the segment at ``path`` (``.m4s`` or ``.ts``),
    or None where the file does not read as expected: no I-frame playlist is better than one
    that points players at the wrong bytes."""
    try:
        with path.open("rb") as file:
            if path.suffix == ".ts":
                return _in_transport_stream(file)
            head = file.read(_MOOF_SEARCH_BYTES)
            moof_end = max((at + size for kind, at, size in _boxes(head, 0, len(head))
                            if kind == b"moof"), default=0)
            if len(head) < moof_end + 8 <= _MOOF_MAX_BYTES:  # and the mdat's header after it
                head += file.read(moof_end + 8 - len(head))
            return _in_fragment(head, path.stat().st_size)
    except (OSError, struct.error, ValueError, IndexError):
        return None


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """The ISO BMFF boxes between ``start`` and ``end``: (type, offset, size)."""
    boxes = []
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        if size == 1:
            size = struct.unpack_from(">Q", data, at + 8)[0]
        elif size == 0:
            size = end - at
        if size < 8:
            raise ValueError("box shorter than its header")
        boxes.append((kind, at, size))
        at += size
    return boxes


def _in_fragment(head: bytes, file_size: int) -> IFrameRange | None:
    top = _boxes(head, 0, len(head))
    moof = next(((at, size) for kind, at, size in top if kind == b"moof"), None)
    mdat = next((at for kind, at, _ in top if kind == b"mdat"), None)
    if moof is None or mdat is None or moof[0] + moof[1] > len(head):
        return None
    moof_at, moof_size = moof
    trafs = [(at, size) for kind, at, size in _boxes(head, moof_at + 8, moof_at + moof_size)
             if kind == b"traf"]
    if len(trafs) != 1:  # one track a rendition
        return None
    parts = {kind: at for kind, at, _ in _boxes(head, trafs[0][0] + 8, sum(trafs[0]))}
    if b"tfhd" not in parts or b"trun" not in parts:
        return None
    base, default_size = _track_fragment_header(head, parts[b"tfhd"], moof_at)
    data_offset, first_size = _first_sample(head, parts[b"trun"], default_size)
    start = base + data_offset if data_offset is not None else mdat + 8
    end = start + (first_size or 0)
    if not first_size or start < mdat + 8 or end > file_size:
        return None
    return IFrameRange(moof_at, end - moof_at)


def _track_fragment_header(data: bytes, at: int, moof_at: int) -> tuple[int, int | None]:
    """(where its sample data offsets count from, the default sample size or None)."""
    flags = struct.unpack_from(">I", data, at + 8)[0] & 0xFFFFFF
    field = at + 16  # after the size, type, version and flags, and track_ID
    base = moof_at  # ISO/IEC 14496-12: the moof, for the first (here the only) track fragment
    if flags & 0x1:
        base = struct.unpack_from(">Q", data, field)[0]
        field += 8
    for present in (0x2, 0x8):  # sample description index, default duration
        field += 4 if flags & present else 0
    default_size = struct.unpack_from(">I", data, field)[0] if flags & 0x10 else None
    return base, default_size


def _first_sample(data: bytes, at: int, default_size: int | None) -> tuple[int | None, int | None]:
    """(the run's data offset or None, its first sample's size)."""
    flags = struct.unpack_from(">I", data, at + 8)[0] & 0xFFFFFF
    count = struct.unpack_from(">I", data, at + 12)[0]
    if count == 0:
        return None, None
    field = at + 16
    data_offset = None
    if flags & 0x1:
        data_offset = struct.unpack_from(">i", data, field)[0]
        field += 4
    field += 4 if flags & 0x4 else 0  # first sample flags
    field += 4 if flags & 0x100 else 0  # sample duration
    size = struct.unpack_from(">I", data, field)[0] if flags & 0x200 else default_size
    return data_offset, size


def _in_transport_stream(file: BinaryIO) -> IFrameRange | None:
    """Read packet by packet up to the next picture's PES (the I-frame's end), not the whole
    segment (megabytes at 2160p)."""
    video_pid = None
    at = 0
    while len(data := file.read(_TS_PACKET)) == _TS_PACKET:
        if data[0] != _TS_SYNC:
            return None
        at += _TS_PACKET
        starts_unit = bool(data[1] & 0x40)
        pid = ((data[1] & 0x1F) << 8) | data[2]
        if not starts_unit:
            continue
        payload = 4
        if data[3] & 0x20:  # an adaptation field first
            payload += 1 + data[4]
        if video_pid is None:
            # A PES of a video stream (stream_id 0xE0-0xEF) opens the I-frame.
            if data[payload:payload + 3] == b"\x00\x00\x01" and data[payload + 3] & 0xF0 == 0xE0:
                video_pid = pid
        elif pid == video_pid:
            # The next picture's PES: the I-frame ends before it.
            return IFrameRange(0, at - _TS_PACKET)
    # One picture only (a segment of one frame): the I-frame runs to the end of the file.
    return IFrameRange(0, at + len(data)) if video_pid is not None else None
