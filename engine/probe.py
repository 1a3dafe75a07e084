"""Open a source safely and describe it as a :class:`SourceInfo`.

Uploads are untrusted. FFmpeg follows references inside some formats (HLS playlists, concat
scripts, SDP files), so a source is opened with a demuxer allow-list and the ``file`` protocol
only: an HLS playlist renamed to ``.mp4`` is refused before it can open anything else.

The probe decodes the first video frame, because rotation (display-matrix side data) is only
exposed on frames. The open container and that frame are handed on to the decode stage in an
:class:`OpenSource`, so the source is demuxed and decoded exactly once.
"""

from __future__ import annotations

import gc
import math
import os
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.audio.stream
import av.codec.hwaccel
import av.container
import av.error
import av.stream
import av.video.codeccontext
import av.video.frame
import langcodes
import numpy as np
from av.sidedata.sidedata import SideDataContainer
from av.sidedata.sidedata import Type as SideDataType
from av.video.reformatter import ColorPrimaries, ColorRange, ColorTrc

from engine.errors import InvalidSourceError, UnsupportedSourceError
from engine.stall import DecoderWatch

#: FFmpeg's demuxer for MP4, QuickTime and their kin.
MP4_DEMUXER = "mov,mp4,m4a,3gp,3g2,mj2"
#: Demuxers for real video containers. Anything else (hls, concat, sdp, image2, ...) is refused.
ALLOWED_DEMUXERS = (
    MP4_DEMUXER,
    "matroska,webm",
    "avi",
    "mpegts",
    "mpeg",
    "flv",
    "asf",
    "mxf",
    "dv",
    "gif",
    "apng",  # animated PNG; a still PNG goes to the image demuxer, refused below
    "ogg",
    "yuv4mpegpipe",  # Y4M, uncompressed frames: what video tools write as a lossless master
    "h264",
    "hevc",
)
#: Of those, the readers of raw elementary streams (no container, no timestamps).
RAW_STREAMS = ("h264", "hevc")
#: What a source's demuxer is opened with, each time: only those demuxers, and no protocol but
#: the file itself (a playlist or a reference must not make FFmpeg read other files).
CONTAINER_OPTIONS = {"format_whitelist": ",".join(ALLOWED_DEMUXERS), "protocol_whitelist": "file"}

#: The frame rates a source's header is believed to give: phones film at up to 240 fps, and a
#: slideshow may hold each picture for seconds.
MIN_SOURCE_FRAME_RATE = Fraction(1, 10)
MAX_SOURCE_FRAME_RATE = 500
#: Largest frame area accepted before anything is allocated (8K UHD).
DEFAULT_MAX_PIXELS = 7680 * 4320
#: Longest duration accepted, in seconds.
DEFAULT_MAX_DURATION_S = 6 * 3600.0
#: The widest a source's pixels are believed to be, either way: anamorphic video stretches
#: them by up to 2 (a 2x anamorphic lens; DV and HDV by 1.1 to 1.5). A sample aspect ratio of
#: 100:1, as a damaged header gave, would show 640x360 as 64000x360, which no encoder takes.
MAX_SAMPLE_ASPECT = 4


#: Audio tracks kept at most; a file's further tracks are left out (and noted).
MAX_AUDIO_TRACKS = 8


@dataclass(frozen=True)
class AudioInfo:
    """An audio stream Rungs will encode (see :func:`_audio_streams`)."""

    codec: str
    sample_rate: int
    channels: int
    #: The track's language as a BCP 47 tag (see :func:`language_tag`); None when untagged.
    language: str | None = None
    #: What players show in their audio menu: unique among the tracks kept (see
    #: :func:`rendition_name`).
    name: str = "Audio 1"


#: FFmpeg's code for "unspecified" in each colour field below (ISO/IEC 23091-2 numbering).
UNSPECIFIED = 2
#: Matrices a YUV picture can have (not RGB's 0, which is converted to YUV on decode).
_MATRICES = frozenset((1, 4, 5, 6, 7, 9, 10))
#: The matrix FFmpeg's scaler converts RGB to YUV with when given none: BT.601 (SMPTE 170M).
_RGB_TO_YUV_MATRIX = 6
_PRIMARIES = frozenset(int(p) for p in ColorPrimaries)
_TRANSFERS = frozenset(int(t) for t in ColorTrc)
#: FFmpeg's AVFMT_TS_DISCONT flag of a demuxer.
_TS_DISCONT = 0x0200
#: The high-dynamic-range transfer functions' names (others are SDR).
_HDR_TRANSFERS = {int(ColorTrc.SMPTE2084): "PQ", int(ColorTrc.ARIB_STD_B67): "HLG"}


