"""A corpus of bad and odd inputs, made at run time (the repository holds no binary fixtures).

:func:`make_corpus` writes every case into one folder (the source root of the tests that use
it) and returns a :class:`Case` for each, saying what Rungs must do with it:

- ``LADDER``: a complete, playable ladder (:func:`read_ladder` checks what every output must
  be; ``check`` adds the case's own, e.g. portrait output for a rotated source);
- ``REFUSED``: a clear error, whose message contains every one of ``words``: exit 2 with one
  line on stderr from ``rungs transcode``, INVALID_ARGUMENT from the gRPC service.

Media is tiny (at most 320x180 and 2 s, except one real odd-sized 1917x1079 clip of a few
frames) so the whole corpus runs through the CLI and the service in well under a minute on two
cores. Sources are made with PyAV (see :mod:`tests.media`) and by editing bytes of generated
files: MP4 boxes (sample tables, durations, codec tags, cuts at known offsets) and H.264
parameter sets (huge declared dimensions, no timing information).

Inputs that try to make FFmpeg read other files (an HLS playlist, a concat script, an SDP
file, a playlist renamed ``.mp4``) point at a named pipe outside the source root (the trap),
so a test can prove it was never opened.

``RECIPES`` is a static table (test ids are known without making any media); inputs the fuzzer
(``python -m tests.fuzz``) finds are added to it.
"""

from __future__ import annotations

import enum
import io
import os
import random
import re
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import imageio_ffmpeg
import m3u8
import numpy as np

from engine.captions import escaped
from tests import media

#: The ladder and segment length every corpus job uses.
LADDER = (144, 180)
SEGMENT_SECONDS = 1.0
#: Size of most corpus sources: at or just above the top rung, so every job is cheap.
WIDTH, HEIGHT = 320, 180


class Expect(enum.Enum):
    LADDER = "ladder"
    REFUSED = "refused"
    #: Either, as long as it is a correct ladder or a clear refusal (inputs the fuzzer found:
    #: the mutation is replayed on seed bytes a different FFmpeg build may encode otherwise).
    EITHER = "either"


@dataclass(frozen=True)
class Output:
    """What a finished ladder holds, as read back from disk by the test (see test_hostile)."""

    out: Path
    #: (width, height) of each listed rung, lowest first.
    rungs: list[tuple[int, int]]
    #: Video frames decoded from the lowest rung's segments.
    frames: int
    #: Sample rate and channels of the audio rendition (None without audio).
    audio: tuple[int, int] | None
    #: Seconds of video in the lowest rung (sum of EXTINF).
    seconds: float
    #: Each subtitle rendition's name and its cues, (start, end, text) from the first picture,
    #: each once (a cue is repeated in every segment it overlaps).
    subtitles: dict[str, list[tuple[float, float, str]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    name: str
    #: File name inside the corpus folder.
    file: str
    expect: Expect
    #: Lower-case words the error message must contain (REFUSED cases).
    words: tuple[str, ...] = ()
    #: The case's own checks on a finished ladder (LADDER cases); raise AssertionError.
    check: Callable[[Output], None] | None = None
    #: What the case is and what Rungs does with it, for people reading a failure.
    note: str = ""
    #: The file must never be opened by FFmpeg (a reference outside the source root).
    traps: tuple[Path, ...] = ()
    #: Words of the notes a finished job gives (what of the source it left out), one per
    #: note in order; none: the job gives no note.
    notes: tuple[str, ...] = ()
    #: Words of notes the job may give or not, besides those (see Recipe.may_note).
    may_note: tuple[str, ...] = ()


# -- reading a ladder back ----------------------------------------------------------------------


def read_ladder(out: Path) -> Output:
    """Check the finished ladder in ``out`` as a player would see it; describe it."""
    master = m3u8.load(str(out / "master.m3u8"))
    assert master.is_variant and master.playlists, "master lists no rung"
    rungs: list[tuple[int, int]] = []
    frames: list[int] = []
    seconds: list[float] = []
    for variant in master.playlists:
        width, height = variant.stream_info.resolution
        count, duration = _check_video(out / variant.uri, (width, height))
        rungs.append((width, height))
        frames.append(count)
        seconds.append(duration)
    assert rungs == sorted(rungs, key=lambda r: r[0] * r[1]), f"not lowest first: {rungs}"
    assert len(set(frames)) == 1, f"rungs have different frame counts: {frames}"
    audio = None
    subtitles = {}
    for rendition in master.media:
        if rendition.type == "AUDIO":
            audio = _check_audio(out / rendition.uri)
        elif rendition.type == "SUBTITLES":
            subtitles[rendition.name] = read_webvtt(out / rendition.uri)
    for variant in master.playlists:
        assert (variant.stream_info.subtitles == "subtitles") == bool(subtitles), variant
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")
                 or p.name == ".muxer.m3u8"]
    assert not leftovers, f"temporary files left: {leftovers}"
    return Output(out, rungs, frames[0], audio, seconds[0], subtitles)


#: A WebVTT cue's timing line, as Rungs writes it.
_CUE_TIMES = re.compile(r"(\d+):(\d\d):(\d\d)\.(\d\d\d) --> (\d+):(\d\d):(\d\d)\.(\d\d\d)")


def read_webvtt(playlist_path: Path) -> list[tuple[float, float, str]]:
    """The cues of a complete WebVTT rendition, each once, in order: every listed segment is
    a WebVTT file mapped to the rungs' timeline, whose cues overlap the segment's time."""
    playlist = m3u8.loads(playlist_path.read_text())
    assert playlist.is_endlist and playlist.segments, f"{playlist_path} is not complete"
    cues: list[tuple[float, float, str]] = []
    begin = 0.0
    for segment in playlist.segments:
        text = (playlist_path.parent / segment.uri).read_text(encoding="utf-8")
        header, *blocks = text.split("\n\n")
        assert header == "WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:900000,LOCAL:00:00:00.000", header
        for block in blocks:
            timing, _, words = block.strip("\n").partition("\n")
            match = _CUE_TIMES.fullmatch(timing)
            assert match and words and "-->" not in words, block
            numbers = [int(n) for n in match.groups()]
            start = numbers[0] * 3600 + numbers[1] * 60 + numbers[2] + numbers[3] / 1000
            end = numbers[4] * 3600 + numbers[5] * 60 + numbers[6] + numbers[7] / 1000
            assert start < end and start < begin + segment.duration + 1e-6 and end > begin, (
                segment.uri, block)
            if (start, end, words) not in cues:
                cues.append((start, end, words))
        begin += segment.duration
    return cues


def _segments(playlist_path: Path) -> Iterator[tuple[m3u8.Segment, bytes]]:
    """Each listed segment with the bytes a player decodes it from (its init segment + it)."""
    playlist = m3u8.loads(playlist_path.read_text())
    assert playlist.is_endlist, f"{playlist_path} is not complete"
    assert playlist.playlist_type in ("vod", "event"), playlist.playlist_type
    assert playlist.segments, f"{playlist_path} lists no segments"
    folder = playlist_path.parent
    for segment in playlist.segments:
        assert segment.duration > 0, f"{segment.uri}: EXTINF {segment.duration}"
        init = b""
        if segment.init_section is not None:
            init = (folder / segment.init_section.uri).read_bytes()
        data = (folder / segment.uri).read_bytes()
        assert data, f"{segment.uri} is empty"
        yield segment, init + data


def _check_video(playlist_path: Path, size: tuple[int, int]) -> tuple[int, float]:
    frames, seconds = 0, 0.0
    for segment, blob in _segments(playlist_path):
        with av.open(io.BytesIO(blob)) as container:
            decoded = list(container.decode(video=0))
        assert decoded, f"{segment.uri} holds no frame"
        for frame in decoded:
            assert frame.format.name == "yuv420p", frame.format.name
            assert (frame.width, frame.height) == size, ((frame.width, frame.height), size)
        frames += len(decoded)
        seconds += segment.duration
    return frames, seconds


def _check_audio(playlist_path: Path) -> tuple[int, int]:
    formats = set()
    for segment, blob in _segments(playlist_path):
        with av.open(io.BytesIO(blob)) as container:
            decoded = list(container.decode(audio=0))
        assert decoded, f"{segment.uri} holds no audio"
        formats |= {(f.sample_rate, f.layout.nb_channels) for f in decoded}
    assert len(formats) == 1, formats
    return formats.pop()


# -- small helpers ---------------------------------------------------------------------------


def video(path: Path, **kwargs: Any) -> Path:
    """A corpus-sized :func:`tests.media.make_video` (320x180, 1 s, with a tone by default)."""
    values: dict[str, Any] = {"width": WIDTH, "height": HEIGHT, "seconds": 1.0}
    values.update(kwargs)
    return media.make_video(path, **values)


def _frames(width: int, height: int, count: int, seed: int = 0) -> Iterator[np.ndarray]:
    texture = media._texture(width, height, seed)
    for index in range(count):
        yield media._picture(texture, index)


def write_streams(path: Path, *, video_pts: list[int] | None, time_base: Fraction,
                  audio: list[tuple[int, int, float, int]] = (),  # type: ignore[assignment]
                  width: int = WIDTH, height: int = HEIGHT, rate: Fraction = Fraction(30),
                  container_format: str | None = None,
                  codec_options: dict[str, str] | None = None,
                  container_options: dict[str, str] | None = None) -> Path:
    """A file with a video stream whose frames have exactly ``video_pts`` (in ``time_base``),
    and one audio stream per ``(sample_rate, channels, seconds, start_samples)``.

    Packets are interleaved by the muxer (``mux`` buffers and orders them by time)."""
    with av.open(str(path), "w", format=container_format,
                 container_options=container_options or {}) as out:
        stream = None
        if video_pts is not None:
            stream = out.add_stream("libx264", rate=rate,
                                    options=codec_options or {"preset": "veryfast"})
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.time_base = time_base
        sounds = []
        for sample_rate, channels, seconds, start in audio:
            sound = out.add_stream("aac", rate=sample_rate, layout=media._layout(channels))
            sounds.append((sound, media._tone_frames(seconds, 440.0, sample_rate, channels),
                           start))
        for sound, tones, start in sounds:
            for tone in tones:
                tone.pts = (tone.pts or 0) + start
                out.mux(sound.encode(tone))
            out.mux(sound.encode(None))
        if stream is not None and video_pts is not None:
            for pts, image in zip(video_pts, _frames(width, height, len(video_pts)),
                                  strict=True):
                picture = av.VideoFrame.from_ndarray(image, format="rgb24")
                picture.pts, picture.time_base = pts, time_base
                out.mux(stream.encode(picture))
            out.mux(stream.encode(None))
    return path


def jittered_ms(rate: int, count: int, offsets_ms: list[float]) -> list[int]:
    """Millisecond times of ``count`` frames at ``rate`` fps, each moved by the next of
    ``offsets_ms`` (a clock that jitters)."""
    return [round(1000 * i / rate + offsets_ms[i % len(offsets_ms)]) for i in range(count)]


# -- MP4 boxes -------------------------------------------------------------------------------

#: Boxes whose payload is a list of boxes (after the number of bytes given).
_CONTAINERS = {b"moov": 0, b"trak": 0, b"mdia": 0, b"minf": 0, b"stbl": 0, b"edts": 0,
               b"dinf": 0, b"udta": 0, b"stsd": 8, b"avc1": 78, b"moof": 0, b"traf": 0}


@dataclass(frozen=True)
class Box:
    kind: bytes
    offset: int
    size: int
    header: int

    @property
    def payload(self) -> int:
        return self.offset + self.header

    @property
    def end(self) -> int:
        return self.offset + self.size


def boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[Box]:
    """Every box between ``start`` and ``end``, depth first (children after their parent)."""
    end = len(data) if end is None else end
    offset = start
    while offset + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, offset)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, offset + 8)[0], 16
        elif size == 0:
            size = end - offset
        if size < header:
            return
        box = Box(kind, offset, size, header)
        yield box
        if kind in _CONTAINERS:
            yield from boxes(data, box.payload + _CONTAINERS[kind], min(box.end, end))
        offset += size


def find_boxes(data: bytes, kind: bytes) -> list[Box]:
    return [box for box in boxes(data) if box.kind == kind]


def find_box(data: bytes, kind: bytes) -> Box:
    return find_boxes(data, kind)[0]


# -- H.264 parameter sets ----------------------------------------------------------------------


