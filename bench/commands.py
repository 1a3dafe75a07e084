"""The command lines of the three systems, built from the engine's own settings. Pure functions.

Every x264 setting comes from :func:`engine.hwaccel.encoder_options` for the rungs
:func:`engine.ladder.plan_ladder` plans for the source, and the HLS muxer options mirror
:mod:`engine.segment`, so the ffmpeg baselines differ from Rungs in architecture only.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

from engine.audio import AUDIO_FOLDER, AudioSettings
from engine.gop import segment_length
from engine.hwaccel import SOFTWARE_ENCODER, encoder_options
from engine.ladder import Rung, plan_ladder
from engine.probe import open_source
from engine.publish import MEDIA as PLAYLIST
from engine.rung import encoder_gop
from engine.segment import FMP4_SEGMENT_OPTIONS, INIT_SEGMENT

#: What Rungs is asked for: the same encoder as the baselines, and software decoding as the
#: ffmpeg CLI does (``--hwaccel auto`` would also spend time probing devices).
DEFAULT_RUNGS_ARGS = ("--encoder", SOFTWARE_ENCODER, "--hwaccel", "none")
ENGINE_API_WORKER = Path(__file__).with_name("engine_api.py")


@dataclass(frozen=True)
class RungPlan:
    """One rung as both Rungs and the baselines encode it."""

    rung: Rung
    #: libx264 options exactly as the engine passes them (preset, crf, forced-idr, x264-params).
    x264: dict[str, str]

    @property
    def name(self) -> str:
        return self.rung.name


def plan(source: Path, segment_seconds: float) -> list[RungPlan]:
    """The rungs Rungs will encode for ``source``, lowest first, with their x264 options."""
    with open_source(source) as opened:
        rungs = plan_ladder(opened.info)
    gop = gop_frames(segment_seconds)
    return [RungPlan(r, encoder_options(SOFTWARE_ENCODER, r, gop)) for r in rungs]


def gop_frames(segment_seconds: float) -> int:
    """The GOP length the engine gives x264."""
    return encoder_gop(segment_length(segment_seconds))


def rungs_command(source: Path, out_dir: Path, segment_seconds: float,
                  extra: tuple[str, ...] = DEFAULT_RUNGS_ARGS) -> list[str]:
    """Rungs through its engine API (:mod:`bench.engine_api`), started on a line on stdin once
    its imports are done; one JSON event per line on stdout. The worker runs by path from the
    working directory, so that ``engine`` is the copy there."""
    worker = f"import runpy; runpy.run_path({str(ENGINE_API_WORKER)!r}, run_name='__main__')"
    return [sys.executable, "-c", worker, str(source), str(out_dir),
            "--json", "--overwrite", "--segment-seconds", f"{segment_seconds:g}", *extra]


def ffmpeg_all_at_once(ffmpeg: str, source: Path, rungs: list[RungPlan], out_dir: Path,
                       segment_seconds: float, has_audio: bool, thread_type: str | None,
                       source_fps: float) -> list[str]:
    """One process: decode once, split, scale and encode every rung, audio once."""
    labels = [f"v{plan.name}" for plan in rungs]
    pre = _frame_rate_cap(rungs[0], source_fps)
    graph = f"[0:v]{pre}split={len(rungs)}" + "".join(f"[s{i}]" for i in range(len(rungs)))
    for index, (plan, label) in enumerate(zip(rungs, labels, strict=True)):
        graph += f";[s{index}]{scale_filter(plan.rung)}[{label}]"
    argv = [*_input(ffmpeg, source), "-filter_complex", graph]
    for plan, label in zip(rungs, labels, strict=True):
        argv += ["-map", f"[{label}]", *video_codec(plan, segment_seconds, thread_type), "-an",
                 *hls_output(out_dir / plan.name, segment_seconds)]
    if has_audio:
        argv += audio_output(out_dir / AUDIO_FOLDER, segment_seconds)
    return argv


def ffmpeg_one_rung(ffmpeg: str, source: Path, plan: RungPlan, out_dir: Path,
                    segment_seconds: float, with_audio: bool, thread_type: str | None,
                    source_fps: float) -> list[str]:
    """One process for one rung (and, for the first rung, the audio): a decode of its own."""
    graph = f"[0:v]{_frame_rate_cap(plan, source_fps)}{scale_filter(plan.rung)}[v]"
    argv = [*_input(ffmpeg, source), "-filter_complex", graph,
            "-map", "[v]", *video_codec(plan, segment_seconds, thread_type), "-an",
            *hls_output(out_dir / plan.name, segment_seconds)]
    if with_audio:
        argv += audio_output(out_dir / AUDIO_FOLDER, segment_seconds)
    return argv


def decode_only(ffmpeg: str, source: Path) -> list[str]:
    """Decode the source's video and throw the frames away: what one decode costs."""
    return [*_input(ffmpeg, source), "-map", "0:v:0", "-f", "null", "-"]