@dataclass(frozen=True)
class Colour:
    """How a source's sample values are meant to be shown. Scaling keeps the matrix, primaries
    and transfer of an SDR source, so its rungs are tagged with them; full-range samples (as
    some phones record) are scaled into video range, which is what players assume when a tag
    is missing. An HDR source's rungs are mapped to SDR (engine.tonemap)."""

    full_range: bool = False
    matrix: int = UNSPECIFIED
    primaries: int = UNSPECIFIED
    transfer: int = UNSPECIFIED

    @property
    def dynamic_range(self) -> str:
        """``PQ`` or ``HLG`` for the high-dynamic-range transfer functions, else ``SDR``."""
        return _HDR_TRANSFERS.get(self.transfer, "SDR")

    @property
    def hdr(self) -> bool:
        """Whether the transfer is high dynamic range: PQ or HLG."""
        return self.dynamic_range != "SDR"

    @classmethod
    def of(cls, frame: av.video.frame.VideoFrame) -> Colour:
        """The colour description of a decoded frame, values PyAV does not know read as
        unspecified. An RGB source is converted to YUV on decode, with the BT.601 matrix, so
        that is its rungs' matrix (left untagged, a player would take HD for BT.709)."""
        def known(value: int, allowed: frozenset[int]) -> int:
            return value if value in allowed else UNSPECIFIED

        return cls(
            full_range=frame.color_range == ColorRange.JPEG or frame.format.name.startswith("yuvj"),
            matrix=(_RGB_TO_YUV_MATRIX if frame.format.is_rgb
                    else known(frame.colorspace, _MATRICES)),
            primaries=known(frame.color_primaries, _PRIMARIES),
            transfer=known(frame.color_trc, _TRANSFERS))


#: Nine 32-bit integers; side data of another size is not one.
_DISPLAY_MATRIX_BYTES = 36


@dataclass(frozen=True)
class Orientation:
    """How a player turns the coded picture to show it: by ``clockwise`` degrees (0, 90, 180 or
    270), then, if ``mirrored``, flipped left to right.

    Some front cameras and editing apps keep a mirror in the display matrix instead of in the
    pixels. FFmpeg's rotation angle (``VideoFrame.rotation``) reads such a matrix as a turn, a
    mirrored picture as an upside-down one, so the matrix itself is read here; the result is
    what the ffmpeg CLI's auto-rotation shows (checked against it for all eight).
    """

    clockwise: int = 0
    mirrored: bool = False

    @property
    def sideways(self) -> bool:
        """Turned a quarter: the picture is shown with its width and height swapped."""
        return self.clockwise in (90, 270)

    @classmethod
    def of(cls, frame: av.video.frame.VideoFrame) -> tuple[Orientation, int | None]:
        """What the display matrix on ``frame`` asks for (upright without one), and the turn it
        asks for when that is not a multiple of 90 degrees (else None).

        Such a turn is not made, as browsers do not make it: a damaged or hand-edited header
        turned 45 degrees would show the picture on its corner, and phones write only quarter
        turns. The mirror is still made."""
        # Through Any: PyAV 18.1.0's stubs type ``side_data`` as a dict of motion vectors only,
        # 18.1.1's as what it is, and the cast the first needs is redundant to the second.
        side_data: Any = frame.side_data
        sides: SideDataContainer = side_data
        side = (bytes(sides[SideDataType.DISPLAYMATRIX])
                if SideDataType.DISPLAYMATRIX in sides else b"")
        if len(side) != _DISPLAY_MATRIX_BYTES:
            return cls(), None
        # The matrix [a b u; c d v; x y w] of libavutil/display.h, a to d in 16.16 fixed point.
        a, b, _, c, d = np.frombuffer(side, "=i4")[:5].tolist()
        # A mirror turns the matrix's orientation over; taking it out leaves a turn.
        mirrored = a * d - b * c < 0
        if mirrored:
            a = -a
        turn = math.degrees(math.atan2(b, a)) % 360  # av_display_rotation_get's, clockwise
        quarters = round(turn / 90)
        if abs(turn - 90 * quarters) > 1:  # the ffmpeg CLI's tolerance too
            return cls(0, mirrored), round(turn) % 360
        return cls(90 * quarters % 360, mirrored), None


@dataclass(frozen=True)
class SourceInfo:
    """What the rest of the pipeline needs to know about a source."""

    path: str
    container: str
    codec: str
    #: Coded size of the decoded frames, before sample aspect ratio and rotation.
    width: int
    height: int
    sample_aspect_ratio: Fraction
    #: How a player turns the picture to show it upright.
    orientation: Orientation
    #: Average frame rate of the video stream.
    frame_rate: Fraction
    duration_s: float
    pixel_format: str
    bit_depth: int
    #: Frames the container declares (0 when it does not say).
    declared_frames: int
    #: The audio tracks kept, the one players should play first (see :func:`_audio_streams`).
    audio_tracks: tuple[AudioInfo, ...] = ()
    #: Audio streams in the source, decodable or not; only ``audio_tracks`` are kept.
    audio_streams: int = 0
    #: Of those, the ones FFmpeg cannot decode.
    audio_undecodable: int = 0
    #: Of the others, the ones of other programmes than the video's (see :func:`_elsewhere`).
    audio_elsewhere: int = 0
    #: Video streams other than cover pictures; only the one described here is kept.
    video_streams: int = 1
    #: Subtitle streams, none of which is kept.
    subtitle_streams: int = 0
    #: ``software`` or the hardware device type that decodes the video.
    decoder: str = "software"
    colour: Colour = field(default_factory=Colour)
    #: A sample aspect ratio the source declares beyond :data:`MAX_SAMPLE_ASPECT` either way,
    #: which is not believed: its pixels are taken as square instead.
    incredible_sample_aspect: Fraction | None = None
    #: A turn the display matrix asks for that is not a multiple of 90 degrees (clockwise),
    #: which is not made (see :meth:`Orientation.of`).
    odd_turn: int | None = None

    @property
    def display_size(self) -> tuple[int, int]:
        """Width and height as shown to a viewer: sample aspect ratio and rotation applied."""
        width = round(self.width * self.sample_aspect_ratio)
        if self.orientation.sideways:
            return self.height, width
        return width, self.height