class _Bits:
    """Read and write the bit fields of an H.264 RBSP."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = data
        self.pos = 0
        self.out: list[int] = []

    def u(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | ((self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
        return (1 << zeros) - 1 + self.u(zeros)

    def put(self, n: int, value: int) -> None:
        self.out += [(value >> i) & 1 for i in range(n - 1, -1, -1)]

    def put_ue(self, value: int) -> None:
        value += 1
        self.put(value.bit_length() - 1, 0)
        self.put(value.bit_length(), value)

    def copy(self, n: int) -> int:
        value = self.u(n)
        self.put(n, value)
        return value

    def copy_ue(self) -> int:
        value = self.ue()
        self.put_ue(value)
        return value

    def copy_se(self) -> None:
        self.copy_ue()  # same bits; the sign does not matter for copying

    def written(self) -> bytes:
        bits = [*self.out, 1]  # rbsp_stop_one_bit
        bits += [0] * (-len(bits) % 8)
        return bytes(int("".join(map(str, bits[i:i + 8])), 2) for i in range(0, len(bits), 8))


def _unescape(nal: bytes) -> bytes:
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


def sps_with_size(nal: bytes, size: tuple[int, int] | None) -> bytes:
    """An SPS NAL unit (header byte included, escaped) without its VUI (so without a frame
    rate), declaring ``size`` (width, height; multiples of 16) or, with ``None``, its own size.

    Dropping the VUI makes the new SPS short enough to replace the old one in place.
    """
    bits = _Bits(_unescape(nal[1:]))
    profile = bits.copy(8)
    bits.copy(16)  # constraint flags, level
    bits.copy_ue()  # seq_parameter_set_id
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        if bits.copy_ue() == 3:  # chroma_format_idc
            bits.copy(1)
        bits.copy_ue()
        bits.copy_ue()
        bits.copy(1)
        if bits.copy(1):
            raise ValueError("SPS with scaling matrices")
    bits.copy_ue()  # log2_max_frame_num_minus4
    poc_type = bits.copy_ue()
    if poc_type == 0:
        bits.copy_ue()
    elif poc_type == 1:
        bits.copy(1)
        bits.copy_se()
        bits.copy_se()
        for _ in range(bits.copy_ue()):
            bits.copy_se()
    bits.copy_ue()  # max_num_ref_frames
    bits.copy(1)
    if size is None:
        bits.copy_ue()
        bits.copy_ue()
    else:
        bits.ue()
        bits.ue()
        bits.put_ue(size[0] // 16 - 1)
        bits.put_ue(size[1] // 16 - 1)
    if not bits.copy(1):  # frame_mbs_only_flag
        bits.copy(1)
    bits.copy(1)  # direct_8x8_inference_flag
    if size is None:
        if bits.copy(1):  # frame_cropping_flag
            for _ in range(4):
                bits.copy_ue()
    else:
        bits.put(1, 0)  # no cropping
    bits.put(1, 0)  # no VUI
    return nal[:1] + escaped(bits.written())


def _annexb_nals(data: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of every NAL unit in an Annex B byte stream (without start codes)."""
    starts = []
    index = data.find(b"\x00\x00\x01")
    while index >= 0:
        starts.append(index + 3)
        index = data.find(b"\x00\x00\x01", index + 3)
    for number, start in enumerate(starts):
        end = starts[number + 1] - 3 if number + 1 < len(starts) else len(data)
        while end > start and data[end - 1] == 0:
            end -= 1
        yield start, end


def rewrite_annexb_sps(data: bytes, size: tuple[int, int] | None) -> bytes:
    """Every SPS in an Annex B stream (raw .h264, or inside MPEG-TS packets, where each SPS
    sits whole in one packet) rewritten by :func:`sps_with_size`, padded in place with
    trailing zero bytes (allowed between NAL units) so nothing else moves."""
    out = bytearray(data)
    for start, end in _annexb_nals(data):
        if data[start] & 0x1F == 7:
            new = sps_with_size(bytes(data[start:end]), size)
            if len(new) > end - start:
                raise ValueError("the new SPS is longer than the old one")
            out[start:end] = new + bytes(end - start - len(new))
    return bytes(out)


def resize_mp4_sps(data: bytes, width: int, height: int) -> bytes:
    """The SPS in an MP4's avcC made to declare ``width`` x ``height`` (box sizes kept)."""
    avcc = find_box(data, b"avcC")
    body = bytearray(data[avcc.payload:avcc.end])
    count = body[5] & 0x1F
    assert count == 1, count
    length = struct.unpack_from(">H", body, 6)[0]
    new = sps_with_size(bytes(body[8:8 + length]), (width, height))
    rest = body[8 + length:]
    rebuilt = body[:6] + struct.pack(">H", len(new)) + new + rest
    rebuilt += bytes(len(body) - len(rebuilt))
    out = bytearray(data)
    out[avcc.payload:avcc.end] = rebuilt
    return bytes(out)


# -- the generators ------------------------------------------------------------------------------


def _faststart(folder: Path, name: str, seconds: float = 2.0) -> Path:
    return video(folder / name, seconds=seconds, codec_options={"preset": "veryfast", "g": "15"},
                 container_options={"movflags": "+faststart"})


