"""Seed media and seeded mutations of it, each mutation a JSON-able list of operations so any
input the fuzzer tries can be rebuilt exactly: ``apply(seed_bytes, ops)``."""

from __future__ import annotations

import os
import random
import struct
import subprocess
from collections.abc import Callable, Collection
from fractions import Fraction
from pathlib import Path
from typing import Any

import imageio_ffmpeg

from tests import hostile, media

Op = list[Any]

#: Values that make parsers take unusual paths: sizes of 0 and 1, off by one, sign bits, max.
INTERESTING_32 = (0, 1, 2, 7, 8, 9, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
                  0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
INTERESTING_8 = (0, 1, 0x7F, 0x80, 0xFF)


def _small(path: Path, **kwargs: Any) -> Path:
    values: dict[str, Any] = {"width": 160, "height": 90, "seconds": 1.0}
    values.update(kwargs)
    return media.make_video(path, **values)


#: Seed files: (file name, maker). Small (160x90, 1 s) so each run decodes in milliseconds.
SEEDS: tuple[tuple[str, Callable[[Path], Path]], ...] = (
    ("plain.mp4", lambda p: _small(p)),
    ("faststart.mp4", lambda p: _small(p, codec_options={"preset": "veryfast", "g": "10"},
                                       container_options={"movflags": "+faststart"})),
    ("fragmented.mp4", lambda p: _small(p, container_options={
        "movflags": "+frag_keyframe+empty_moov+default_base_moof"})),
    ("rotated.mov", lambda p: _small(p, rotation=90)),
    ("ten_bit.mp4", lambda p: _small(p, pix_fmt="yuv420p10le", audio=False)),
    ("plain.mkv", lambda p: _small(p, channels=6, sample_rate=44100)),
    ("plain.ts", lambda p: _small(p)),
    ("raw.h264", lambda p: _small(p, audio=False, container_format="h264")),
    ("vp9.webm", lambda p: _small(p, codec="libvpx-vp9", audio=False,
                                  codec_options={"deadline": "realtime", "cpu-used": "8"})),
    ("mpeg4.avi", lambda p: _small(p, codec="mpeg4", audio=False, codec_options={})),
    ("vfr.mp4", lambda p: media.make_vfr_video(p, width=160, height=90, seconds=1.0)),
    ("hevc.mp4", lambda p: _small(p, codec="libx265", audio=False, fps=Fraction(25),
                                  codec_options={"preset": "ultrafast",
                                                 "x265-params": "log-level=error"})),
    # Formats whose headers the probe reads for the file's size.
    ("plain.flv", lambda p: _small(p)),
    ("plain.wmv", lambda p: _small(p, codec="wmv2", codec_options={})),
    ("plain.mxf", lambda p: _small(p, codec="mpeg2video", codec_options={}, fps=25,
                                   audio=False)),
    ("animated.png", lambda p: hostile.animation(p.parent, "png").rename(p)),
    ("animated.gif", lambda p: hostile.animation(p.parent, "gif").rename(p)),
    ("plain.mpg", lambda p: _small(p, codec="mpeg2video", codec_options={}, audio=False,
                                   fps=25)),
    # What browsers, old phones, editors and archives write, each with a sound of its own kind.
    ("vp8_opus.webm", lambda p: _small(p, codec="libvpx", audio_codec="libopus",
                                       codec_options={"deadline": "realtime", "cpu-used": "8"})),
    ("av1_flac.mkv", lambda p: _av1(p, audio_codec="flac")),
    ("h263_amr.3gp", lambda p: _3gp(p)),
    ("prores_pcm.mov", lambda p: _small(p, codec="prores_ks", pix_fmt="yuv422p10le",
                                        codec_options={"profile": "0"},
                                        audio_codec="pcm_s16le")),
    ("mjpeg_mp3.avi", lambda p: _small(p, codec="mjpeg", pix_fmt="yuvj420p", codec_options={},
                                       audio_codec="libmp3lame")),
    ("mpeg2_mp2.mpg", lambda p: _small(p, codec="mpeg2video", codec_options={}, fps=25,
                                       audio_codec="mp2")),
    ("raw.y4m", lambda p: hostile.raw_y4m(p, width=160, height=90, seconds=0.3)),
    ("theora_vorbis.ogv", lambda p: _ogg(p)),
    # Editors' intermediates (DNxHR needs a picture of at least 256 pixels across).
    ("dnxhr_pcm.mov", lambda p: _small(p, codec="dnxhd", width=256, height=144,
                                       pix_fmt="yuv422p", codec_options={"profile": "dnxhr_lb"},
                                       audio_codec="pcm_s24le")),
    ("ffv1_flac.mkv", lambda p: _small(p, codec="ffv1", codec_options={}, audio_codec="flac")),
    # Sound that cameras, broadcasts and Apple's tools write (engine.audio decodes each).
    ("mjpeg_adpcm.avi", lambda p: _small(p, codec="mjpeg", pix_fmt="yuvj422p", codec_options={},
                                         audio_codec="adpcm_ima_wav", sample_rate=11025,
                                         channels=1)),
    ("mjpeg_mulaw.mov", lambda p: _small(p, codec="mjpeg", pix_fmt="yuvj422p", codec_options={},
                                         audio_codec="pcm_mulaw", sample_rate=8000,
                                         channels=1)),
    ("h264_ac3.ts", lambda p: _small(p, audio_codec="ac3", channels=6)),
    ("h264_eac3.mp4", lambda p: _small(p, audio_codec="eac3", channels=6)),
    ("h264_alac.mov", lambda p: _small(p, audio_codec="alac", sample_rate=44100)),
    # Several audio tracks, each decoded and encoded (engine.decode places each on its own).
    *((f"two_audio.{suffix}", lambda p: _two_audio(p)) for suffix in ("mkv", "mp4", "ts")),
    # Two programmes, whose tracks the probe tells apart (engine.probe._elsewhere).
    ("two_programmes.ts", lambda p: hostile.two_programmes(p.parent).rename(p)),
    # HDR, which the decoder maps to SDR from the source's 10 bits (engine.tonemap).
    ("hlg.mov", lambda p: _small(p, codec="libx265", pix_fmt="yuv420p10le", fps=Fraction(25),
                                 codec_options={"preset": "ultrafast", "x265-params": (
                                     "log-level=error:colorprim=bt2020:transfer=arib-std-b67:"
                                     "colormatrix=bt2020nc")})),
    ("pq.mkv", lambda p: _small(p, pix_fmt="yuv420p10le", codec_options={
        "preset": "veryfast",
        "x264-params": "colorprim=bt2020:transfer=smpte2084:colormatrix=bt2020nc"})),
    # Text subtitle tracks, which a job reads in a pass of its own.
    ("subtitled.mkv", lambda p: _subtitled(p, ("ass", "subrip"))),
    ("timed_text.mp4", lambda p: _subtitled(p, ("mov_text", "mov_text"))),
    # Closed captions in the picture, which every rung carries on (engine.captions).
    *((f"captioned.{suffix}", lambda p: _small(p, captions=media.cea608_pop_on(["CC"], 30)))
      for suffix in ("mp4", "ts")),
)


def _av1(path: Path, **kwargs: Any) -> Path:
    # SVT-AV1 prints a banner of its settings to stderr unless told to log errors only.
    os.environ.setdefault("SVT_LOG", "1")
    # Where it may (as root, as CI runs), SVT-AV1 moves the thread that opens it to real-time
    # scheduling (SCHED_FIFO, priority 99) and leaves it there. Every thread and process started
    # from that thread afterwards inherits it: two busy fuzz workers then hold both cores and
    # the hang timeout never gets to run, and the rest of a test session runs as real-time.
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        return _small(path, codec="libsvtav1", codec_options={"preset": "12"}, **kwargs)
    finally:
        os.sched_setscheduler(0, policy, param)


def _ogg(path: Path) -> Path:
    # PyAV's FFmpeg has no Theora or Vorbis encoder; the ffmpeg CLI's has both.
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=160x90:rate=30:duration=1", "-f", "lavfi", "-i",
                    "sine=sample_rate=48000:duration=1", "-c:v", "libtheora", "-c:a",
                    "libvorbis", str(path)], check=True)
    return path