class OpenSource:
    """An opened source: the container, its description, and what was read to describe it.

    ``packets`` is the one demux pass over the video and the audio streams kept (see
    :func:`_audio_streams`); ``pending`` holds the frames and audio
    packets the probe already took from it, in order, for the decode stage to use first. Use as
    a context manager; the container is closed on every path.
    """

    def __init__(self, container: av.container.InputContainer, info: SourceInfo,
                 video_stream: av.video.stream.VideoStream,
                 packets: Iterator[av.Packet[Any]],
                 pending: list[av.video.frame.VideoFrame | av.Packet[Any]],
                 packets_read: int, hidden_read: int,
                 audio_streams: Sequence[av.audio.stream.AudioStream],
                 watch: DecoderWatch) -> None:
        self._container: av.container.InputContainer | None = container
        self.info = info
        self._video_stream: av.video.stream.VideoStream | None = video_stream
        #: The audio streams ``info.audio_tracks`` describe, in their order, demuxed with the
        #: video.
        self.audio_streams = list(audio_streams)
        self.packets = packets
        self.pending = pending
        #: Video packets already demuxed by the probe, and how many of them are never shown
        #: (see ``DecodeStats.hidden_packets``).
        self.video_packets_read = packets_read
        self.hidden_packets_read = hidden_read
        #: Marks every call into the decoders (see engine.stall).
        self.watch = watch

    @property
    def container(self) -> av.container.InputContainer:
        if self._container is None:
            raise ValueError("the source is closed")
        return self._container

    @property
    def video_stream(self) -> av.video.stream.VideoStream:
        """The video stream ``info`` describes."""
        if self._video_stream is None:
            raise ValueError("the source is closed")
        return self._video_stream

    def __enter__(self) -> OpenSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the container and let go of it: its decoders live as long as anything holds
        their streams, so this ends their threads and frees their frame pools (a job closes
        its source as soon as decoding is done). Closing twice does nothing."""
        if self._container is None:
            return
        self._container.close()
        self._container = None
        self._video_stream = None
        self.audio_streams = []
        self.packets = iter(())
        self.pending = []
        # The probe's first frame is in a reference cycle with the side-data container PyAV
        # keeps on it (read for its display matrix), and until the cyclic collector came round
        # it kept the decoder's memory: on 4 s of 4K the 1080p and 2160p phases peaked 70-100
        # MB higher. A collection here takes about 13 ms.
        gc.collect()


def open_source(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                max_duration_s: float = DEFAULT_MAX_DURATION_S,
                hwaccel: str | None = None, watch: DecoderWatch | None = None) -> OpenSource:
    """Open ``path``, check it is a decodable video within limits, and describe it.

    ``hwaccel`` names a hardware device type to decode on (see :mod:`engine.hwaccel`); FFmpeg
    falls back to software for streams the device cannot decode, and ``SourceInfo.decoder``
    says which ran. ``watch`` marks the calls into the decoders, from the probe's first frame
    on (see :func:`engine.stall.run_watched`).

    Raises :class:`InvalidSourceError` (or its subclass :class:`UnsupportedSourceError`) with a
    message naming the problem.
    """
    source = Path(path)
    try:
        is_file = source.is_file()
        size = source.stat().st_size if is_file else 0
    except OSError as exc:  # a name the system refuses (too long), a folder it may not search
        raise InvalidSourceError(
            f"source {str(source)!r} cannot be read: {exc.strerror or exc}") from None
    if not is_file:
        raise InvalidSourceError(f"source {str(source)!r} does not exist or is not a file")
    if size == 0:
        raise InvalidSourceError(f"source {source.name!r} is empty")
    try:
        # An absolute path: FFmpeg reads a relative name such as "clip:1.mp4" as a protocol.
        # ``max_pixels`` reaches the decoders FFmpeg runs while it reads the stream headers:
        # without it, a file declaring 8192x8192 gets 100 MB frames allocated before the size
        # check below can refuse it. (FFmpeg passes no options to streams that only appear
        # while it reads packets, as in MPEG-PS; those are checked after.)
        container = av.open(str(source.absolute()), options=_decoder_limits(max_pixels),
                            container_options=CONTAINER_OPTIONS,
                            hwaccel=av.codec.hwaccel.HWAccel(hwaccel) if hwaccel else None)
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        head = _file_head(source, _KIND_BYTES)
        if _is_animated_webp(head):
            raise UnsupportedSourceError(
                f"source {source.name!r} is an animated WebP image, which this FFmpeg cannot "
                "decode (a GIF or a video file of it can be read)") from exc
        kind = _not_video_kind(head)
        if kind is not None:
            raise InvalidSourceError(f"source {source.name!r} is {kind}, not a video") from exc
        _check_index(source)
        raise InvalidSourceError(
            f"source {source.name!r} is not a video file FFmpeg can read ({failure_reason(exc)})"
        ) from exc
    try:
        if container.format.name == MP4_DEMUXER:
            _check_index(source, opened=True)
        if container.format.name in _SIZED_DEMUXERS:
            _check_declared_size(source, container.format.name)
        if container.format.name == OGG_DEMUXER:
            _check_ogg_end(source)
        return _describe(container, str(source), max_pixels, max_duration_s, hwaccel,
                         watch or DecoderWatch())
    except BaseException:
        container.close()
        raise


def _decoder_limits(max_pixels: int) -> dict[str, str]:
    """Decoder options that refuse frames above ``max_pixels`` (FFmpeg's own check, in C)."""
    return {"max_pixels": str(max(1, min(max_pixels, 2**31 - 1)))}


#: The first bytes of the picture and sound files people upload by mistake, which the allowed
#: demuxers do not read: each is then named in the error instead of FFmpeg's "invalid argument".
_NOT_VIDEO_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a still image (PNG)"),
    (b"\xff\xd8\xff", "a still image (JPEG)"),
    (b"II*\x00", "a still image (TIFF)"),
    (b"MM\x00*", "a still image (TIFF)"),
    (b"BM", "a still image (BMP)"),
    (b"ID3", "an audio file (MP3)"),  # the tag MP3 files start with
    (b"fLaC", "an audio file (FLAC)"),
    (b"#!AMR", "an audio file (AMR)"),
    # Frame headers: MPEG audio layer III (MPEG-1, 2 and 2.5, with and without a CRC), AAC ADTS.
    *((bytes([0xFF, second]), "an audio file (MP3)")
      for second in (0xFB, 0xFA, 0xF3, 0xF2, 0xE3, 0xE2)),
    *((bytes([0xFF, second]), "an audio file (AAC)") for second in (0xF1, 0xF9)),
)
#: RIFF and IFF files say what they hold in bytes 8 to 12.
_TAGGED_KINDS = {(b"RIFF", b"WEBP"): "a still image (WebP)",
                 (b"RIFF", b"WAVE"): "an audio file (WAV)",
                 (b"FORM", b"AIFF"): "an audio file (AIFF)"}