def cut_mid_gop(folder: Path) -> Path:
    """Index first, then the media cut in the middle of a GOP (an upload that stopped)."""
    whole = _faststart(folder, ".whole-mid.mp4")
    data = whole.read_bytes()
    mdat = find_box(data, b"mdat")
    path = folder / "cut_mid_gop.mp4"
    # 60% into the media: past several 0.5 s GOPs, inside one (g=15 at 30 fps).
    path.write_bytes(data[:mdat.payload + (mdat.size - mdat.header) * 6 // 10])
    whole.unlink()
    return path


def cut_in_moov(folder: Path) -> Path:
    """Index first, cut inside the index itself."""
    whole = _faststart(folder, ".whole-moov.mp4")
    data = whole.read_bytes()
    moov = find_box(data, b"moov")
    path = folder / "cut_in_moov.mp4"
    path.write_bytes(data[:moov.offset + moov.size // 2])
    whole.unlink()
    return path


def cut_before_moov(folder: Path) -> Path:
    """Index last (PyAV's default), cut in the media: the index never arrived."""
    whole = video(folder / ".whole-end.mp4", seconds=2.0)
    path = media.make_truncated(whole, folder / "cut_before_moov.mp4", 0.5)
    whole.unlink()
    return path


def recording_never_finished(folder: Path) -> Path:
    """A phone's recording that never stopped (a flat battery): its media box is still sized
    "to the end of the file", and the index that would follow it was never written."""
    whole = video(folder / ".whole-unfinished.mp4", seconds=2.0)
    data = bytearray(whole.read_bytes())
    mdat, moov = find_box(bytes(data), b"mdat"), find_box(bytes(data), b"moov")
    assert mdat.header == 8 and moov.offset > mdat.offset  # the index after the media
    struct.pack_into(">I", data, mdat.offset, 0)
    path = folder / "recording_never_finished.mp4"
    path.write_bytes(bytes(data[:moov.offset]))
    whole.unlink()
    return path


def media_box_size_damaged(folder: Path) -> Path:
    """The index after the media, whole, but the media box's size damaged to 16 bytes: walking
    the boxes lands in the media's data. Damaged, not cut: no cause is made up for it."""
    whole = video(folder / ".whole-damaged.mp4", seconds=2.0)
    data = bytearray(whole.read_bytes())
    struct.pack_into(">I", data, find_box(bytes(data), b"mdat").offset, 16)
    path = folder / "media_box_size_damaged.mp4"
    path.write_bytes(bytes(data))
    whole.unlink()
    return path


def cut_avi(folder: Path) -> Path:
    """AVI cut in the media: its header still counts every frame, its index never arrived."""
    whole = write_streams(folder / ".whole.avi", video_pts=list(range(60)),
                          time_base=Fraction(1, 30), audio=[(48000, 2, 2.0, 0)],
                          codec_options={"preset": "veryfast", "g": "15"})
    path = media.make_truncated(whole, folder / "cut_avi.avi", 0.6)
    whole.unlink()
    return path


def cut_avi_late(folder: Path) -> Path:
    """2 s of MJPEG in AVI without sound (as a camera writes it), cut at 90%: FFmpeg gives it
    the duration its size suggests, which the frames left reach."""
    whole = video(folder / ".whole_mjpeg.avi", codec="mjpeg", pix_fmt="yuvj420p",
                  codec_options={}, audio=False, seconds=2.0)
    path = media.make_truncated(whole, folder / "cut_avi_late.avi", 0.9)
    whole.unlink()
    return path


def ogg(folder: Path, cut: str | None = None) -> Path:
    """2 s of VP8 and Opus in Ogg; cut (an interrupted upload) in the middle of a page
    (``cut="mid"``), where a page starts (``cut="page"``), which leaves whole pages only, or
    3 bytes into a page (``cut="next"``), too few to be found as one."""
    whole = video(folder / f"{'.' if cut else ''}whole.ogv", codec="libvpx",
                  audio_codec="libopus", seconds=2.0,
                  codec_options={"deadline": "realtime", "cpu-used": "8"})
    if cut is None:
        return whole
    data = whole.read_bytes()
    whole.unlink()
    at = len(data) // 2
    if cut != "mid":
        at = data.index(b"OggS", at) + (3 if cut == "next" else 0)
    path = folder / f"cut_{cut}.ogv"
    path.write_bytes(data[:at])
    return path


#: Old formats whose header says how many bytes the file holds: the video() options for each.
_SIZED = {"flv": {}, "wmv": {"codec": "wmv2", "codec_options": {}},
          # The MXF muxer takes neither AAC nor H.264 at this size.
          "mxf": {"codec": "mpeg2video", "codec_options": {}, "fps": 25, "audio": False}}


def sized(folder: Path, kind: str, cut: float | None = None) -> Path:
    """2 s of FLV, WMV or MXF (``kind``); with ``cut``, only that share of its bytes, as an
    interrupted upload."""
    whole = video(folder / f"{'.' if cut else ''}whole.{kind}", seconds=2.0, **_SIZED[kind])
    if cut is None:
        return whole
    path = media.make_truncated(whole, folder / f"cut.{kind}", cut)
    whole.unlink()
    return path


def avi_dropped_frame(folder: Path) -> Path:
    """AVI with a dropped frame: the muxer writes an empty chunk for it, which the header
    counts as a frame (as capture cards, cameras and the ffmpeg CLI's AVIs have)."""
    return write_streams(folder / "dropped_frame.avi", video_pts=[0, *range(2, 30)],
                         time_base=Fraction(1, 30), audio=[(48000, 2, 1.0, 0)],
                         codec_options={"preset": "veryfast"})


def cut_ts(folder: Path) -> Path:
    """MPEG-TS cut mid-GOP: a stream format has no index, so what arrived is the video."""
    whole = video(folder / ".whole.ts", seconds=2.0,
                  codec_options={"preset": "veryfast", "g": "15"})
    path = media.make_truncated(whole, folder / "cut_ts.ts", 0.6)
    whole.unlink()
    return path


def ts_after_its_keyframe(folder: Path) -> Path:
    """The second half of an MPEG-TS recording whose only keyframe is in the first (the
    ffmpeg CLI's ``-ss 1.5 -c copy`` of such a file writes this): no picture can be decoded."""
    whole = video(folder / ".whole.ts", seconds=2.0,
                  codec_options={"preset": "veryfast", "g": "1000"})
    data = whole.read_bytes()
    whole.unlink()
    path = folder / "after_keyframe.ts"
    path.write_bytes(data[len(data) // 188 // 2 * 188:])
    return path


def spliced_ts(folder: Path, name: str, offsets: tuple[float, float]) -> Path:
    """Two 1 s MPEG-TS recordings joined end to end (a capture across a broadcast splice, or
    files joined with ``cat``), their clocks starting at ``offsets`` seconds: a 440 Hz tone
    under the first, 880 Hz under the second."""
    pieces = [video(folder / f".{name}-{index}.ts", tone_hz=hz,
                    container_options={"output_ts_offset": f"{offset:g}"})
              for index, (hz, offset) in enumerate(zip((440.0, 880.0), offsets, strict=True))]
    path = folder / name
    path.write_bytes(b"".join(piece.read_bytes() for piece in pieces))
    for piece in pieces:
        piece.unlink()
    return path


def audio_clock_leap(folder: Path, after_s: int = 1) -> Path:
    """A live Matroska capture (no duration declared, as a browser's WebM recording) of 2 s
    whose sound's timestamps leap 10 hours ahead after ``after_s``: a damaged clock, not a
    pause (with 0, the sound starts 10 hours in)."""
    path = folder / f"audio_leap_{after_s}.mkv"
    with av.open(str(path), "w", container_options={"live": "1"}) as out:
        picture = out.add_stream("libx264", rate=30, options={"preset": "veryfast"})
        picture.width, picture.height, picture.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        sound = out.add_stream("aac", rate=48000, layout="stereo")
        for tone in media._tone_frames(2.0, 440.0, 48000, 2):
            if tone.pts is not None and tone.pts >= after_s * 48000:
                tone.pts += 10 * 3600 * 48000
            out.mux(sound.encode(tone))
        out.mux(sound.encode(None))
        for index, image in enumerate(_frames(WIDTH, HEIGHT, 60)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 30)
            out.mux(picture.encode(frame))
        out.mux(picture.encode(None))
    return path


def video_clock_back(folder: Path) -> Path:
    """A live Matroska capture (no duration declared) of 2 s whose picture's clock goes 10
    hours back after 1 s, while its sound's runs on: a damaged clock, as a fuzzed MP4 showed.
    The time origin moves back with the picture, so the sound after it counted 10 hours in."""
    leap = 10 * 3600
    return live_mkv_restamped(folder / "video_clock_back.mkv", leap,
                               lambda index: index + leap * 30 if index < 30 else index)


def video_frame_late(folder: Path, name: str, late_s: int) -> Path:
    """A live Matroska capture (no duration declared) of 2 s whose one picture, three quarters
    in, is stamped ``late_s`` later, the pictures after it on time again: a damaged time, not a
    pause, which without a declared length only the pictures after it tell."""
    return live_mkv_restamped(folder / name, 0,
                               lambda index: index + late_s * 30 if index == 45 else index)


def live_mkv_restamped(path: Path, sound_leap_s: int, stamp: Callable[[int], int],
                       dts_delay: int = 0) -> Path:
    """2 s of live Matroska (30 fps, no B-frames, so decode order is display order) whose
    picture ``index`` is stamped ``stamp(index)`` (in frames) and whose sound starts
    ``sound_leap_s`` on. ``dts_delay``: frames the decode times run behind, which lets a
    picture be stamped up to that many frames early (no earlier than its decode time)."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    encoder.time_base, encoder.framerate = Fraction(1, 30), Fraction(30)
    encoder.options = {"preset": "veryfast", "bf": "0"}
    packets = []
    for index, image in enumerate(_frames(WIDTH, HEIGHT, 60)):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts, frame.time_base = index, Fraction(1, 30)
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    with av.open(str(path), "w", container_options={"live": "1"}) as out:
        picture = out.add_stream("libx264", rate=30)
        picture.width, picture.height, picture.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        picture.codec_context.extradata = encoder.extradata
        sound = out.add_stream("aac", rate=48000, layout="stereo")
        for tone in media._tone_frames(2.0, 440.0, 48000, 2):
            tone.pts = (tone.pts or 0) + sound_leap_s * 48000
            out.mux(sound.encode(tone))
        out.mux(sound.encode(None))
        for index, packet in enumerate(packets):
            packet.stream, packet.time_base = picture, Fraction(1, 30)
            packet.dts = index - dts_delay
            packet.pts = stamp(index)
            out.mux(packet)
    return path


def corrupt_packets(folder: Path, name: str, share: float, seed: int,
                    zeroed: bool = False) -> Path:
    """Every video sample after the first GOP has a run of bytes overwritten with probability
    ``share``: damage the decoder must conceal or report, not crash on. With ``zeroed``, the
    whole sample is wiped instead (blocks a disk or a transfer lost), which no decoder gets
    past."""
    source = video(folder / f".{name}", seconds=2.0,
                   codec_options={"preset": "veryfast", "g": "30"})
    data = bytearray(source.read_bytes())
    rng = random.Random(seed)
    sizes = _sample_sizes(bytes(data))
    offset = find_box(bytes(data), b"mdat").payload
    # Samples are laid out in order in PyAV's MP4s (video and audio interleaved by chunks), so
    # walk the chunk table for the video track.
    for index, (start, size) in enumerate(_video_samples(bytes(data), sizes, offset)):
        hit = index >= 30 and rng.random() < share
        if hit and zeroed:
            data[start:start + size] = bytes(size)
        elif hit and size > 16:
            at = start + rng.randrange(4, size - 8)
            length = min(size - (at - start), rng.randrange(8, 64))
            data[at:at + length] = rng.randbytes(length)
    path = folder / name
    path.write_bytes(bytes(data))
    source.unlink()
    return path


def _sample_sizes(data: bytes) -> list[int]:
    stsz = find_box(data, b"stsz")  # the first track is the video
    _, _, count = struct.unpack_from(">III", data, stsz.payload)
    return list(struct.unpack_from(f">{count}I", data, stsz.payload + 12))


def _video_samples(data: bytes, sizes: list[int], mdat: int) -> Iterator[tuple[int, int]]:
    stco = find_box(data, b"stco")
    count = struct.unpack_from(">I", data, stco.payload + 4)[0]
    chunks = struct.unpack_from(f">{count}I", data, stco.payload + 8)
    stsc = find_box(data, b"stsc")
    entries = struct.unpack_from(">I", data, stsc.payload + 4)[0]
    table = [struct.unpack_from(">III", data, stsc.payload + 8 + 12 * i) for i in range(entries)]
    sample = 0
    for chunk_index, chunk_offset in enumerate(chunks, start=1):
        per_chunk = next(n for first, n, _ in reversed(table) if first <= chunk_index)
        offset = chunk_offset
        for _ in range(per_chunk):
            if sample >= len(sizes):
                return
            yield offset, sizes[sample]
            offset += sizes[sample]
            sample += 1


def huge_mp4(folder: Path) -> Path:
    """H.264 in MP4 whose SPS declares 8192x8192 (67 Mpixel): refused before any frame of that
    size is allocated (decoding it would take about 100 MB a frame)."""
    source = video(folder / ".small.mp4", audio=False)
    path = folder / "huge_dims.mp4"
    path.write_bytes(resize_mp4_sps(source.read_bytes(), 8192, 8192))
    source.unlink()
    return path


def huge_ts(folder: Path) -> Path:
    """The same in MPEG-TS, whose streams are found while reading packets."""
    source = video(folder / ".small.ts", audio=False)
    path = folder / "huge_dims.ts"
    path.write_bytes(rewrite_annexb_sps(source.read_bytes(), (8192, 8192)))
    source.unlink()
    return path


def huge_h264(folder: Path) -> Path:
    """The same as a raw H.264 stream (the ``h264`` demuxer is allowed)."""
    source = video(folder / ".small.h264", audio=False, container_format="h264")
    path = folder / "huge_dims.h264"
    path.write_bytes(rewrite_annexb_sps(source.read_bytes(), (8192, 8192)))
    source.unlink()
    return path


def long_duration(folder: Path) -> Path:
    """One second of video whose MP4 sample table says each frame lasts 2.6 hours (77 hours in
    all): headers say so too, and the edit list that would cut it short is gone."""
    data = bytearray(video(folder / ".short.mp4", audio=False).read_bytes())
    stts = find_box(bytes(data), b"stts")
    count = struct.unpack_from(">I", data, stts.payload + 4)[0]
    timescale = struct.unpack_from(">I", data, find_box(bytes(data), b"mdhd").payload + 12)[0]
    frames = sum(struct.unpack_from(">I", data, stts.payload + 8 + 8 * i)[0]
                 for i in range(count))
    delta = 77 * 3600 * timescale // frames
    for i in range(count):
        struct.pack_into(">I", data, stts.payload + 12 + 8 * i, delta)
    for box in find_boxes(bytes(data), b"edts"):
        data[box.offset + 4:box.offset + 8] = b"free"
    # FFmpeg takes the smaller of the sample table's sum and the media header's duration
    # (all ones means "unknown" there).
    for kind, at in ((b"mdhd", 16), (b"mvhd", 16), (b"tkhd", 20)):
        for box in find_boxes(bytes(data), kind):
            assert data[box.payload] == 0, "a version 1 box"
            struct.pack_into(">I", data, box.payload + at, 0xFFFFFF00)
    path = folder / "long_duration.mp4"
    path.write_bytes(bytes(data))
    (folder / ".short.mp4").unlink()
    return path


def bogus_last_duration(folder: Path) -> Path:
    """One second of video whose sample table says the last frame alone lasts 10 hours; the
    headers still say one second (FFmpeg takes the smaller)."""
    # The last frame lasts two frames, so the sample table gives it its own entry.
    short = media.make_still_ending_video(folder / ".short.mp4", seconds=1.0,
                                          hold_seconds=1 / 30, audio=False)
    data = bytearray(short.read_bytes())
    stts = find_box(bytes(data), b"stts")
    count = struct.unpack_from(">I", data, stts.payload + 4)[0]
    last = stts.payload + 8 + 8 * (count - 1)
    assert struct.unpack_from(">I", data, last)[0] == 1, "the last entry is not one frame"
    timescale = struct.unpack_from(">I", data, find_box(bytes(data), b"mdhd").payload + 12)[0]
    struct.pack_into(">I", data, last + 4, 10 * 3600 * timescale)
    path = folder / "bogus_last_duration.mp4"
    path.write_bytes(bytes(data))
    (folder / ".short.mp4").unlink()
    return path


def unknown_codec(folder: Path) -> Path:
    """The video sample entry renamed to a codec tag nothing decodes."""
    data = bytearray(video(folder / ".known.mp4", audio=False).read_bytes())
    entry = find_box(bytes(data), b"avc1")
    data[entry.offset + 4:entry.offset + 8] = b"zzzz"
    path = folder / "unknown_codec.mp4"
    path.write_bytes(bytes(data))
    (folder / ".known.mp4").unlink()
    return path


def no_samples(folder: Path) -> Path:
    """A video track that lists no frames at all (every sample table emptied)."""
    data = bytearray(video(folder / ".full.mp4", audio=False).read_bytes())
    for kind in (b"stsz", b"stco", b"stsc", b"stts", b"stss", b"ctts"):
        for box in find_boxes(bytes(data), kind):
            count_at = box.payload + (8 if kind == b"stsz" else 4)
            struct.pack_into(">I", data, count_at, 0)
    path = folder / "no_samples.mp4"
    path.write_bytes(bytes(data))
    (folder / ".full.mp4").unlink()
    return path


def fragmented(folder: Path, name: str = "fragmented.mp4") -> Path:
    """Fragmented MP4 (a browser's or a phone's live recording): an empty index up front, then
    a fragment per 0.5 s GOP, each listing its own frames."""
    return video(folder / name, seconds=2.0, codec_options={"preset": "veryfast", "g": "15"},
                 container_options={"movflags": "+frag_keyframe+empty_moov+default_base_moof"})


def cut_fragmented(folder: Path) -> Path:
    """Fragmented MP4 cut in the media of its last video fragment: that fragment's index still
    lists its frames. It used to complete with fewer frames."""
    whole = fragmented(folder, ".whole-frag.mp4")
    data = whole.read_bytes()
    video_data = [box for box in find_boxes(data, b"mdat") if box.size > 4096][-1]
    path = folder / "cut_fragmented.mp4"
    path.write_bytes(data[:video_data.payload + (video_data.size - video_data.header) // 2])
    whole.unlink()
    return path


def _track_id(data: bytes | bytearray, traf: Box) -> int:
    """The track a fragment's track box (``traf``) holds samples of: its ``tfhd``'s track ID."""
    tfhd = next(b for b in boxes(bytes(data), traf.payload, traf.end) if b.kind == b"tfhd")
    return int(struct.unpack_from(">I", data, tfhd.payload + 4)[0])


def cut_fragmented_few(folder: Path, missing: int = 4) -> Path:
    """Fragmented MP4 cut where its last video fragment's last ``missing`` frames were: with
    B-frames, the packets left still reach the end of the video, which once passed for whole."""
    whole = fragmented(folder, ".whole-frag.mp4")
    data = whole.read_bytes()
    whole.unlink()
    moof = find_boxes(data, b"moof")[-1]
    traf = next(b for b in boxes(data, moof.payload, moof.end)
                if b.kind == b"traf" and _track_id(data, b) == 1)
    trun = next(b for b in boxes(data, traf.payload, traf.end) if b.kind == b"trun")
    flags, count, data_offset = struct.unpack_from(">IIi", data, trun.payload)
    assert flags & 0x001 and flags & 0x200  # a data offset, and each sample's size
    # Each sample's fields: duration, size, flags, composition offset, those the flags name.
    fields = [field for field in (0x100, 0x200, 0x400, 0x800) if flags & field]
    first = trun.payload + 12 + 4 * bool(flags & 0x004)
    sizes = [struct.unpack_from(">I", data, first + 4 * (len(fields) * i + fields.index(0x200)))[0]
             for i in range(count)]
    path = folder / "cut_fragmented_few.mp4"
    path.write_bytes(data[:moof.offset + data_offset + sum(sizes[:count - missing])])
    return path


def fragments_hours_in(folder: Path, hours: int = 10) -> Path:
    """Fragmented MP4 whose fragments start ``hours`` in (fragments kept from a long live
    stream): each track's first decode time, in its own time scale, moved that far."""
    data = bytearray(fragmented(folder, ".whole-frag.mp4").read_bytes())
    (folder / ".whole-frag.mp4").unlink()
    scales = {}
    for trak in find_boxes(bytes(data), b"trak"):
        inner = list(boxes(bytes(data), trak.payload, trak.end))
        tkhd, mdhd = (next(b for b in inner if b.kind == kind) for kind in (b"tkhd", b"mdhd"))
        wide = [data[tkhd.payload] == 1, data[mdhd.payload] == 1]
        track = struct.unpack_from(">I", data, tkhd.payload + (20 if wide[0] else 12))[0]
        scales[track] = struct.unpack_from(">I", data, mdhd.payload + (20 if wide[1] else 12))[0]
    for traf in find_boxes(bytes(data), b"traf"):
        tfdt = next(b for b in boxes(bytes(data), traf.payload, traf.end) if b.kind == b"tfdt")
        shift = hours * 3600 * scales[_track_id(data, traf)]
        field = ">Q" if data[tfdt.payload] == 1 else ">I"
        base = struct.unpack_from(field, data, tfdt.payload + 4)[0]
        struct.pack_into(field, data, tfdt.payload + 4, base + shift)
    path = folder / "fragments_hours_in.mp4"
    path.write_bytes(bytes(data))
    return path


#: FLV tag types.
_FLV_AUDIO, _FLV_VIDEO = 8, 9


def flv_stamped_late(folder: Path, name: str, late_ms: int, sound_too: bool = False) -> Path:
    """2 s of FLV (its header says 2 s) whose one video frame, three quarters in, is stamped
    ``late_ms`` later (with ``sound_too``, the audio frame after it too): damaged timestamps,
    the frames after them on time again."""
    whole = video(folder / f".{name}", seconds=2.0)
    data = bytearray(whole.read_bytes())
    whole.unlink()
    tags, at = [], 13  # the FLV header and the first previous-tag size
    while at + 11 <= len(data):  # a tag: type, 24-bit size, 24-bit time and its top 8 bits
        tags.append(at)
        at += 11 + int.from_bytes(data[at + 1:at + 4], "big") + 4
    pictures = [tag for tag in tags if data[tag] == _FLV_VIDEO]
    late = [pictures[len(pictures) * 3 // 4]]
    if sound_too:
        late.append(next(tag for tag in tags if tag > late[0] and data[tag] == _FLV_AUDIO))
    for tag in late:
        stamp = int.from_bytes(data[tag + 4:tag + 7], "big") + (data[tag + 7] << 24) + late_ms
        data[tag + 4:tag + 7] = (stamp & 0xFFFFFF).to_bytes(3, "big")
        data[tag + 7] = stamp >> 24
    path = folder / name
    path.write_bytes(bytes(data))
    return path


def truncated_mkv(folder: Path) -> Path:
    """Matroska cut off half way (an interrupted upload); its header still tags the video's
    duration. It used to complete as a video half as long."""
    whole = video(folder / ".whole.mkv", seconds=2.0)
    path = folder / "truncated.mkv"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    return path


def damaged_mkv(folder: Path) -> Path:
    """Matroska whole to its end, with 4 KiB of zeros a third of the way in (a bad sector): the
    demuxer stops there. It was refused as truncated, which a new upload would not mend."""
    path = video(folder / "damaged.mkv", seconds=3.0)
    data = bytearray(path.read_bytes())
    data[len(data) // 3:len(data) // 3 + 4096] = bytes(4096)
    path.write_bytes(bytes(data))
    return path


def still_with_sound(folder: Path) -> Path:
    """One JPEG picture in an MP4, not flagged as a cover, beside 3 s of sound: a song made a
    "video" by copying its cover in (``ffmpeg -i cover.jpg -i song.mp3 -c copy``)."""
    cover = media.make_still_image(folder / ".cover.jpg", width=WIDTH, height=HEIGHT)
    sound = video(folder / ".sound.mp4", seconds=3.0)
    path = folder / "still_with_sound.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(cover), "-i",
                    str(sound), "-map", "0:v", "-map", "1:a", "-c", "copy", str(path)],
                   check=True)
    cover.unlink()
    sound.unlink()
    return path


def still_in_mov(folder: Path) -> Path:
    """One PNG picture in a QuickTime file: a video container, but a still image."""
    path = folder / "still_in.mov"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "rgb24"
        image = next(_frames(WIDTH, HEIGHT, 1))
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


#: Animated picture formats: PyAV's encoder, the muxer, and the pixel format it takes.
_ANIMATIONS = {"gif": ("gif", "gif", "rgb8"), "png": ("apng", "apng", "rgb24"),
               "webp": ("libwebp_anim", "webp", "yuv420p")}


def animation(folder: Path, kind: str = "gif", frames: int = 5) -> Path:
    """``frames`` pictures at 10 fps in an animated picture format (``kind``: gif, png, webp)."""
    codec, muxer, pix_fmt = _ANIMATIONS[kind]
    path = folder / f"{'animated' if frames > 1 else 'still'}.{kind}"
    with av.open(str(path), "w", format=muxer) as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 90, pix_fmt
        for index, image in enumerate(_frames(160, 90, frames)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def jpeg_named_mp4(folder: Path) -> Path:
    still = media.make_still_image(folder / ".still.jpg", width=WIDTH, height=HEIGHT)
    path = folder / "photo.mp4"
    still.rename(path)
    return path


def odd_real_size(folder: Path) -> Path:
    """1917x1079, a real odd size (4:4:4 H.264 allows odd sizes; 4:2:0 cannot have them)."""
    return media.make_video(folder / "odd_1917x1079.mp4", width=1917, height=1079,
                            seconds=0.2, pix_fmt="yuv444p", audio=False,
                            codec_options={"preset": "ultrafast"})


def interlaced(folder: Path) -> Path:
    return video(folder / "interlaced.mp4",
                 codec_options={"preset": "veryfast", "x264-params": "interlaced=1:tff=1"})


def interlaced_ts_late(folder: Path) -> Path:
    """Interlaced video with audio in MPEG-TS whose clock starts 100 s in, as the ffmpeg CLI
    muxes it (broadcast, DVD and camcorder files): audio is written ahead of the video, and
    decodes while the deinterlacer still holds the first picture back."""
    coded = video(folder / ".interlaced_late.mp4", seconds=2.0,
                  codec_options={"preset": "veryfast", "x264-params": "interlaced=1:tff=1"})
    path = folder / "interlaced_late.ts"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(coded), "-c",
                    "copy", "-output_ts_offset", "100", str(path)], check=True)
    coded.unlink()
    return path


def xvid_packed_bframes(folder: Path) -> Path:
    """Xvid in AVI with B-frames, as the ffmpeg CLI's libxvid writes it: "packed" B-frames,
    each stored with the P-frame before it and a placeholder in its own place (libxvid leaves
    out the last two of the 60 frames)."""
    coded = video(folder / ".xvid.mp4", seconds=2.0)
    path = folder / "xvid_packed_bframes.avi"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(coded), "-c:v",
                    "libxvid", "-bf", "2", "-q:v", "4", "-c:a", "libmp3lame", str(path)],
                   check=True)
    coded.unlink()
    return path


def raw_dv(folder: Path) -> Path:
    """A raw DV stream (a MiniDV camcorder's capture, .dv): PAL, interlaced, PCM sound."""
    path = folder / "raw.dv"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=s=720x576:r=25:d=1", "-f", "lavfi", "-i", "sine=r=48000:d=1",
                    "-c:v", "dvvideo", "-pix_fmt", "yuv420p", "-c:a", "pcm_s16le", "-ac", "2",
                    "-f", "dv", str(path)], check=True)
    return path


def raw_y4m(path: Path, width: int = WIDTH, height: int = HEIGHT, seconds: float = 1.0) -> Path:
    """A Y4M file (YUV4MPEG2: a text header, then uncompressed frames), as video tools write a
    lossless master; no sound."""
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    f"testsrc2=s={width}x{height}:r=30000/1001:d={seconds}", "-pix_fmt",
                    "yuv420p", str(path)], check=True)
    return path