def _3gp(path: Path) -> Path:
    # PyAV 18.1.1's FFmpeg has no AMR encoder (18.1.0's had); the ffmpeg CLI's has.
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=176x144:rate=30:duration=1", "-f", "lavfi", "-i",
                    "sine=sample_rate=8000:duration=1", "-c:v", "h263", "-c:a",
                    "libopencore_amrnb", "-ar", "8000", "-ac", "1", str(path)], check=True)
    return path


def _two_audio(path: Path) -> Path:
    return hostile.write_streams(path, video_pts=list(range(30)), time_base=Fraction(1, 30),
                                 width=160, height=90,
                                 audio=[(48000, 2, 1.0, 0), (44100, 1, 1.0, 1024)])


def _subtitled(path: Path, codecs: tuple[str, str]) -> Path:
    plain = _small(path.with_name(f".{path.name}.plain.mp4"))
    cues = [(t / 10, t / 10 + 0.15, f"{{\\i1}}cue{{\\i0}} {t}\\Nline & <b>")
            for t in range(0, 10, 2)]
    made = media.make_subtitled(plain, path, [
        media.SubtitleSpec(cues, codec=codecs[0], language="eng", title="English",
                           default=True),
        media.SubtitleSpec(cues[1:3], codec=codecs[1], language="fre", forced=True)])
    plain.unlink()
    return made