def _file_head(path: Path, count: int) -> bytes:
    """The first ``count`` bytes of ``path`` (fewer in a shorter file; none if it cannot be
    read, so no check made on them finds anything)."""
    try:
        with path.open("rb") as file:
            return file.read(count)
    except OSError:
        return b""


def _not_video_kind(head: bytes) -> str | None:
    """What a file is, if its first bytes ``head`` are those of a common picture or sound file."""
    tagged = _TAGGED_KINDS.get((head[:4], head[8:12]))
    if tagged is not None:
        return tagged
    return next((kind for magic, kind in _NOT_VIDEO_SIGNATURES if head.startswith(magic)), None)


#: Where a WebP file's extended header (``VP8X``) keeps its flags, and the flag of an animation.
_WEBP_FLAGS_AT = 20
_WEBP_ANIMATED = 0x02
#: The first bytes read to tell what a file FFmpeg did not open is.
_KIND_BYTES = _WEBP_FLAGS_AT + 1


def _is_animated_webp(head: bytes) -> bool:
    """Whether a file whose first bytes are ``head`` is an animated WebP image (stickers, short
    loops): PyAV's FFmpeg reads only the first picture of one, and its decoder refuses even
    that."""
    return (len(head) > _WEBP_FLAGS_AT and head[:4] == b"RIFF" and head[8:16] == b"WEBPVP8X"
            and bool(head[_WEBP_FLAGS_AT] & _WEBP_ANIMATED))


#: The boxes an MP4 or QuickTime file can start with.
_MP4_FIRST_BOXES = {b"ftyp", b"wide", b"free", b"skip", b"mdat", b"moov", b"pnot", b"uuid"}
_NEVER_ARRIVED = "never arrived"
#: How many top-level boxes are walked looking for the index (real files have a handful).
_MAX_TOP_BOXES = 10_000


def _check_index(path: Path, opened: bool = False) -> None:
    """Raise :class:`InvalidSourceError` for an MP4 or QuickTime file whose index (its ``moov``
    box) is missing or cut off; for a file FFmpeg ``opened``, only for one cut off (FFmpeg
    found the index where a walk of the boxes may not: a media box's size can be wrong).

    Phones and cameras write the index after the media, once recording stops: an upload cut off
    before the end, or a recording that never stopped (a flat battery: its ``mdat`` box still
    sized "to the end of the file"), holds pictures but no index, which FFmpeg calls "invalid
    data found when processing input". Cut inside the index, FFmpeg may still open the file
    and read what its partial sample tables list, or find no decodable frame.
    """
    problem = _index_problem(path)
    if problem is not None and not (opened and problem == _NEVER_ARRIVED):
        raise InvalidSourceError(
            f"source {path.name!r} is truncated: its index (moov box) {problem}")


def _index_problem(path: Path) -> str | None:
    """What is wrong with the index of an MP4 or QuickTime file, walking its top-level boxes;
    None for a whole index or another kind of file."""
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            offset = 0
            for _ in range(_MAX_TOP_BOXES):
                if offset + 8 > size:
                    return _NEVER_ARRIVED if offset else None
                file.seek(offset)
                head = file.read(16)
                box_size, kind = struct.unpack(">I4s", head[:8])
                if offset == 0 and kind not in _MP4_FIRST_BOXES:
                    return None
                if not all(32 <= byte < 127 for byte in kind):
                    # Not a box: a media box's size is damaged (the walk landed in its data),
                    # the file is not cut; FFmpeg's own error says more.
                    return None
                if box_size == 1 and len(head) == 16:
                    box_size = struct.unpack(">Q", head[8:])[0]
                elif box_size == 0:
                    box_size = size - offset  # "to the end of the file"
                if box_size < 8:
                    return None  # damaged, as above
                if kind == b"moov":
                    return "is cut off" if offset + box_size > size else None
                offset += box_size
    except OSError:
        pass
    return None