def starts_late(folder: Path) -> Path:
    """Video and audio whose first timestamps are 3 s in (an edit list in MP4)."""
    return write_streams(folder / "starts_late.mp4", video_pts=list(range(90, 120)),
                         time_base=Fraction(1, 30), audio=[(48000, 2, 1.0, 3 * 48000)])


def starts_before_zero(folder: Path) -> Path:
    """Matroska whose first 1.5 s lie before its start (cut from a longer recording): the
    demuxer gives those frames no timestamp. Rungs used to start the timeline a frame late,
    miss the first segment's cut, and list a rung with no segment in the master (then crash)."""
    return write_streams(folder / "starts_before_zero.mkv", video_pts=list(range(-45, 45)),
                         time_base=Fraction(1, 30), container_options={
                             "avoid_negative_ts": "disabled"})


def jump_forward(folder: Path) -> Path:
    """Timestamps jump 2 s forward half way (a camera paused)."""
    pts = [*range(15), *range(75, 90)]
    return write_streams(folder / "jump_forward.mp4", video_pts=pts, time_base=Fraction(1, 30),
                         audio=[(48000, 2, 1.0, 0)])


def audio_runs(path: Path, video_pts: list[int], runs: list[tuple[float, int]], *,
               sound_stored_last: bool = False) -> Path:
    """Video frames at ``video_pts`` (in 1/30 s) and one AAC stream of tone runs, each
    ``(seconds, first sample)``: audio whose timestamps leave gaps between the runs.
    ``sound_stored_last``: every sound packet after every picture in the file, not
    interleaved by time (some editors' MP4s)."""
    rate = 48000
    # The muxer holds packets back to interleave them by time, unless told to wait 1 us.
    options = {"max_interleave_delta": "1"} if sound_stored_last else {}
    with av.open(str(path), "w", options=options) as out:
        video = out.add_stream("libx264", rate=30, options={"preset": "veryfast"})
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.codec_context.time_base = Fraction(1, 30)
        sound = out.add_stream("aac", rate=rate, layout="stereo")

        def mux_sound() -> None:
            for seconds, start in runs:
                for tone in media._tone_frames(seconds, 440.0, rate, 2):
                    tone.pts = (tone.pts or 0) + start
                    out.mux(sound.encode(tone))
            out.mux(sound.encode(None))

        if not sound_stored_last:
            mux_sound()
        for when, image in zip(video_pts, _frames(WIDTH, HEIGHT, len(video_pts)), strict=True):
            picture = av.VideoFrame.from_ndarray(image, format="rgb24")
            picture.pts, picture.time_base = when, Fraction(1, 30)
            out.mux(video.encode(picture))
        out.mux(video.encode(None))
        if sound_stored_last:
            mux_sound()
    return path


def paused_recording(folder: Path) -> Path:
    """MPEG-TS of a recording paused for 2 s after 1 s (a camera's pause button): video and
    audio timestamps both jump. Audio laid end to end used to play 2 s early after the pause."""
    return audio_runs(folder / "paused.ts", [*range(30), *range(90, 120)],
                      [(1.0, 0), (1.0, 3 * 48000)])


def sound_starts_late(folder: Path) -> Path:
    """MP4 whose sound begins 1 s after its picture (a capture whose audio joined late)."""
    return audio_runs(folder / "sound_starts_late.mp4", list(range(60)), [(1.0, 48000)])


def audio_jumps_hours(folder: Path) -> Path:
    """Matroska whose audio timestamps jump 3 h ahead half way through a 1 s video (a broken
    clock, not a pause): closed up, not filled with 3 h of silence."""
    return audio_runs(folder / "audio_jumps_hours.mkv", list(range(30)),
                      [(0.5, 0), (0.5, 3 * 3600 * 48000)])


def pts_wrap(folder: Path) -> Path:
    """MPEG-TS whose 33-bit timestamps wrap around half way through."""
    start = 2**33 - 45000  # 0.5 s before the wrap, in 1/90000 s
    pts = [start + 3000 * i for i in range(30)]
    return write_streams(folder / "pts_wrap.ts", video_pts=pts, time_base=Fraction(1, 90000),
                         audio=[(48000, 2, 1.0, start * 48000 // 90000)])


def concatenated_ts(folder: Path) -> Path:
    """Two recordings' MPEG-TS bytes one after the other: timestamps go back to the start."""
    first = video(folder / ".first.ts")
    second = video(folder / ".second.ts", seed=1)
    path = folder / "concatenated.ts"
    path.write_bytes(first.read_bytes() + second.read_bytes())
    first.unlink()
    second.unlink()
    return path


def resolution_change(folder: Path) -> Path:
    """MPEG-TS whose picture size changes half way (320x180, then 256x144)."""
    return _joined_ts(folder / "resolution_change.ts", (256, 144))


def shape_change(folder: Path) -> Path:
    """MPEG-TS of a landscape clip (320x180) and then a portrait one (180x320): clips of both
    shapes joined into one upload."""
    return _joined_ts(folder / "shape_change.ts", (HEIGHT, WIDTH))


def one_pixel_high(folder: Path) -> Path:
    """PNG video in QuickTime, 4x1 pixels for half a second and then 8x1: a picture too thin
    to fit into the first one's size with bars above and below it."""
    path = folder / "one_pixel_high.mov"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("png", rate=30)
        stream.width, stream.height, stream.pix_fmt = 4, 1, "rgb24"
        for index in range(30):
            width = 4 if index < 15 else 8
            # Each size its own encoder: the stream's header keeps the first size.
            encoder = av.CodecContext.create("png", "w")
            encoder.width, encoder.height, encoder.pix_fmt = width, 1, "rgb24"
            encoder.time_base = Fraction(1, 30)
            picture = np.full((1, width, 3), index * 8, np.uint8)
            for packet in encoder.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                packet.stream = stream
                packet.pts = packet.dts = index
                packet.time_base = Fraction(1, 30)
                out.mux(packet)
    return path


def sample_aspect_part_way(folder: Path) -> Path:
    """MPEG-TS of a 320x180 clip and then a 256x144 one whose header declares a sample aspect
    ratio of 100:1 (damaged): no more believed part way than at the start."""
    return _joined_ts(folder / "sample_aspect_part_way.ts", (256, 144),
                      sample_aspect_ratio=Fraction(100))


def _joined_ts(path: Path, second_size: tuple[int, int], **second: Any) -> Path:
    """A 1 s MPEG-TS of the corpus size followed by a 1 s one of ``second_size`` (made with
    ``second``'s further arguments to :func:`video`)."""
    first = video(path.parent / ".first.ts")
    second_clip = video(path.parent / ".second.ts", width=second_size[0],
                        height=second_size[1], seed=1, **second)
    path.write_bytes(first.read_bytes() + second_clip.read_bytes())
    first.unlink()
    second_clip.unlink()
    return path


def thumbnail_stream_first(folder: Path) -> Path:
    """A small unflagged video stream before the main one, which the file flags as its
    default (a thumbnail or second-angle track): players and the ffmpeg CLI show the second."""
    small = video(folder / ".thumb.mp4", width=160, height=90, audio=False)
    main = video(folder / ".main.mp4", seed=1)
    path = folder / "thumbnail_first.mkv"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(small), "-i",
                    str(main), "-map", "0:v", "-map", "1:v", "-map", "1:a", "-c", "copy",
                    "-disposition:v:0", "0", "-disposition:v:1", "default", str(path)],
                   check=True)
    small.unlink()
    main.unlink()
    return path


def video_with_cover(folder: Path) -> Path:
    """An MP4 video that also carries a cover picture (a JPEG stream flagged attached_pic)."""
    main = video(folder / ".main.mp4")
    cover = media.make_still_image(folder / ".cover.jpg", width=320, height=180)
    path = folder / "video_with_cover.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(main), "-i",
                    str(cover), "-map", "0", "-map", "1", "-c", "copy",
                    "-disposition:v:1", "attached_pic", str(path)], check=True)
    main.unlink()
    cover.unlink()
    return path


