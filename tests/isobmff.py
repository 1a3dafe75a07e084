"""fMP4 timing read the way hls.js and other HLS players read it: the timeline comes from each
fragment's tfdt and the samples' composition offsets, and edit lists are ignored.

PyAV (FFmpeg's demuxer) applies edit lists, so it cannot show what such a player sees. The boxes
are found with the corpus's MP4 box reader (:func:`tests.hostile.find_boxes`).
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import m3u8

from tests.hostile import find_box, find_boxes


def timescale(init: bytes) -> int:
    """The (only) track's media timescale, from the init segment's mdhd."""
    mdhd = find_box(init, b"mdhd")
    offset = mdhd.payload + 4 + (16 if init[mdhd.payload] == 1 else 8)
    return int(struct.unpack_from(">I", init, offset)[0])


def has_edit_list(init: bytes) -> bool:
    return bool(find_boxes(init, b"elst"))


def first_presentation(init: bytes, segment: bytes) -> Fraction:
    """When a player that ignores edit lists shows the first sample of ``segment``, in seconds:
    the first fragment's tfdt plus the first sample's composition offset."""
    tfdt = find_box(segment, b"tfdt").payload
    version = segment[tfdt]
    decode_time = struct.unpack_from(">Q" if version == 1 else ">I", segment, tfdt + 4)[0]
    trun = find_box(segment, b"trun").payload
    version, flags = segment[trun], int.from_bytes(segment[trun + 1:trun + 4], "big")
    # After version, flags and the sample count: the optional data offset and first sample's
    # flags, then the first sample's duration, size and flags, each only if flagged present.
    offset = trun + 8 + sum(4 for bit in (0x1, 0x4, 0x100, 0x200, 0x400) if flags & bit)
    composition = 0
    if flags & 0x800:
        composition = struct.unpack_from(">i" if version == 1 else ">I", segment, offset)[0]
    return Fraction(decode_time + composition, timescale(init))


def rendition_start(folder: Path) -> Fraction:
    """:func:`first_presentation` of a rendition's first listed segment, from its playlist."""
    playlist = m3u8.load(str(folder / "index.m3u8"))
    return first_presentation((folder / playlist.segment_map[0].uri).read_bytes(),
                              (folder / playlist.segments[0].uri).read_bytes())