#: An FLV file's script tag (``onMetaData``) gives its size in bytes as an AMF number: the key
#: (8 long, in any case: OBS writes "fileSize"), the number's marker, a big-endian double.
_FLV_FILESIZE = re.compile(rb"\x00\x08(?i:filesize)\x00(.{8})", re.DOTALL)
#: ASF's (WMV's) File Properties object; its flags say whether its sizes hold (not broadcast).
_ASF_FILE_PROPERTIES = bytes.fromhex("a1dcab8c47a9cf118ee400c00c205365")
_ASF_SIZE_AT, _ASF_FLAGS_AT, _ASF_BROADCAST = 40, 88, 0x01
#: MXF's header partition pack (any status); its footer's offset is 24 bytes into its value.
_MXF_HEADER_PARTITION = bytes.fromhex("060e2b34020501010d0102010102")
_MXF_FOOTER_AT = 24
_KLV_KEY_BYTES = 16
#: How much of a file its header is looked for in (an MXF run-in is less than 64 KiB).
_HEADER_BYTES = 1 << 16
#: The demuxers of the formats whose header gives the finished file's size.
_SIZED_DEMUXERS = ("flv", "asf", "mxf")


def _check_declared_size(path: Path, demuxer: str) -> None:
    """Raise :class:`InvalidSourceError` for an FLV, WMV or MXF file shorter than its header says.

    Their demuxers just stop where a cut-off upload ends, and FFmpeg's duration for them may be
    an estimate from the bit rate (for a file that declares none), so the job completed as a
    shorter video (58 of 120 frames of an FLV cut in half, exit 0). The byte count their
    writers put in the header once the file is finished tells a cut file apart exactly.
    """
    try:
        size = path.stat().st_size
    except OSError:
        return
    declared = _declared_size(_file_head(path, _HEADER_BYTES), demuxer)
    if declared is not None and declared > size:
        raise InvalidSourceError(
            f"source {path.name!r} is truncated: its header says the file holds at least "
            f"{declared} bytes, but it has {size}")


def _declared_size(head: bytes, demuxer: str) -> int | None:
    """How many bytes the file whose first bytes are ``head`` should hold at least, as its
    header says (FLV's and ASF's size, where MXF's footer starts); None where it says nothing,
    as files written live leave it."""
    if demuxer == "flv" and (match := _FLV_FILESIZE.search(head)):
        size = struct.unpack(">d", match.group(1))[0]
        return int(size) if math.isfinite(size) and size > 0 else None
    if demuxer == "asf" and (at := head.find(_ASF_FILE_PROPERTIES)) >= 0:
        if len(head) < at + _ASF_FLAGS_AT + 4:
            return None
        size = struct.unpack_from("<Q", head, at + _ASF_SIZE_AT)[0]
        flags = struct.unpack_from("<I", head, at + _ASF_FLAGS_AT)[0]
        return None if flags & _ASF_BROADCAST or not size else int(size)
    if demuxer == "mxf" and (at := head.find(_MXF_HEADER_PARTITION)) >= 0:
        value = _ber_value(head, at + _KLV_KEY_BYTES)
        if value is None or len(head) < value + _MXF_FOOTER_AT + 8:
            return None
        footer = struct.unpack_from(">Q", head, value + _MXF_FOOTER_AT)[0]
        # Offsets count from the header partition (after any run-in); 0: not known yet.
        return at + footer + _KLV_KEY_BYTES if footer else None
    return None


OGG_DEMUXER = "ogg"
#: An Ogg page starts with its capture pattern and version 0; its header is 27 bytes, the last
#: of them the count of lacing values that follow, which add up to the page's body.
_OGG_PAGE = b"OggS\x00"
_OGG_HEADER_BYTES = 27
_OGG_TYPE_AT = 5
_OGG_END_OF_STREAM = 0x04
_OGG_TYPES = 0x07
#: The most an Ogg page can hold: its header and 255 lacing values of 255 bytes each.
_OGG_MAX_PAGE = _OGG_HEADER_BYTES + 255 + 255 * 255