def make_seeds(folder: Path, only: Collection[str] = ()) -> list[Path]:
    """The seed files (those named in ``only``, when given) made in ``folder``."""
    unknown = set(only) - {name for name, _ in SEEDS}
    if unknown:
        raise ValueError(f"no such seed: {', '.join(sorted(unknown))}")
    folder.mkdir(parents=True, exist_ok=True)
    return [make(folder / name) for name, make in SEEDS if not only or name in only]


def mutations(rng: random.Random, data: bytes) -> list[Op]:
    """One to four operations for ``data``, chosen by ``rng`` (box-aware for MP4 files)."""
    ops: list[Op] = []
    size = len(data)
    boxes = list(hostile.boxes(data)) if data[4:8] in (b"ftyp", b"moov", b"mdat", b"free") \
        else []
    for _ in range(rng.choice((1, 1, 2, 2, 3, 4))):
        kind = rng.choice(("flip", "flip", "byte", "int", "int", "chunk", "insert", "delete",
                           "dup", "truncate", "box", "box"))
        at = rng.randrange(max(1, size))
        if kind == "flip":
            ops.append(["flip", at, rng.randrange(8)])
        elif kind == "byte":
            ops.append(["set", at, bytes([rng.choice(INTERESTING_8)]).hex()])
        elif kind == "int" or (kind == "box" and not boxes):
            ops.append(["int", at, 4, rng.choice(INTERESTING_32)])
        elif kind == "box":
            box = rng.choice(boxes)
            field = box.offset if rng.random() < 0.4 else \
                box.offset + 8 + 4 * rng.randrange(max(1, min(16, (box.size - 8) // 4)))
            ops.append(["int", field, 4, rng.choice(INTERESTING_32)])
        elif kind == "chunk":
            length = rng.randrange(1, 256)
            ops.append(["set", at, rng.randbytes(length).hex()])
        elif kind == "insert":
            ops.append(["insert", at, rng.randbytes(rng.randrange(1, 64)).hex()])
        elif kind == "delete":
            ops.append(["delete", at, rng.randrange(1, 512)])
        elif kind == "dup":
            ops.append(["dup", at, rng.randrange(1, 2048), rng.randrange(max(1, size))])
        else:
            ops.append(["truncate", rng.randrange(max(1, size))])
    return ops


def apply(data: bytes, ops: list[Op]) -> bytes:
    """``data`` with ``ops`` applied in order (offsets past the end are clamped)."""
    out = bytearray(data)
    for op in ops:
        name, *args = op
        at = min(int(args[0]), len(out)) if args else 0
        if name == "flip" and at < len(out):
            out[at] ^= 1 << int(args[1])
        elif name == "set":
            patch = bytes.fromhex(args[1])
            out[at:at + len(patch)] = patch
        elif name == "int" and at + 4 <= len(out):
            struct.pack_into(">I", out, at, int(args[2]))
        elif name == "insert":
            out[at:at] = bytes.fromhex(args[1])
        elif name == "delete":
            del out[at:at + int(args[1])]
        elif name == "dup":
            chunk = bytes(out[at:at + int(args[1])])
            dest = min(int(args[2]), len(out))
            out[dest:dest] = chunk
        elif name == "truncate":
            del out[at:]
    return bytes(out)