def raw_frames(ffmpeg: str, source: Path, raw: Path, plan: RungPlan,
               source_fps: float) -> list[str]:
    """Decode the source's video once into a file of raw 8-bit 4:2:0 frames, at the rungs'
    frame rate (``plan``'s)."""
    return [*_input(ffmpeg, source), "-map", "0:v:0", "-vf",
            f"{_frame_rate_cap(plan, source_fps)}format=yuv420p", "-f", "rawvideo", str(raw)]


def encode_only(ffmpeg: str, raw: Path, width: int, height: int, plan: RungPlan,
                out_dir: Path, segment_seconds: float, thread_type: str | None) -> list[str]:
    """One rung from raw decoded frames (:func:`raw_frames`): the encoder's (and scaler's) own
    cost, no decode."""
    return [ffmpeg, "-hide_banner", "-nostdin", "-nostats", "-y", "-f", "rawvideo",
            "-pix_fmt", "yuv420p", "-s", f"{width}x{height}", "-r", str(plan.rung.frame_rate),
            "-i", str(raw),
            "-vf", scale_filter(plan.rung), *video_codec(plan, segment_seconds, thread_type),
            *hls_output(out_dir / plan.name, segment_seconds)]


def scale_filter(rung: Rung) -> str:
    """The engine's scaler: swscale AREA to the rung's size, 8-bit 4:2:0."""
    return f"scale={rung.width}:{rung.height}:flags=area,format=yuv420p"


def video_codec(plan: RungPlan, segment_seconds: float, thread_type: str | None) -> list[str]:
    """libx264 with the engine's options, IDR frames forced at every segment start by time."""
    argv = ["-c:v", SOFTWARE_ENCODER]
    if thread_type:
        argv += ["-thread_type", thread_type]
    for key, value in plan.x264.items():
        argv += [f"-{key}", value]
    return [*argv, "-force_key_frames", f"expr:gte(t,n_forced*{segment_seconds:g})"]


def audio_output(folder: Path, segment_seconds: float) -> list[str]:
    """AAC-LC 128 kbit/s, 48 kHz stereo: the engine's :class:`~engine.audio.AudioSettings`."""
    audio = AudioSettings()  # the engine's
    return ["-map", "0:a:0", "-vn", "-c:a", "aac", "-b:a", str(audio.bitrate),
            "-ar", str(audio.sample_rate), "-ac", str(audio.channels),
            *hls_output(folder, segment_seconds)]


def hls_output(folder: Path, segment_seconds: float) -> list[str]:
    """FFmpeg's HLS muxer with :class:`engine.segment.HlsWriter`'s options (fMP4), but for the
    playlist type: VOD, since ENDLIST is how the benchmark sees a baseline's rendition end."""
    return ["-f", "hls", "-hls_time", f"{segment_seconds:g}", "-hls_playlist_type", "vod",
            "-hls_list_size", "0", "-hls_segment_type", "fmp4",
            "-hls_fmp4_init_filename", INIT_SEGMENT, "-hls_segment_options", FMP4_SEGMENT_OPTIONS,
            "-hls_flags", "temp_file+independent_segments",
            "-hls_segment_filename", str(folder / "seg_%05d.m4s"), str(folder / PLAYLIST)]


def _input(ffmpeg: str, source: Path) -> list[str]:
    # Verbose logging makes ffmpeg print "N frames decoded" per input stream at the end.
    return [ffmpeg, "-hide_banner", "-nostdin", "-nostats", "-y", "-loglevel", "level+verbose",
            "-i", str(source)]


def _frame_rate_cap(plan: RungPlan, source_fps: float) -> str:
    """The engine puts a source above 60 fps on a slower grid, its rungs' frame rate (see
    engine.gop.grid_rate: 120 fps plays at 60, 100 fps at 50); so do the baselines."""
    return f"fps={plan.rung.frame_rate}," if _slower(plan, source_fps) else ""


def _slower(plan: RungPlan, source_fps: float) -> bool:
    # The source's rate is rounded to 3 decimals (bench.sources).
    return float(plan.rung.frame_rate) < source_fps - 0.01


def rung_frames(source_frames: int, source_fps: float, plan: RungPlan) -> int:
    """How many frames each rung of a source has: fewer where its rate is slower."""
    if not _slower(plan, source_fps):
        return source_frames
    # A hair under, so that a whole product of floats (120 x 0.5) does not round up.
    return math.ceil(source_frames * float(plan.rung.frame_rate) / source_fps - 1e-6)