def _check_ogg_end(path: Path) -> None:
    """Raise :class:`InvalidSourceError` for an Ogg file cut off before its end.

    Ogg declares no length up front (FFmpeg reads the duration off the last page there is), so
    a cut-off upload completed as a shorter video (2.8 s of a 6 s Theora file, exit 0). Its
    writers mark the last page of each stream "end of stream", so a whole file ends with such
    a page; a cut one ends inside a page, or with a page that lacks the mark. (Cut just after
    one stream's last page, before the other's, it passes: at most that page is lost.) A file
    that ends in something other than a page is left to play as it is.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            file.seek(max(0, size - _OGG_MAX_PAGE))
            tail = file.read(_OGG_MAX_PAGE)
    except OSError:
        return
    at = len(tail)
    while (at := tail.rfind(_OGG_PAGE, 0, at)) >= 0:
        if len(tail) <= at + _OGG_TYPE_AT or not tail[at + _OGG_TYPE_AT] & ~_OGG_TYPES:
            break  # else the pattern lies inside a page's data, not at a page
    if at < 0:
        return
    header = tail[at:at + _OGG_HEADER_BYTES]
    count = header[-1] if len(header) == _OGG_HEADER_BYTES else 0
    lacing = tail[at + _OGG_HEADER_BYTES:at + _OGG_HEADER_BYTES + count]
    end = at + _OGG_HEADER_BYTES + count + sum(lacing)
    problem = None
    # A cut in the first bytes of the next page leaves too few of them to be found as one.
    if (len(header) < _OGG_HEADER_BYTES or len(lacing) < count or end > len(tail)
            or (len(tail) > end and _OGG_PAGE.startswith(tail[end:]))):
        problem = "it ends inside an Ogg page"
    elif end == len(tail) and not header[_OGG_TYPE_AT] & _OGG_END_OF_STREAM:
        problem = "its last Ogg page does not end the stream"
    if problem is not None:
        raise InvalidSourceError(f"source {path.name!r} is truncated: {problem}")


def _ber_value(data: bytes, at: int) -> int | None:
    """Where the value of a KLV triplet starts, given where its BER-coded length starts."""
    if at >= len(data):
        return None
    first = data[at]
    return at + 1 + (first & 0x7F if first & 0x80 else 0)


def failure_reason(exc: BaseException) -> str:
    """What FFmpeg said went wrong, in a few words for an error message."""
    if isinstance(exc, av.error.FFmpegError) and exc.strerror:
        return str(exc.strerror).lower()
    return type(exc).__name__


def _describe(container: av.container.InputContainer, path: str, max_pixels: int,
              max_duration_s: float, hwaccel: str | None, watch: DecoderWatch) -> OpenSource:
    name = Path(path).name
    stream = _video_stream(container)
    if stream is None and container.streams.video:
        raise InvalidSourceError(f"source {name!r} has no video stream, only a cover picture")
    if stream is None:
        raise InvalidSourceError(f"source {name!r} has no video stream")
    # PyAV gives no codec context at all for a codec FFmpeg has no decoder for.
    ctx: av.video.codeccontext.VideoCodecContext | None = stream.codec_context
    if ctx is None or ctx.codec is None or not ctx.codec.name:
        raise UnsupportedSourceError(f"source {name!r} uses a video codec FFmpeg cannot decode")
    decodable = [a for a in container.streams.audio if a.codec_context is not None]
    # One picture counted (a photo in MP4 or MOV); Matroska counts none (0: not known), and
    # MJPEG or PNG video in it is video. One picture with sound beside it is a song's cover
    # copied in as its picture, which players show while the sound plays.
    if (ctx.name in ("png", "mjpeg", "bmp", "gif", "webp") and stream.frames == 1
            and not decodable):
        raise InvalidSourceError(f"source {name!r} is a still image, not a video")
    width, height = ctx.width, ctx.height
    if width <= 0 or height <= 0:
        # A recording cut after its last keyframe: the decoder never gets its parameters.
        raise InvalidSourceError(f"source {name!r} has no picture that can be decoded: its "
                                 "video gives no frame size (a recording cut after its last "
                                 "keyframe gives none)")
    if width * height > max_pixels:
        raise UnsupportedSourceError(
            f"source {name!r} is {width}x{height}, above the limit of {max_pixels} pixels"
        )
    duration_s = _duration(container, stream)
    # A stream format's duration is its last timestamp less its first, which a splice can make
    # any length (engine.decode joins the pieces): the decoder holds the joined video to the
    # limit instead.
    if duration_s > max_duration_s and not clock_may_jump(container):
        raise UnsupportedSourceError(
            f"source {name!r} lasts {duration_s:.0f} s, above the limit of {max_duration_s:.0f} s"
        )
    stream.thread_type = "AUTO"
    # The same limit for the decoder that decodes the video: a stream whose size grows past it
    # part way through gets those frames refused (and counted as corrupt), not allocated.
    ctx.options = {**ctx.options, **_decoder_limits(max_pixels)}
    elsewhere = _elsewhere(container, stream, decodable)
    audio_streams = _audio_streams([a for a in decodable if a.index not in elsewhere])
    packets = container.demux([stream, *audio_streams])
    pending, video_packets, hidden_packets = _read_first_frame(packets, stream, name, watch)
    first = next(f for f in pending if isinstance(f, av.video.frame.VideoFrame))

    average = next((r for r in (stream.average_rate, stream.guessed_rate, stream.base_rate)
                    if _credible_rate(r)), None)
    if container.format.name in RAW_STREAMS and ctx.framerate:
        # A raw stream has no timestamps, and its reader counts 25 fps whatever the stream's
        # own timing (H.264 and HEVC VUI) says: 3 s at 30 fps played in 3.6 s.
        average = ctx.framerate
    frame_rate = Fraction(average) if average else Fraction(30)
    declared = stream.sample_aspect_ratio or ctx.sample_aspect_ratio
    sar = sample_aspect(declared)
    names: set[str] = set()
    audio_tracks = tuple(
        AudioInfo(codec=a.codec_context.name, sample_rate=a.codec_context.sample_rate or 0,
                  channels=a.codec_context.channels or 0, language=language_tag(a),
                  name=rendition_name(a, f"Audio {number}", names))
        for number, a in enumerate(audio_streams, 1))
    pix_fmt = first.format.name
    orientation, odd_turn = Orientation.of(first)
    info = SourceInfo(
        path=path,
        container=container.format.name,
        codec=ctx.name,
        width=first.width,
        height=first.height,
        sample_aspect_ratio=sar,
        orientation=orientation,
        frame_rate=frame_rate,
        duration_s=duration_s,
        pixel_format=pix_fmt,
        bit_depth=max((c.bits for c in first.format.components), default=8),
        declared_frames=stream.frames,
        audio_tracks=audio_tracks,
        audio_streams=len(container.streams.audio),
        audio_undecodable=len(container.streams.audio) - len(decodable),
        audio_elsewhere=len(elsewhere),
        video_streams=len(_pictures(container)),
        subtitle_streams=len(container.streams.subtitles),
        decoder=hwaccel if hwaccel and ctx.is_hwaccel else "software",
        colour=Colour.of(first),
        incredible_sample_aspect=(Fraction(declared) if declared and declared > 0
                                  and sar != declared else None),
        odd_turn=odd_turn,
    )
    return OpenSource(container, info, stream, packets, pending, video_packets, hidden_packets,
                      audio_streams, watch)


def _pictures(container: av.container.InputContainer) -> list[av.video.stream.VideoStream]:
    """The video streams that are not a cover picture (FFmpeg shows an MP4's or MP3's cover
    art, a Matroska image attachment, as a one-picture video stream)."""
    return [stream for stream in container.streams.video
            if not stream.disposition & av.stream.Disposition.attached_pic]


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The video stream a player shows: of the :func:`_pictures`, the one the file flags as
    its default where it flags any (a thumbnail or second-angle stream may come first), then
    the largest picture, then the first."""
    pictures = _pictures(container)
    candidates = [s for s in pictures if s.disposition & av.stream.Disposition.default] or pictures

    def area(stream: av.video.stream.VideoStream) -> int:
        context = stream.codec_context  # None for a codec FFmpeg has no decoder for
        return (context.width or 0) * (context.height or 0) if context is not None else 0

    return max(candidates, key=area, default=None)