def subtitled(folder: Path) -> Path:
    """Matroska with two SubRip subtitle tracks (English, French) beside picture and sound."""
    main = video(folder / ".main.mp4")
    tracks = []
    for language, text in (("eng", "Hello"), ("fre", "Bonjour")):
        track = folder / f".{language}.srt"
        track.write_text(f"1\n00:00:00,100 --> 00:00:00,900\n{text}\n")
        tracks.append(track)
    path = folder / "subtitled.mkv"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(main),
                    *(arg for track in tracks for arg in ("-i", str(track))),
                    "-map", "0", "-map", "1", "-map", "2", "-c", "copy", "-c:s", "srt",
                    "-metadata:s:s:0", "language=eng", "-metadata:s:s:1", "language=fre",
                    str(path)], check=True)
    for leftover in (main, *tracks):
        leftover.unlink()
    return path


def subtitles_in_pictures(folder: Path) -> Path:
    """A DVD subtitle track (a packet of garbage: nothing decodes it here) beside a SubRip one."""
    main = video(folder / ".main.mp4")
    path = media.make_subtitled(main, folder / "subtitles_in_pictures.mkv", [
        media.SubtitleSpec([(0.2, 0.8, b"\x00\x10not a picture")], codec="dvdsub"),
        media.SubtitleSpec([(0.2, 0.8, "Words")], language="eng")])
    main.unlink()
    return path


def subtitle_cue_not_utf8(folder: Path) -> Path:
    """A SubRip track whose first cue is Latin-1 bytes, its second UTF-8."""
    main = video(folder / ".main.mp4")
    path = media.make_subtitled(main, folder / "subtitle_cue_not_utf8.mkv", [
        media.SubtitleSpec([(0.1, 0.5, "Caf\u00e9 cr\u00e8me".encode("latin-1")),
                            (0.6, 0.9, "Fine")])])
    main.unlink()
    return path


def subtitles_hours_late(folder: Path) -> Path:
    """Picture and sound from 2 s on the file's clock; cues at 1.5-2.5 s and 10 hours on."""
    main = video(folder / ".main.mp4")
    path = media.make_subtitled(main, folder / "subtitles_hours_late.mkv", [
        media.SubtitleSpec([(1.5, 2.5, "Early"), (36_000.0, 36_001.0, "Late")],
                           language="eng")], shift_s=2.0)
    main.unlink()
    return path


def subtitles_before_picture(folder: Path) -> Path:
    """Picture and sound from 2 s on the file's clock; the only cue at 0.5-1.5 s."""
    main = video(folder / ".main.mp4")
    path = media.make_subtitled(main, folder / "subtitles_before_picture.mkv", [
        media.SubtitleSpec([(0.5, 1.5, "Gone")], language="eng")], shift_s=2.0)
    main.unlink()
    return path


#: A language "tag" of a thousand variants: langcodes' parser recurses once per subtag.
DEEP_LANGUAGE = "en-" + "-".join(["abcde"] * 1000)


def language_tags_deep(folder: Path) -> Path:
    """Sound and a SubRip track whose language tags are :data:`DEEP_LANGUAGE` (6 kB)."""
    main = video(folder / ".main.mp4")
    path = folder / "language_tags_deep.mkv"
    media.make_subtitled(main, folder / ".subtitled.mkv", [
        media.SubtitleSpec([(0.2, 0.8, "Words")], language=DEEP_LANGUAGE)])
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i",
                    str(folder / ".subtitled.mkv"), "-map", "0", "-c", "copy",
                    "-metadata:s:a:0", f"language={DEEP_LANGUAGE}", str(path)], check=True)
    for leftover in (main, folder / ".subtitled.mkv"):
        leftover.unlink()
    return path


def undecodable_audio_tracks(folder: Path) -> Path:
    """Two audio tracks, both with a Matroska codec ID nothing decodes (A_AAC made A_ZZZ)."""
    made = write_streams(folder / ".two_audio.mkv", video_pts=list(range(30)),
                         time_base=Fraction(1, 30), audio=[(48000, 2, 1.0, 0), (44100, 2, 1.0, 0)])
    data = made.read_bytes()
    assert data.count(b"A_AAC") == 2
    path = folder / "undecodable_audio_tracks.mkv"
    path.write_bytes(data.replace(b"A_AAC", b"A_ZZZ"))
    made.unlink()
    return path


def one_audio_track_undecodable(folder: Path) -> Path:
    """Two audio tracks, the first with a Matroska codec ID nothing decodes (A_AAC made A_ZZZ)."""
    made = write_streams(folder / ".one_undecodable.mkv", video_pts=list(range(30)),
                         time_base=Fraction(1, 30), audio=[(48000, 2, 1.0, 0), (44100, 2, 1.0, 0)])
    path = folder / "one_audio_track_undecodable.mkv"
    path.write_bytes(made.read_bytes().replace(b"A_AAC", b"A_ZZZ", 1))
    made.unlink()
    return path


def two_programmes(folder: Path) -> Path:
    """An MPEG-TS of two programmes, as a broadcast recording of a whole multiplex holds: the
    first a small picture with a 440 Hz tone, the second the corpus's picture with 880 Hz."""
    small = video(folder / ".small.mp4", width=160, height=90, tone_hz=440.0)
    main = video(folder / ".main.mp4", seed=1, tone_hz=880.0)
    path = folder / "two_programmes.ts"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(small), "-i",
                    str(main), "-map", "0:v", "-map", "0:a", "-map", "1:v", "-map", "1:a",
                    "-c", "copy", "-program", "title=one:st=0:st=1",
                    "-program", "title=two:st=2:st=3", str(path)], check=True)
    small.unlink()
    main.unlink()
    return path


def several_audio(folder: Path) -> Path:
    """Three audio tracks (stereo 48 kHz, 5.1 44.1 kHz, mono 22.05 kHz) with the video."""
    return write_streams(folder / "several_audio.mkv", video_pts=list(range(30)),
                         time_base=Fraction(1, 30),
                         audio=[(48000, 2, 1.0, 0), (44100, 6, 1.0, 0), (22050, 1, 1.0, 0)])


def default_audio_second(folder: Path) -> Path:
    """Two audio tracks, the first (a 440 Hz tone, German) flagged not default, the second (880 Hz,
    English) flagged default: a second-language track before the main one. Players play the
    second."""
    path = folder / "default_audio_second.mkv"
    tones = [video(folder / f".tone_{hz}.mp4", tone_hz=hz) for hz in (440.0, 880.0)]
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(tones[0]), "-i",
                    str(tones[1]), "-map", "0:v", "-map", "0:a", "-map", "1:a", "-c", "copy",
                    "-disposition:a:0", "0", "-disposition:a:1", "default",
                    "-metadata:s:a:0", "language=ger", "-metadata:s:a:1", "language=eng",
                    str(path)],
                   check=True)
    for tone in tones:
        tone.unlink()
    return path


def no_frame_rate(folder: Path) -> Path:
    """Raw H.264 with no timing information at all: no container timestamps, no VUI."""
    source = video(folder / ".timed.h264", audio=False, container_format="h264")
    path = folder / "no_frame_rate.h264"
    path.write_bytes(rewrite_annexb_sps(source.read_bytes(), None))
    source.unlink()
    return path


def unknown_audio_codec(folder: Path) -> Path:
    """The audio sample entry renamed to a codec tag nothing decodes: the video goes on alone."""
    data = bytearray(video(folder / ".with-audio.mp4").read_bytes())
    entry = find_box(bytes(data), b"mp4a")
    data[entry.offset + 4:entry.offset + 8] = b"zzzz"
    # FFmpeg would still find AAC from the elementary stream descriptor inside the entry.
    descriptor = data.find(b"esds", entry.offset, entry.end)
    data[descriptor:descriptor + 4] = b"zzzz"
    path = folder / "unknown_audio_codec.mp4"
    path.write_bytes(bytes(data))
    (folder / ".with-audio.mp4").unlink()
    return path


def audio_format_changes(folder: Path) -> Path:
    """MPEG-TS whose audio changes from 48 kHz stereo to 44.1 kHz 5.1 half way (spliced)."""
    first = video(folder / ".stereo.ts")
    second = video(folder / ".surround.ts", sample_rate=44100, channels=6, seed=1)
    path = folder / "audio_format_changes.ts"
    path.write_bytes(first.read_bytes() + second.read_bytes())
    first.unlink()
    second.unlink()
    return path


def fuzzed(folder: Path, name: str, seed_file: str, ops: list[Any]) -> Path:
    """An input the fuzzer found: its seed file, made as the fuzzer makes it, mutated."""
    from tests.fuzz import mutate  # tests.fuzz imports this module

    seed = dict(mutate.SEEDS)[seed_file](folder / f".seed-{name}{Path(seed_file).suffix}")
    path = folder / f"{name}{Path(seed_file).suffix}"
    path.write_bytes(mutate.apply(seed.read_bytes(), ops))
    seed.unlink()
    return path


def no_frame_rate_mkv(folder: Path) -> Path:
    """Matroska with irregular millisecond timestamps and no default duration."""
    durations = [33, 50, 17, 41, 33, 66, 25, 33, 45, 33] * 3
    pts = [sum(durations[:i]) for i in range(len(durations))]
    return write_streams(folder / "no_frame_rate.mkv", video_pts=pts,
                         time_base=Fraction(1, 1000), audio=[(48000, 2, 1.0, 0)])


# -- references outside the source root ----------------------------------------------------------


def hls_playlist(folder: Path, name: str, target: Path) -> Path:
    path = folder / name
    path.write_text("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n"
                    f"#EXTINF:2.0,\n{target}\n#EXTINF:2.0,\nfile://{target}\n#EXT-X-ENDLIST\n")
    return path


def concat_script(folder: Path, target: Path) -> Path:
    path = folder / "concat.ffconcat"
    path.write_text(f"ffconcat version 1.0\nfile '{target}'\nfile 'file:{target}'\n")
    return path


def sdp_file(folder: Path, target: Path) -> Path:
    path = folder / "session.sdp"
    # An SDP file makes FFmpeg open network sockets; a=x-... lines carry a path for good measure.
    path.write_text("v=0\no=- 0 0 IN IP4 127.0.0.1\ns=Rungs\nc=IN IP4 127.0.0.1\nt=0 0\n"
                    f"a=tool:{target}\nm=video 5004 RTP/AVP 96\na=rtpmap:96 H264/90000\n")
    return path


# -- the corpus ----------------------------------------------------------------------------------


def _dims(expected: list[tuple[int, int]]) -> Callable[[Output], None]:
    def check(output: Output) -> None:
        assert output.rungs == expected, output.rungs
    return check


def _audio(rate: int = 48000, channels: int = 2) -> Callable[[Output], None]:
    def check(output: Output) -> None:
        assert output.audio == (rate, channels), output.audio
    return check


def _subtitles(expected: dict[str, list[tuple[float, float, str]]]) -> Callable[[Output], None]:
    """The subtitle renditions listed, by name, with these cues (times within 1 ms)."""
    def check(output: Output) -> None:
        found = {name: [(round(start, 3), round(end, 3), text) for start, end, text in cues]
                 for name, cues in output.subtitles.items()}
        assert found == expected, found
    return check


def _audio_renditions(*expected: tuple[str, str, str, str]) -> Callable[[Output], None]:
    """The master lists these audio renditions, in this order: (NAME, LANGUAGE, DEFAULT, URI),
    and every one's playlist lists segments."""
    def check(output: Output) -> None:
        master = m3u8.load(str(output.out / "master.m3u8"))
        listed = [(m.name, m.language, m.default, m.uri) for m in master.media
                  if m.type == "AUDIO"]
        assert listed == list(expected), listed
        assert all(m3u8.load(str(output.out / uri)).segments for *_, uri in expected)
    return check


def _untagged_audio(count: int) -> Callable[[Output], None]:
    """The master lists ``count`` audio renditions with no name or language of their own."""
    return _audio_renditions(*((f"Audio {n}", "und", "NO" if n > 1 else "YES",
                                f"{'audio' if n == 1 else f'audio{n}'}/index.m3u8")
                               for n in range(1, count + 1)))


def _audio_language(tag: str) -> Callable[[Output], None]:
    """The master lists the audio rendition with this LANGUAGE."""
    def check(output: Output) -> None:
        master = m3u8.load(str(output.out / "master.m3u8"))
        assert [m.language for m in master.media if m.type == "AUDIO"] == [tag], master.media
    return check


def _no_audio(output: Output) -> None:
    assert output.audio is None, output.audio


def _frames_at_least(count: int) -> Callable[[Output], None]:
    def check(output: Output) -> None:
        assert output.frames >= count, output.frames
    return check


def _seconds_at_least(seconds: float) -> Callable[[Output], None]:
    def check(output: Output) -> None:
        assert output.seconds >= seconds, output.seconds
    return check


def _seconds_about(seconds: float) -> Callable[[Output], None]:
    def check(output: Output) -> None:
        assert abs(output.seconds - seconds) <= 0.1, output.seconds
    return check


def _published_sound(output: Output, folder: str = "audio") -> tuple[np.ndarray, int]:
    """An audio rendition's first channel, decoded segment by segment, and its sample rate."""
    samples, rate = [], 0
    for _, blob in _segments(output.out / folder / "index.m3u8"):
        with av.open(io.BytesIO(blob)) as container:
            for frame in container.decode(audio=0):
                samples.append(frame.to_ndarray()[0])
                rate = frame.sample_rate
    return np.concatenate(samples), rate