def _audio_streams(
        candidates: list[av.audio.stream.AudioStream]) -> list[av.audio.stream.AudioStream]:
    """The audio streams kept of ``candidates`` (those FFmpeg can decode, PyAV giving the
    others no codec context, that go with the video), up to ``MAX_AUDIO_TRACKS``, in the
    file's order but for the one a player plays first: the first the file flags as default,
    else the first. A commentary or second-language track may come first, flagged not
    default, as the main one's is."""
    main = next((a for a in candidates if a.disposition & av.stream.Disposition.default),
                candidates[0] if candidates else None)
    kept = [main] if main is not None else []
    return kept + [a for a in candidates if a is not main][:MAX_AUDIO_TRACKS - len(kept)]


def _elsewhere(container: av.container.InputContainer, video: av.video.stream.VideoStream,
               audio_streams: list[av.audio.stream.AudioStream]) -> set[int]:
    """The indexes of those of ``audio_streams`` that belong to other programmes than
    ``video``'s.

    A broadcast recording (MPEG-TS) may carry several programmes, each with its own picture
    and sound; the sound of another channel is not a second language of this one. FFmpeg's
    best-stream search keeps to the programme of the stream it is given, so a track with which
    it finds another picture than ``video`` is another programme's. In a file of one programme,
    or none, it finds the same picture for every track, and none is left out; nor is any where
    ``video``'s programme has no sound of its own."""
    shown_with = {audio.index: container.streams.best("video", related=audio)
                  for audio in audio_streams}
    pictures = {picture.index for picture in shown_with.values() if picture is not None}
    if len(pictures) < 2 or video.index not in pictures:
        return set()
    return {index for index, picture in shown_with.items()
            if picture is not None and picture.index != video.index}


def sample_aspect(declared: Fraction | None) -> Fraction:
    """The sample aspect ratio believed of one FFmpeg declares: 1 (square) for none, 0 (not
    known) and for one past :data:`MAX_SAMPLE_ASPECT` either way."""
    if declared and 1 / MAX_SAMPLE_ASPECT <= declared <= MAX_SAMPLE_ASPECT:
        return Fraction(declared)
    return Fraction(1)


def rendition_name(stream: av.stream.Stream, fallback: str, names: set[str]) -> str:
    """What players show for ``stream`` in their menus (an HLS rendition's NAME): its title,
    else its language's name (:func:`language_name`; the tag where none is known), else
    ``fallback``; with no double quote, which NAME cannot hold, and made unique among
    ``names`` (to which it is added)."""
    title = "".join(c for c in str(stream.metadata.get("title", "")) if c.isprintable())
    language = language_tag(stream)
    name = (title.replace('"', "'").strip()[:64] or (language and language_name(language))
            or language or fallback)
    unique, copy = name, 2
    while unique in names:
        unique, copy = f"{name} ({copy})", copy + 1
    names.add(unique)
    return unique


#: What may be a language tag (``_`` as some files write ``en_US``), to RFC 5646's 35 characters.
_LANGUAGE = re.compile(r"(?=.{1,35}$)[A-Za-z0-9]+([-_][A-Za-z0-9]+)*")


def language_tag(stream: av.stream.Stream) -> str | None:
    """A stream's language in the form an HLS master playlist's LANGUAGE takes (RFC 8216 and
    RFC 5646): the shortest registered tag, so ``en`` for the ISO 639-2 ``eng`` containers
    carry, ``fr`` for the bibliographic ``fre``. None for "undetermined" and for a tag the
    registry does not know (players match LANGUAGE against the viewer's languages, and an
    unknown one would never match)."""
    tag = str(stream.metadata.get("language", "")).strip()
    # langcodes' parser recurses once per subtag: a file's thousand-subtag "tag" overflowed
    # the stack. RFC 5646 (4.4.1) has implementations keep 35 characters at least.
    if not _LANGUAGE.fullmatch(tag):
        return None
    try:
        tag = langcodes.standardize_tag(tag)
    except ValueError:  # langcodes.LanguageTagError: not a tag at all
        return None
    return tag if tag and tag != "und" and langcodes.tag_is_valid(tag) else None


def language_name(tag: str) -> str | None:
    """The name of the language of ``tag`` in that language, as a menu shows it: "English",
    "Deutsch", "Français (Canada)". An HLS rendition's NAME should be in its own language (RFC
    8216, 4.3.4.1); players listed the bare tags ("en", "de") before. None where langcodes
    has no name for the tag."""
    language = langcodes.Language.get(tag)
    if not language.has_name_data():
        return None
    name = language.autonym()
    return name[:1].upper() + name[1:]


def _credible_rate(rate: Fraction | None) -> bool:
    """Whether a frame rate FFmpeg read or guessed can be the video's. A WebM recorded in a
    browser (MediaRecorder, with no duration) declares no rate, and FFmpeg guesses 1000 fps
    from its millisecond clock (90000 from MPEG-TS's); taken as the rate, it put a 30 fps
    recording on the 60 fps grid (see engine.gop) and listed it as 60 fps. A Matroska file
    whose default frame duration was 1000 s was listed at 0.001 fps. (A rate equal to the
    clock's tick rate is no sign: an AVI counts its frames.)"""
    return rate is not None and MIN_SOURCE_FRAME_RATE <= rate <= MAX_SOURCE_FRAME_RATE


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    if stream.duration and stream.time_base:
        return float((stream.duration - _fragments_start(container, stream)) * stream.time_base)
    if tagged := tag_seconds(stream):
        # Matroska's own video duration: the container's is the longest stream's, which a
        # broken audio clock can make hours long. FFmpeg tags where the track ends, so a track
        # that starts late (a recording an hour in) lasts from its start.
        start = float((stream.start_time or 0) * (stream.time_base or 0))
        return tagged - start if tagged > start else tagged
    if container.duration:
        return container.duration / av.time_base
    return 0.0


def clock_may_jump(container: av.container.InputContainer) -> bool:
    """Whether the format's clock may jump part way (FFmpeg's ``AVFMT_TS_DISCONT``: MPEG-TS and
    -PS, Ogg, live FLV), where recordings were joined or a broadcast was spliced."""
    return bool(container.format.flags & _TS_DISCONT)


def _fragments_start(container: av.container.InputContainer,
                     stream: av.video.stream.VideoStream) -> int:
    """Where a fragmented MP4's video starts on its decode clock (``time_base``); 0 for other
    sources.

    FFmpeg gives such a stream's duration as where its last fragment read so far ends on that
    clock, not how long it lasts: fragments kept from a long live stream (their first decode
    time 10 hours in) were refused as lasting 10 hours. A start the format cannot hold (its
    decode times are unsigned; FFmpeg reads a damaged 64-bit one as negative) is ignored.
    """
    if container.format.name != MP4_DEMUXER or stream.frames or stream.duration is None:
        return 0
    entries = stream.index_entries
    first = entries[0].timestamp if len(entries) else 0
    return first if 0 < first < stream.duration else 0


def tag_seconds(stream: av.stream.Stream) -> float:
    """Seconds of a stream's Matroska ``DURATION`` tag (``HH:MM:SS.nnnnnnnnn``, as FFmpeg and
    mkvmerge write it in the header); 0 without one."""
    hours, _, rest = stream.metadata.get("DURATION", "").strip().partition(":")
    minutes, _, seconds = rest.partition(":")
    try:
        value = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


def _read_first_frame(packets: Iterator[av.Packet[Any]], stream: av.video.stream.VideoStream,
                      name: str, watch: DecoderWatch,
                      ) -> tuple[list[av.video.frame.VideoFrame | av.Packet[Any]], int, int]:
    """Demux until the first video frame decodes; keep everything read on the way, in order.
    Also returns how many video packets were read, and how many of them are never shown."""
    pending: list[av.video.frame.VideoFrame | av.Packet[Any]] = []
    video_packets = hidden_packets = 0
    try:
        for packet in packets:
            if packet.stream.index != stream.index:
                pending.append(packet)
                continue
            if packet.size:
                video_packets += 1
                hidden_packets += packet.is_discard
            with watch.call():
                frames = packet.decode()
            pending.extend(frames)
            if frames:
                return pending, video_packets, hidden_packets
    except (av.error.FFmpegError, IndexError) as exc:  # IndexError: see decode._packets
        raise InvalidSourceError(
            f"source {name!r} has a video stream that does not decode ({failure_reason(exc)})"
        ) from exc
    raise InvalidSourceError(f"source {name!r} has a video stream with no decodable frame")