def _audio_tones(*hz: float, folder: str = "audio") -> Callable[[Output], None]:
    """The published audio (in ``folder``), cut into ``len(hz)`` equal parts, has each part's
    loudest frequency at its ``hz`` (within 5%; a tenth of each part at either end is left out,
    where the tones meet)."""
    def check(output: Output) -> None:
        sound, rate = _published_sound(output, folder)
        part = len(sound) // len(hz)
        found = []
        for index in range(len(hz)):
            piece = sound[index * part + part // 10:(index + 1) * part - part // 10]
            found.append(np.argmax(np.abs(np.fft.rfft(piece))) * rate / len(piece))
        assert all(abs(f - h) <= 0.05 * h for f, h in zip(found, hz, strict=True)), found
    return check


def sound_begins_at(seconds: float) -> Callable[[Output], None]:
    """The published audio is silent until ``seconds`` (within 50 ms), then heard."""
    def check(output: Output) -> None:
        sound, rate = _published_sound(output)
        loud = np.flatnonzero(np.abs(sound) > 0.05)
        assert loud.size and abs(loud[0] / rate - seconds) <= 0.05, loud[:1] / rate
    return check


def _audio_seconds_about(seconds: float) -> Callable[[Output], None]:
    def check(output: Output) -> None:
        playlist = m3u8.load(str(output.out / "audio" / "index.m3u8"))
        listed = sum(segment.duration for segment in playlist.segments)
        assert abs(listed - seconds) <= 0.1, listed
    return check


def _audio_starts_with_video(output: Output) -> None:
    """The first audio sample plays with the first picture (as decoded, edit lists applied)."""
    def start(playlist: Path, kind: str) -> float:
        _, blob = next(_segments(playlist))
        with av.open(io.BytesIO(blob)) as container:
            frame = next(container.decode(**{kind: 0}))
        assert frame.time is not None
        return frame.time
    master = m3u8.load(str(output.out / "master.m3u8"))
    video_start = start(output.out / master.playlists[0].uri, "video")
    audio_start = start(output.out / "audio" / "index.m3u8", "audio")
    assert abs(audio_start - video_start) <= 0.05, (audio_start, video_start)


def _pillarboxed_from(seconds: float) -> Callable[[Output], None]:
    """The top rung shows texture across its whole width before ``seconds`` and, a few frames
    after it, a textured middle between black bars (a portrait picture kept in shape)."""
    def check(output: Output) -> None:
        top = m3u8.load(str(output.out / "master.m3u8")).playlists[-1]
        width = output.rungs[-1][0]
        edges = np.r_[0:width // 5, width - width // 5:width]
        middle = slice(2 * width // 5, 3 * width // 5)
        before = after = 0
        start: float | None = None
        for _, blob in _segments(output.out / top.uri):
            with av.open(io.BytesIO(blob)) as container:
                for frame in container.decode(video=0):
                    luma = frame.to_ndarray(format="yuv420p")[: frame.height].astype(float)
                    assert frame.time is not None
                    start = frame.time if start is None else start
                    at = frame.time - start
                    if at < seconds - 0.1:
                        assert luma[:, edges].std() > 10, f"{at:.2f} s: no texture"
                        before += 1
                    elif at > seconds + 0.1:
                        bars = luma[:, edges]
                        assert abs(bars.mean() - 16) < 3 and bars.std() < 3, (
                            f"{at:.2f} s: edges {bars.mean():.1f} +- {bars.std():.1f}")
                        assert luma[:, middle].std() > 10, f"{at:.2f} s: no picture"
                        after += 1
        assert before and after, (before, after)
    return check


def _filled(output: Output) -> None:
    """Every frame of the top rung shows texture in its top and bottom fifths: no frame was
    fitted in with bars above and below it."""
    top = m3u8.load(str(output.out / "master.m3u8")).playlists[-1]
    frames = 0
    for _, blob in _segments(output.out / top.uri):
        with av.open(io.BytesIO(blob)) as container:
            for frame in container.decode(video=0):
                luma = frame.to_ndarray(format="yuv420p")[: frame.height].astype(float)
                fifth = frame.height // 5
                for rows in (luma[:fifth], luma[-fifth:]):
                    assert rows.std() > 10, f"{frame.time:.2f} s: bars above and below"
                frames += 1
    assert frames >= 60, frames


def _all(*checks: Callable[[Output], None]) -> Callable[[Output], None]:
    def check(output: Output) -> None:
        for each in checks:
            each(output)
    return check


LANDSCAPE = [(256, 144), (320, 180)]
PORTRAIT = [(144, 256), (180, 320)]
R, L, E = Expect.REFUSED, Expect.LADDER, Expect.EITHER
Maker = Callable[[Path, Path], Path]
"""Writes a case's file into the corpus folder (first argument) and returns its path; the
second argument is the trap: a named pipe outside the source root."""


@dataclass(frozen=True)
class Recipe:
    name: str
    make: Maker
    expect: Expect
    words: tuple[str, ...] = ()
    check: Callable[[Output], None] | None = None
    note: str = ""
    #: The file references the trap.
    trapped: bool = False
    notes: tuple[str, ...] = ()
    #: Notes that come and go from run to run: a fuzzed TS's job completed without its damaged
    #: packet's note once in a full suite's service run, where the CLI's run of the same file
    #: gave it (FFmpeg's frame-threaded decoder reports errors as its threads' timing falls, as
    #: far as can be told), so that case cannot pin the note down.
    may_note: tuple[str, ...] = ()


def _empty(folder: Path, trap: Path) -> Path:
    path = folder / "empty.mp4"
    path.write_bytes(b"")
    return path


def _fps(label: str, fps: Fraction) -> Recipe:
    return Recipe(f"fps_{label}",
                  lambda d, _: video(d / f"fps_{label.replace('.', '_')}.mp4", fps=fps), L,
                  check=_frames_at_least(round(float(fps)) - 1))


def _rotated(degrees: int) -> Recipe:
    return Recipe(f"rotated_{degrees}",
                  lambda d, _: video(d / f"rotated_{degrees}.mp4", rotation=degrees), L,
                  check=_dims(LANDSCAPE if degrees == 180 else PORTRAIT))


#: The note of a track whose sound ends before the picture: a damaged file's may lose its end.
_SILENCE_TO_THE_END = "before the picture: silence to its end"


#: Every case, in a fixed order. Names are test ids; files are unique within the corpus.
RECIPES: tuple[Recipe, ...] = (
    # Not media at all.
    Recipe("empty", _empty, R, ("empty",)),
    Recipe("random_bytes", lambda d, _: media.make_random_bytes(d / "random.mp4"), R,
           ("not a video",)),
    Recipe("text_named_mp4", lambda d, _: media.make_text_file(d / "notes.mp4"), R,
           ("not a video",)),
    Recipe("jpeg_named_mp4", lambda d, _: jpeg_named_mp4(d), R, ("still image (jpeg)",),
           note="the image demuxers are not on the allow-list; the error names the format"),
    Recipe("still_png", lambda d, _: media.make_still_image(d / "still.png", width=WIDTH,
                                                            height=HEIGHT), R,
           ("still image (png)",)),
    Recipe("still_gif", lambda d, _: animation(d, frames=1), R, ("still image",)),
    Recipe("still_in_mov", lambda d, _: still_in_mov(d), R, ("still image",)),
    Recipe("still_with_sound", lambda d, _: still_with_sound(d), L,
           check=_all(_dims(LANDSCAPE), _seconds_about(3.0), _audio_seconds_about(3.0)),
           note="it was refused as a still image, though the same in Matroska played",
           notes=("the sound goes on",)),
    Recipe("truncated_mkv", lambda d, _: truncated_mkv(d), R, ("truncated",)),
    Recipe("damaged_mkv", lambda d, _: damaged_mkv(d), R,
           ("is damaged", "could be read only to", "of the way into the file")),
    Recipe("mkv_ten_hours_in",
           lambda d, _: write_streams(d / "ten_hours_in.mkv",
                                      video_pts=list(range(1080000, 1080030)),
                                      time_base=Fraction(1, 30), audio=[(48000, 2, 1.0, 0)]),
           L, check=_all(_frames_at_least(30), _seconds_about(1.0)),
           note="timestamps from 10 h in: its DURATION tags say where it ends (not a cut file, "
                "nor one longer than the 6 h limit)",
           notes=("before its first picture",)),
    Recipe("mjpeg_in_mkv", lambda d, _: video(d / "mjpeg.mkv", codec="mjpeg", pix_fmt="yuvj420p",
                                              codec_options={}), L,
           check=_all(_dims(LANDSCAPE), _frames_at_least(30)),
           note="Matroska counts no frames: MJPEG in it was taken for a still image"),
    Recipe("animated_gif", lambda d, _: animation(d), L,
           check=_all(_frames_at_least(5), _seconds_about(0.5), _no_audio),
           note="an animation people upload as a video"),
    Recipe("animated_png", lambda d, _: animation(d, "png"), L,
           check=_all(_frames_at_least(5), _seconds_about(0.5), _no_audio),
           note="APNG: it was refused as a still image (PNG)"),
    Recipe("animated_webp", lambda d, _: animation(d, "webp"), R, ("animated webp",),
           note="PyAV's FFmpeg cannot decode one: it was called a still image"),
    Recipe("audio_only", lambda d, _: media.make_audio_only(d / "audio_only.m4a", seconds=1.0),
           R, ("no video stream",)),
    Recipe("audio_with_cover",
           lambda d, _: media.make_audio_only(d / "song.mp4", seconds=1.0, cover=True), R,
           ("only a cover picture",), note="FFmpeg shows album art as a one-picture video"),
    # Cut off and damaged.
    Recipe("cut_mid_gop", lambda d, _: cut_mid_gop(d), R, ("truncated",),
           note="index first: the index promises frames that never arrived (found at the end "
                "of decoding, so the service fails the job rather than refusing the request)"),
    Recipe("cut_in_moov", lambda d, _: cut_in_moov(d), R, ("truncated", "index", "cut off"),
           note="FFmpeg found no decodable frame"),
    Recipe("cut_before_moov", lambda d, _: cut_before_moov(d), R,
           ("truncated", "index", "never arrived"),
           note="FFmpeg's \"invalid data found when processing input\" named no cause"),
    Recipe("recording_never_finished", lambda d, _: recording_never_finished(d), R,
           ("truncated", "never arrived")),
    Recipe("media_box_size_damaged", lambda d, _: media_box_size_damaged(d), R,
           ("not a video file ffmpeg can read",)),
    Recipe("cut_avi", lambda d, _: cut_avi(d), R, ("truncated",)),
    Recipe("cut_avi_late", lambda d, _: cut_avi_late(d), R, ("truncated",),
           note="completed as a 1.8 s video: the packets reached the duration FFmpeg guessed"),
    Recipe("fragmented", lambda d, _: fragmented(d), L,
           check=_all(_frames_at_least(60), _seconds_about(2.0))),
    Recipe("fragments_ten_hours_in", lambda d, _: fragments_hours_in(d), L,
           check=_all(_frames_at_least(60), _seconds_about(2.0), _audio_seconds_about(2.0)),
           note="FFmpeg gives a fragmented MP4's duration as where its last fragment ends: "
                "it was refused as lasting 10 hours"),
    Recipe("cut_fragmented", lambda d, _: cut_fragmented(d), R, ("truncated",),
           note="its last fragment's index lists frames the cut took off"),
    Recipe("cut_fragmented_few", lambda d, _: cut_fragmented_few(d), R, ("truncated",),
           note="4 frames of 60 cut off; with B-frames the packets left still reach the end"),
    *(Recipe(f"whole_{kind}", lambda d, _, kind=kind: sized(d, kind), L,
             check=_all(_frames_at_least(50), _seconds_about(2.0))) for kind in _SIZED),
    *(Recipe(f"cut_{kind}", lambda d, _, kind=kind: sized(d, kind, 0.5), R,
             ("truncated", "header says"),
             note="the demuxer stops at the cut and FFmpeg's duration may be an estimate: "
                  "it completed as a video half as long") for kind in _SIZED),
    Recipe("whole_ogg", lambda d, _: ogg(d), L,
           check=_all(_frames_at_least(55), _seconds_about(2.0), _audio_seconds_about(2.0))),
    *(Recipe(f"cut_ogg_{cut}", lambda d, _, cut=cut: ogg(d, cut), R, ("truncated", words),
             note="Ogg declares no length: it completed as a video half as long")
      for cut, words in (("mid", "ends inside an ogg page"),
                         ("page", "does not end the stream"),
                         ("next", "ends inside an ogg page"))),
    Recipe("flv_frame_an_hour_late",
           lambda d, _: flv_stamped_late(d, "frame_an_hour_late.flv", 3_600_000), L,
           check=_all(_frames_at_least(60), _seconds_about(2.0), _audio_seconds_about(2.0)),
           note="the gap up to the damaged time was filled: a 2 s video came out an hour long"),
    Recipe("flv_frame_weeks_late",
           lambda d, _: flv_stamped_late(d, "frame_weeks_late.flv", 2**31 - 1), L,
           check=_all(_frames_at_least(60), _seconds_about(2.0)),
           note="refused as lasting more than the 6 h limit (the fuzzer: 'plain.flv')"),
    Recipe("live_mkv_frame_hours_late",
           lambda d, _: video_frame_late(d, "live_frame_hours_late.mkv", 5 * 3600), L,
           check=_all(_frames_at_least(60), _seconds_about(2.0), _audio_seconds_about(2.0)),
           note="no declared length to judge by: the 2 s video came out 5 hours long"),
    Recipe("live_mkv_frame_weeks_late",
           lambda d, _: video_frame_late(d, "live_frame_weeks_late.mkv", 4_278_190), L,
           check=_all(_frames_at_least(60), _seconds_about(2.0)),
           note="refused as lasting more than the 6 h limit (the fuzzer: 'plain.wmv')"),
    Recipe("cut_ts", lambda d, _: cut_ts(d), L, check=_dims(LANDSCAPE),
           note="no index in MPEG-TS: the frames that arrived make the video"),
    Recipe("ts_after_its_keyframe", lambda d, _: ts_after_its_keyframe(d), R,
           ("no picture that can be decoded", "cut after its last keyframe")),
    Recipe("audio_clock_leap", lambda d, _: audio_clock_leap(d), L,
           check=_all(_seconds_about(2.0), _audio_seconds_about(2.0)),
           note="no duration declared, so nothing bounded the silence filled up to the sound "
                "10 hours ahead: the job never ended; the sound now goes on where it was"),
    Recipe("video_clock_back", lambda d, _: video_clock_back(d), L,
           check=_all(_seconds_about(2.0), _audio_seconds_about(2.0), _audio_tones(440.0)),
           note="no duration declared, and the picture's clock goes 10 hours back after 1 s "
                "while the sound's runs on: the sound after it was placed 10 hours in, with "
                "silence led up to it (found by the fuzzer); it now goes on where it was"),
    Recipe("audio_starts_hours_late", lambda d, _: audio_clock_leap(d, after_s=0), L,
           check=_all(_seconds_about(2.0), _audio_seconds_about(2.0),
                      _audio_starts_with_video),
           note="sound stamped 10 hours in from its first frame, with no duration declared: "
                "taken for a damaged clock and started with the picture, not led in with 10 "
                "hours of silence"),
    # Joined recordings whose clocks jump: the pieces play one after the other.
    Recipe("ts_splice_ahead", lambda d, _: spliced_ts(d, "splice_ahead.ts", (0, 3600)), L,
           check=_all(_seconds_about(2.0), _frames_at_least(60), _audio_tones(440.0, 880.0)),
           note="the second piece's clock is an hour ahead: joined (it used to make an hour of "
                "one still picture)"),
    Recipe("ts_splice_back", lambda d, _: spliced_ts(d, "splice_back.ts", (100, 0)), L,
           check=_all(_seconds_about(2.0), _frames_at_least(60), _audio_tones(440.0, 880.0)),
           note="the clock goes back 101 s, which FFmpeg reads as a wrap 26 hours ahead (the "
                "source used to be refused as lasting 95 000 s)"),
    Recipe("corrupt_packets",
           lambda d, _: corrupt_packets(d, "corrupt_packets.mp4", 0.15, 1), L,
           check=_frames_at_least(55),
           note="decoding goes on: the decoder conceals damaged frames, packets it cannot "
                "decode are skipped (more than 20% of them fails the job: DECODE_FAILED)",
           notes=("damaged video packet",)),
    Recipe("corrupt_everything",
           lambda d, _: corrupt_packets(d, "corrupt_everything.mp4", 1.0, 2), L,
           check=_frames_at_least(30),
           note="every frame after the first GOP damaged: still concealed, still a ladder",
           notes=("damaged video packet",)),
    Recipe("zeroed_packets",
           lambda d, _: corrupt_packets(d, "zeroed_packets.mp4", 0.5, 3, zeroed=True), R,
           ("too damaged", "zeroed_packets.mp4"),
           note="half the frames after the first GOP wiped: the job fails DECODE_FAILED once "
                "more than 20% of the packets have not decoded; bad input, so exit 2"),
    Recipe("unknown_codec", lambda d, _: unknown_codec(d), R, ("codec",)),
    Recipe("no_samples", lambda d, _: no_samples(d), R, ("no decodable frame",)),
    # Limits.
    Recipe("huge_dims_mp4", lambda d, _: huge_mp4(d), R, ("8192x8192", "above the limit")),
    Recipe("huge_dims_ts", lambda d, _: huge_ts(d), R, ("8192x8192", "above the limit")),
    Recipe("huge_dims_h264", lambda d, _: huge_h264(d), R, ("8192x8192", "above the limit")),
    Recipe("long_duration", lambda d, _: long_duration(d), R, ("above the limit",)),
    # Odd but valid: every one gives a ladder.
    Recipe("one_frame", lambda d, _: video(d / "one_frame.mp4", seconds=1 / 30), L,
           check=_all(_dims(LANDSCAPE), _frames_at_least(1))),
    Recipe("shorter_than_a_segment", lambda d, _: video(d / "short.mp4", seconds=0.4), L,
           check=_frames_at_least(12)),
    Recipe("odd_319x179",
           lambda d, _: media.make_video(d / "odd_319x179.mkv", width=319, height=179,
                                         seconds=1.0, pix_fmt="yuv444p"), L,
           check=_dims([(256, 144)]), note="179 is below the 180 rung: one rung"),
    Recipe("odd_1917x1079", lambda d, _: odd_real_size(d), L, check=_dims(LANDSCAPE)),
    Recipe("ten_bit", lambda d, _: video(d / "ten_bit.mp4", pix_fmt="yuv420p10le"), L,
           check=_dims(LANDSCAPE)),
    Recipe("yuv422", lambda d, _: video(d / "yuv422.mp4", pix_fmt="yuv422p"), L),
    Recipe("yuv422_ten_bit", lambda d, _: video(d / "yuv422_10.mkv", pix_fmt="yuv422p10le"), L),
    Recipe("interlaced", lambda d, _: interlaced(d), L,
           check=_all(_dims(LANDSCAPE), _seconds_about(1.0)),
           note="coded as interlaced fields; deinterlaced (bwdif, one frame per frame)"),
    Recipe("thumbnail_stream_first", lambda d, _: thumbnail_stream_first(d), L,
           check=_dims(LANDSCAPE), note="the stream flagged default is transcoded",
           notes=("2 video streams",)),
    Recipe("video_with_cover", lambda d, _: video_with_cover(d), L,
           check=_all(_dims(LANDSCAPE), _audio()),
           note="the cover picture is neither the video nor a second video stream"),
    Recipe("subtitled", lambda d, _: subtitled(d), L,
           check=_all(_dims(LANDSCAPE), _audio(), _subtitles({
               "English": [(0.1, 0.9, "Hello")], "Français": [(0.1, 0.9, "Bonjour")]})),
           note="SubRip tracks are kept as WebVTT renditions, named in their languages and "
                "tagged with the shortest tags (eng and the bibliographic fre: en, fr)"),
    Recipe("subtitles_in_pictures", lambda d, _: subtitles_in_pictures(d), L,
           check=_subtitles({"English": [(0.2, 0.8, "Words")]}),
           note="a DVD subtitle track beside a text one: the text one is kept, the job says "
                "the other is not", notes=("1 subtitle track not in text",)),
    Recipe("subtitle_cue_not_utf8", lambda d, _: subtitle_cue_not_utf8(d), L,
           check=_subtitles({"Subtitles 1": [(0.6, 0.9, "Fine")]}),
           note="a SubRip cue whose bytes are not UTF-8 does not decode: left out, and said",
           notes=("1 damaged subtitle cue",)),
    Recipe("subtitles_hours_late", lambda d, _: subtitles_hours_late(d), L,
           check=_subtitles({"English": [(0.0, 0.5, "Early")]}),
           note="the video starts 2 s into the file and a cue is stamped 10 hours on: cues "
                "are timed from the first picture, the one before it cut to it, the late one "
                "left out (it would have made a WebVTT file every second up to it)"),
    Recipe("language_tags_deep", lambda d, _: language_tags_deep(d), L,
           check=_all(_audio_language("und"), _subtitles({"Subtitles 1": [(0.2, 0.8, "Words")]})),
           note="language tags of a thousand subtags are no languages: the audio is und, the "
                "subtitle track gets a name of its own"),
    Recipe("subtitles_before_picture", lambda d, _: subtitles_before_picture(d), L,
           check=_subtitles({}),
           note="every cue ends before the first picture: the track is not listed, and said",
           notes=("shows no text during the video",)),
    Recipe("interlaced_ts_late", lambda d, _: interlaced_ts_late(d), L,
           check=_all(_seconds_about(2.0), _audio_seconds_about(2.0), _audio_starts_with_video),
           note="audio kept in time with the video (it was placed 100 s late)"),
    Recipe("xvid_packed_bframes", lambda d, _: xvid_packed_bframes(d), L,
           check=_all(_frames_at_least(55), _seconds_about(2.0), _audio_seconds_about(2.0)),
           note="the decoder gives the frames in order with their timestamps swapped in pairs; "
                "they are timed as FFmpeg times them (it played at half speed)"),
    Recipe("h264_bframes_avi", lambda d, _: video(d / "h264_bframes.avi", seconds=2.0), L,
           check=_all(_frames_at_least(60), _seconds_about(2.0), _audio_seconds_about(2.0),
                      _audio_starts_with_video),
           note="AVI numbers its chunks in stored (decode) order, so the frames came out with "
                "timestamps 1, 4, 3, 5, 2 ... and 2 s of video lasted 2.13 to 2.23 s"),
    Recipe("raw_y4m", lambda d, _: raw_y4m(d / "raw.y4m"), L,
           check=_all(_dims(LANDSCAPE), _frames_at_least(29), _seconds_about(1.0), _no_audio),
           note="it was refused as 'not a video file FFmpeg can read (invalid argument)'"),
    Recipe("raw_dv", lambda d, _: raw_dv(d), L,
           check=_all(_frames_at_least(25), _seconds_about(1.0), _audio_seconds_about(1.0)),
           note="it was refused as 'not a video file FFmpeg can read (invalid argument)'"),
    _rotated(90),
    _rotated(180),
    _rotated(270),
    Recipe("mirrored_90", lambda d, _: video(d / "mirrored_90.mp4", rotation=90, mirrored=True),
           L, check=_dims(PORTRAIT), note="a turn and a mirror in the display matrix"),
    Recipe("rotated_45", lambda d, _: video(d / "rotated_45.mp4", rotation=45), L,
           check=_dims(LANDSCAPE),
           note="it was refused; browsers and players show such a file as it was recorded",
           notes=("turned 315 degrees clockwise, which is not a quarter turn",)),
    Recipe("wider_than_encoders", lambda d, _: video(d / "wider_than_encoders.mkv", width=20000,
                                                     height=16, codec="ffv1", audio=False), L,
           check=_dims([(16384, 14)]), note="libx264 opens nothing wider than 16384"),
    Recipe("sar_100_to_1", lambda d, _: video(d / "sar_100_to_1.mp4",
                                              sample_aspect_ratio=Fraction(100)), L,
           check=_dims(LANDSCAPE), note="a damaged header: shown 32000x180, no encoder takes it",
           notes=("sample aspect ratio of 100:1, which is not believed",)),
    Recipe("sar_1_to_100", lambda d, _: video(d / "sar_1_to_100.mp4",
                                              sample_aspect_ratio=Fraction(1, 100)), L,
           check=_dims(LANDSCAPE), note="shown 3x180: a ladder of slivers",
           notes=("sample aspect ratio of 1:100, which is not believed",)),
    Recipe("vfr", lambda d, _: media.make_vfr_video(d / "vfr.mp4", width=WIDTH, height=HEIGHT,
                                                    seconds=1.5), L),
    _fps("23.976", Fraction(24000, 1001)),
    _fps("29.97", Fraction(30000, 1001)),
    _fps("59.94", Fraction(60000, 1001)),
    Recipe("audio_5_1", lambda d, _: video(d / "audio_5_1.mp4", channels=6), L, check=_audio(),
           note="downmixed to stereo"),
    Recipe("audio_44k", lambda d, _: video(d / "audio_44k.mp4", sample_rate=44100), L,
           check=_audio(), note="resampled to 48 kHz"),
    Recipe("default_audio_second", lambda d, _: default_audio_second(d), L,
           check=_all(_audio_tones(880.0), _audio_tones(440.0, folder="audio2"),
                      _audio_renditions(("English", "en", "YES", "audio/index.m3u8"),
                                        ("Deutsch", "de", "NO", "audio2/index.m3u8"))),
           note="both tracks are kept, the one flagged default first, each with its language"),
    Recipe("two_programmes", lambda d, _: two_programmes(d), L,
           check=_all(_dims(LANDSCAPE), _audio_tones(880.0), _untagged_audio(1)),
           note="the other programme's sound was kept as a second track, and played first",
           notes=("1 audio track of the source's other programmes not kept",
                  "the source has 2 video streams")),
    Recipe("several_audio", lambda d, _: several_audio(d), L,
           check=_all(_audio(), _untagged_audio(3)),
           note="every audio track is kept, in the file's order"),
    Recipe("ten_audio_tracks",
           lambda d, _: write_streams(d / "ten_audio_tracks.mkv", video_pts=list(range(15)),
                                      time_base=Fraction(1, 30), audio=[(48000, 1, 0.5, 0)] * 10),
           L, check=_all(_audio(), _untagged_audio(8)),
           note="the first eight tracks are kept", notes=("2 audio tracks beyond the first 8",)),
    Recipe("one_audio_track_undecodable", lambda d, _: one_audio_track_undecodable(d), L,
           check=_all(_audio(), _untagged_audio(1)), note="the track that decodes is kept",
           notes=("1 audio track in a format",)),
    Recipe("second_audio_track_empty",
           lambda d, _: write_streams(d / "second_audio_track_empty.mkv",
                                      video_pts=list(range(30)), time_base=Fraction(1, 30),
                                      audio=[(48000, 2, 1.0, 0), (48000, 2, 0.0, 0)]),
           L, check=_all(_audio(), _untagged_audio(1)),
           note="a track without a packet beside one with sound is left out",
           notes=("audio track 'Audio 2' holds no sound",)),
    Recipe("audio_longer",
           lambda d, _: write_streams(d / "audio_longer.mp4", video_pts=list(range(30)),
                                      time_base=Fraction(1, 30), audio=[(48000, 2, 2.5, 0)]),
           L, check=_all(_audio(), _seconds_about(2.5), _audio_seconds_about(2.5)),
           note="the last picture is held until the sound ends: hls.js stalled for good where "
                "the shorter track ended",
           notes=("the sound goes on 1.5 s past the last picture",)),
    Recipe("audio_shorter",
           lambda d, _: write_streams(d / "audio_shorter.mp4", video_pts=list(range(45)),
                                      time_base=Fraction(1, 30), audio=[(48000, 2, 0.3, 0)]),
           L, check=_all(_audio(), _seconds_about(1.5), _audio_seconds_about(1.5)),
           note="silence follows the sound to the end of the picture: hls.js stalled for good "
                "where the shorter track ended",
           notes=("ends 1.2 s before the picture: silence to its end",)),
    Recipe("no_audio", lambda d, _: video(d / "no_audio.mp4", audio=False), L, check=_no_audio),
    Recipe("starts_late", lambda d, _: starts_late(d), L, check=_frames_at_least(30)),
    Recipe("avi_dropped_frame", lambda d, _: avi_dropped_frame(d), L,
           check=_frames_at_least(29),
           note="the empty chunk of a dropped frame counts in the header, holds no picture"),
    Recipe("starts_before_zero", lambda d, _: starts_before_zero(d), L,
           check=_all(_frames_at_least(90), _seconds_about(3.0))),
    Recipe("paused_recording", lambda d, _: paused_recording(d), L,
           check=_all(_seconds_about(4.0), _audio_seconds_about(4.0)),
           note="the pause is kept in both, the audio's as silence"),
    Recipe("sound_starts_late", lambda d, _: sound_starts_late(d), L,
           check=_all(_seconds_about(2.0), _audio_seconds_about(2.0), _audio_starts_with_video,
                      sound_begins_at(1.0)),
           note="the sound is led in with silence from the first picture: it started 1 s in, "
                "and a browser plays only where picture and sound are both buffered"),
    Recipe("audio_jumps_hours", lambda d, _: audio_jumps_hours(d), L,
           check=_all(_seconds_about(1.0), _audio_seconds_about(1.0)),
           note="a jump past the source's duration is a broken clock: closed up, not filled"),
    Recipe("jump_forward", lambda d, _: jump_forward(d), L,
           check=_all(_frames_at_least(30), _seconds_about(3.0), _audio_seconds_about(3.0)),
           note="the gap is kept (it is real time); the last frame is repeated at each segment "
                "start inside it, so no segment is longer than the segment length",
           notes=("ends 2.0 s before the picture: silence to its end",)),
    Recipe("bogus_last_duration", lambda d, _: bogus_last_duration(d), L,
           check=_all(_frames_at_least(30), _seconds_about(1.0)),
           note="no frame is shown past the video's declared length"),
    Recipe("pts_wrap", lambda d, _: pts_wrap(d), L, check=_frames_at_least(30)),
    Recipe("concatenated_ts", lambda d, _: concatenated_ts(d), L,
           check=_all(_frames_at_least(60), _seconds_at_least(1.9)),
           note="timestamps go back to the start half way; the second part follows the first"),
    Recipe("resolution_change", lambda d, _: resolution_change(d), L,
           check=_frames_at_least(60), note="later frames are scaled to the first frame's size"),
    Recipe("shape_change", lambda d, _: shape_change(d), L,
           check=_all(_frames_at_least(60), _pillarboxed_from(1.0)),
           note="the portrait part is fitted into the landscape size with bars, not stretched"),
    Recipe("sample_aspect_part_way", lambda d, _: sample_aspect_part_way(d), L, check=_filled,
           note="a size change to a sample aspect ratio of 100:1: the pixels are square, so "
                "the second part fills the frame, not a sliver between bars"),
    Recipe("one_pixel_high", lambda d, _: one_pixel_high(d), L, check=_frames_at_least(30),
           note="a wider picture 1 pixel high fills the first one's size: no room for bars"),
    Recipe("no_frame_rate_h264", lambda d, _: no_frame_rate(d), L, check=_frames_at_least(30),
           note="FFmpeg's raw H.264 reader assumes 25 fps"),
    Recipe("raw_h264", lambda d, _: video(d / "raw.h264", audio=False, container_format="h264"),
           L, check=_all(_frames_at_least(30), _seconds_about(1.0)),
           note="timed by the stream's own VUI (30 fps), not the raw reader's 25 fps"),
    Recipe("no_frame_rate_mkv", lambda d, _: no_frame_rate_mkv(d), L,
           check=_frames_at_least(30)),
    Recipe("mpegts", lambda d, _: video(d / "plain.ts"), L, check=_dims(LANDSCAPE)),
    Recipe("colon_in_name", lambda d, _: video(d / "clip:1.mp4"), L, check=_dims(LANDSCAPE),
           note="a relative name that looks like an FFmpeg protocol prefix"),
    Recipe("unknown_audio_codec", lambda d, _: unknown_audio_codec(d), L, check=_no_audio,
           note="found by the fuzzer: the probe failed on an audio stream with no decoder",
           notes=("cannot decode",)),
    Recipe("empty_audio_track",
           lambda d, _: write_streams(d / "empty_audio_track.mkv", video_pts=list(range(30)),
                                      time_base=Fraction(1, 30), audio=[(48000, 2, 0.0, 0)]),
           L, check=_no_audio, note="an audio track without a packet: a silent ladder",
           notes=("no sound that decodes",)),
    Recipe("undecodable_audio_tracks", lambda d, _: undecodable_audio_tracks(d), L,
           check=_no_audio, note="a silent ladder, with one note (not one on tracks kept too)",
           notes=("cannot decode",)),
    Recipe("audio_format_changes", lambda d, _: audio_format_changes(d), L,
           check=_all(_audio(), _audio_seconds_about(2.0)),
           note="found by the fuzzer: the resampler refused frames of a new format; then the "
                "audio FIFO refused them for their time base, and the sound stopped at 1 s"),
    Recipe("audio_all_before_video",
           lambda d, _: write_streams(d / "audio_before_video.mp4",
                                      video_pts=list(range(90, 120)),
                                      time_base=Fraction(1, 30), audio=[(48000, 2, 1.0, 0)]),
           L, check=_all(_audio(), _seconds_about(4.0), _audio_seconds_about(4.0)),
           note="all of the sound is before the first picture, which is shown from where the "
                "sound starts (the sound used to be left out)",
           notes=("ends 3.0 s before the picture",)),
    Recipe("audio_all_long_before_video",
           lambda d, _: write_streams(d / "audio_long_before_video.mp4",
                                      video_pts=list(range(900, 930)),
                                      time_base=Fraction(1, 30), audio=[(48000, 2, 1.0, 0)]),
           L, check=_all(_no_audio, _seconds_about(1.0)),
           note="sound 30 s before the first picture is not led in with a still picture",
           notes=("before its first picture",)),
    # Found by ``python -m tests.fuzz`` (seed 1); each failed with a traceback before its fix.
    Recipe("fuzz_ts_new_stream",
           lambda d, _: fuzzed(d, "fuzz_ts_new_stream", "plain.ts", [
               ["int", 30819, 4, 4294967295], ["flip", 36474, 6], ["flip", 35769, 0],
               ["int", 5481, 4, 8]]), E,
           note="a stream appearing part way made PyAV's demuxer raise IndexError",
           may_note=("damaged video packet",)),
    Recipe("fuzz_mkv_audio_format",
           lambda d, _: fuzzed(d, "fuzz_mkv_audio_format", "plain.mkv",
                               [["set", 53615, "7f"], ["int", 52772, 4, 8]]), E,
           note="the audio resampler refused a frame of another format"),
    Recipe("fuzz_mov_bad_audio_frame",
           lambda d, _: fuzzed(d, "fuzz_mov_bad_audio_frame", "rotated.mov",
                               [["int", 27856, 4, 128], ["flip", 23728, 1]]), E,
           note="an audio frame the resampler cannot convert failed the whole job",
           notes=("damaged audio frame",), may_note=(_SILENCE_TO_THE_END,)),
    Recipe("fuzz_mp4_audio_without_decoder",
           lambda d, _: fuzzed(d, "fuzz_mp4_audio_without_decoder", "plain.mp4",
                               [["int", 27361, 4, 128], ["int", 27526, 4, 32768]]), E,
           note="the probe failed on an audio stream FFmpeg has no decoder for",
           notes=("cannot decode",)),
    # Found by ``python -m tests.fuzz --seed 3057`` once every audio track was decoded.
    Recipe("fuzz_flv_samples_not_finite",
           lambda d, _: fuzzed(d, "fuzz_flv_samples_not_finite", "plain.flv",
                               [["dup", 15617, 860, 8252]]), L,
           check=_audio(),
           note="a copied chunk made a second (Nellymoser) audio track whose decoder gave NaN "
                "samples, which FFmpeg's AAC encoder refused: the job failed",
           notes=("damaged audio sample",), may_note=(_SILENCE_TO_THE_END,)),
    # Found by ``python -m tests.fuzz --seed 3060``.
    Recipe("fuzz_mov_matrix_unknown",
           lambda d, _: fuzzed(d, "fuzz_mov_matrix_unknown", "prores_pcm.mov",
                               [["int", 60, 4, 2147483648]]), L,
           check=_all(_frames_at_least(30), _seconds_about(1.0)),
           note="a damaged first frame tagged matrix 128: FFmpeg's scaler refused to make it "
                "8-bit, and the job failed with INTERNAL"),
    # Found by ``python -m tests.fuzz --seed 798094`` (no answer in 20 s).
    Recipe("fuzz_ts_decode_time_hours_ahead",
           lambda d, _: fuzzed(d, "fuzz_ts_decode_time_hours_ahead", "plain.ts", [
               ["int", 37130, 4, 256], ["dup", 1198, 1163, 13436], ["flip", 9900, 3]]), L,
           # Its 31 pictures are stamped over 1 s, one a frame late (before one stamped a frame
           # earlier): placed where it was stamped, it pushed every later one on, to 1.1 s.
           check=_all(_seconds_about(1.0), _frames_at_least(30)),
           note="one packet's decode time 7.4 hours past its presentation time was taken for "
                "a splice: every later frame moved 7.4 hours on, and the 1 s file was refused "
                "as lasting more than the 6 hour limit"),
    # Found by ``python -m tests.fuzz --seed 280`` (no answer in 20 s).
    Recipe("fuzz_ts_first_sound_hours_ahead",
           lambda d, _: fuzzed(d, "fuzz_ts_first_sound_hours_ahead", "plain.ts", [
               ["int", 11169, 4, 2147483647],
               ["insert", 3960, "0ecabe99ee68391d4b29b606ce3cfaba814b19"], ["flip", 22921, 6]]),
           L, check=_all(_seconds_about(1.0), _frames_at_least(30), _audio_seconds_about(1.0)),
           note="the first sound packet said 16 hours in; measured against it the next one was "
                "a splice back, every later packet moved 16 hours on, and the 1 s file was "
                "refused as lasting more than the 6 hour limit"),
    # Found by ``python -m tests.fuzz --seed 77``: the job never ended and ignored signals.
    Recipe("fuzz_hevc_decoder_deadlock",
           lambda d, _: fuzzed(d, "fuzz_hevc_decoder_deadlock", "hevc.mp4",
                               [["int", 7656, 4, 2], ["flip", 8836, 5]]), R,
           ("stopped decoding",),
           note="FFmpeg's frame-threaded HEVC decoder deadlocks on it (the ffmpeg CLI's too); "
                "ended after engine.stall.STALL_S"),
    # Found by ``python -m tests.fuzz --seed 4901`` (no answer in 20 s, nor in 5 minutes).
    Recipe("fuzz_mov_audio_rate_2hz",
           lambda d, _: fuzzed(d, "fuzz_mov_audio_rate_2hz", "dnxhr_pcm.mov",
                               [["int", 534968, 4, 9]]), L,
           check=_all(_seconds_about(1.0), _frames_at_least(30), _no_audio),
           note="a shortened sample description gave the 24-bit PCM track a rate of 2 Hz: its 1 s "
                "of sound, laid end to end, lasted 6.7 hours, and the picture was held to it",
           notes=("holds no sound that decodes", "damaged audio frame")),
    # Sources that try to make FFmpeg read files outside the source root.
    Recipe("hls_playlist", lambda d, trap: hls_playlist(d, "playlist.m3u8", trap), R,
           ("not a video",), trapped=True),
    Recipe("hls_playlist_named_mp4", lambda d, trap: hls_playlist(d, "playlist.mp4", trap), R,
           ("not a video",), trapped=True),
    Recipe("concat_script", lambda d, trap: concat_script(d, trap), R, ("not a video",),
           trapped=True),
    Recipe("sdp_file", lambda d, trap: sdp_file(d, trap), R, ("not a video",), trapped=True),
)


def make_corpus(folder: Path, outside: Path,
                recipes: tuple[Recipe, ...] = RECIPES) -> list[Case]:
    """Write every case into ``folder`` and the trap (a named pipe) into ``outside``, a
    directory outside the source root; returns the cases in the order of ``recipes``."""
    folder.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    # Whoever opens a named pipe for reading blocks until a writer comes, so a test can see any
    # open of it (see test_hostile), and a source that follows it hangs rather than passes.
    trap = outside / "secret.mp4"
    if not trap.exists():
        os.mkfifo(trap)
    cases = []
    for recipe in recipes:
        path = recipe.make(folder, trap)
        assert path.parent == folder, path
        cases.append(Case(recipe.name, path.name, recipe.expect, recipe.words, recipe.check,
                          recipe.note, (trap,) if recipe.trapped else (), recipe.notes,
                          recipe.may_note))
    names = [case.file for case in cases]
    assert len(set(names)) == len(names), "two cases share a file"
    return cases
