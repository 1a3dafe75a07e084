"""The systems run as processes of their own (Rungs' engine API and the ffmpeg baselines), each
once a round on the source and measured the same way (:mod:`bench.measure`)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import commands
from bench.commands import AUDIO_FOLDER, PLAYLIST, RungPlan
from bench.engine_api import LOADED
from bench.measure import ProcessRun, run_measured
from bench.outputs import bytes_written
from bench.sources import Source

RUNGS = "rungs"
#: Rungs through its gRPC service (bench.service), timed from the Transcode call.
RUNGS_GRPC = "rungs_grpc"
ALL_AT_ONCE = "ffmpeg_all_at_once"
PER_RUNG = "ffmpeg_per_rung"
#: Run in this order in every round.
SYSTEMS = (RUNGS, RUNGS_GRPC, ALL_AT_ONCE, PER_RUNG)
#: What Rungs is compared with.
BASELINES = (ALL_AT_ONCE, PER_RUNG)
REPO_ROOT = Path(__file__).resolve().parent.parent
FIRST_SEGMENT = "first_segment"

_FRAMES_DECODED = re.compile(r"Input stream #\d+:\d+ \(video\): \d+ packets read .*?; "
                             r"(\d+) frames decoded")


class BenchError(RuntimeError):
    """A system failed; the message holds the end of its stderr."""


@dataclass(frozen=True)
class Setup:
    """What every run in a benchmark shares."""

    source: Source
    rungs: list[RungPlan]
    segment_seconds: float
    ffmpeg: str
    #: ``-thread_type`` for the baselines' encoders (``None``: ffmpeg's default, frame threads).
    ffmpeg_thread_type: str | None
    rungs_args: tuple[str, ...]
    work_dir: Path
    #: Where Rungs runs (:mod:`bench.engine_api`): a directory holding the engine to measure.
    rungs_cwd: Path = REPO_ROOT


@dataclass
class RungTimes:
    """When a rung's work started and when it became playable (seconds since the job start)."""

    start_s: float
    playable_s: float


@dataclass
class SystemRun:
    """One run of one system."""

    system: str
    #: The first rung complete and listed in a master playlist (what a player can play through).
    time_to_playable_s: float
    #: The first rung's first segment written (Rungs: listed, the job READY in early playback).
    time_to_first_segment_s: float
    total_s: float
    cpu_s: float
    peak_rss_bytes: int
    frames_decoded: int
    source_frames: int
    bytes_written: int
    rungs: dict[str, RungTimes]
    out_dir: Path
    #: Anything else worth keeping: engine-reported times, per-process figures, commands.
    details: dict[str, Any] = field(default_factory=dict)
    #: Per rung, filled in by the quality pass (when it runs).
    psnr_db: dict[str, float] = field(default_factory=dict)
    ssim: dict[str, float] = field(default_factory=dict)

    def figures(self) -> dict[str, float]:
        """The figures medians are taken over."""
        return {"time_to_playable_s": self.time_to_playable_s,
                "time_to_first_segment_s": self.time_to_first_segment_s, "total_s": self.total_s,
                "cpu_s": self.cpu_s, "peak_rss_bytes": self.peak_rss_bytes,
                "frames_decoded": self.frames_decoded, "source_frames": self.source_frames,
                "bytes_written": self.bytes_written}

    def to_dict(self) -> dict[str, Any]:
        return {**self.figures(),
                "rungs": {name: {"start_s": round(t.start_s, 3),
                                 "playable_s": round(t.playable_s, 3)}
                          for name, t in self.rungs.items()},
                "psnr_db": self.psnr_db, "ssim": self.ssim, **self.details}


def run_system(name: str, setup: Setup) -> SystemRun:
    """Run system ``name`` (a process of its own: not ``RUNGS_GRPC``) once into a fresh
    ``work_dir/<name>``."""
    runner: dict[str, Callable[[Setup, Path], SystemRun]] = {
        RUNGS: run_rungs, ALL_AT_ONCE: run_all_at_once, PER_RUNG: run_per_rung}
    out = setup.work_dir / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    load = os.getloadavg()[0]
    run = runner[name](setup, out)
    # Other work on the machine shows here first: timings taken under load are slower.
    run.details["load_average_1m"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    return run


def run_rungs(setup: Setup, out: Path) -> SystemRun:
    """Rungs through its engine API in a subprocess whose imports are done; times are when its
    JSON events arrive, from the moment it is told to start the job."""
    hls = out / "hls"
    argv = commands.rungs_command(setup.source.path, hls, setup.segment_seconds,
                                  setup.rungs_args)
    run = checked(run_measured(argv, stderr_path=out / "stderr.log", read_stdout=True,
                                cwd=setup.rungs_cwd, start_after=LOADED))
    events = [(t, json.loads(line)) for t, line in run.lines if line.startswith("{")]
    first = {e["type"]: t for t, e in reversed(events)}
    summary = next(e for _, e in reversed(events) if e["type"] == "summary")
    if "ready" not in first or summary.get("state") != "COMPLETE":
        raise BenchError(f"rungs did not complete: {summary}")
    started = first.get("running", 0.0)
    published = {e["rung"]: t for t, e in events if e["type"] == "rung_published"}
    ready = next(e for _, e in events if e["type"] == "ready")
    first_rung = setup.rungs[0].name
    return SystemRun(
        system=RUNGS, time_to_playable_s=published[first_rung],
        time_to_first_segment_s=first.get("first_segment", published[first_rung]),
        total_s=run.wall_s, cpu_s=run.cpu_s,
        peak_rss_bytes=run.peak_rss_bytes, frames_decoded=summary["frames_decoded"],
        source_frames=summary["source_frames"], bytes_written=bytes_written(hls),
        rungs={plan.name: RungTimes(started, published[plan.name]) for plan in setup.rungs},
        out_dir=hls,
        details={
            # From the call to the job's running event (the source opened and probed).
            "running_s": round(started, 3),
            # READY on the first segment (an EVENT playlist) rather than the whole first rung.
            "early_playback": bool(ready.get("early_playback", False)),
            "ready_s": round(first["ready"], 3),
            "engine_time_to_ready_s": summary["time_to_ready_s"],
            "engine_total_s": summary["total_s"],
            "encode_fps": {r["rung"]: r["encode_fps"] for r in summary["rungs"]},
            **_process_details(run),
        })


def run_all_at_once(setup: Setup, out: Path) -> SystemRun:
    """One ffmpeg process for every rung; a rung is playable once its playlist (and the audio
    playlist) holds ENDLIST."""
    source, hls = setup.source, out / "hls"
    _make_folders(hls, setup)
    argv = commands.ffmpeg_all_at_once(setup.ffmpeg, source.path, setup.rungs, hls,
                                       setup.segment_seconds, source.has_audio,
                                       setup.ffmpeg_thread_type, source.frame_rate)
    run = checked(run_measured(argv, stderr_path=out / "stderr.log",
                                watch=_playlists(hls, setup, setup.rungs),
                                appear=_first_segment(hls, setup.rungs[0])))
    audio = run.endlist_s.get(AUDIO_FOLDER, 0.0)
    times = {plan.name: RungTimes(0.0, max(run.endlist_s.get(plan.name, run.wall_s), audio))
             for plan in setup.rungs}
    playable = times[setup.rungs[0].name].playable_s
    return SystemRun(
        system=ALL_AT_ONCE, time_to_playable_s=playable,
        time_to_first_segment_s=run.appeared_s.get(FIRST_SEGMENT, playable), total_s=run.wall_s,
        cpu_s=run.cpu_s, peak_rss_bytes=run.peak_rss_bytes,
        frames_decoded=_frames_decoded(run), source_frames=source.frames,
        bytes_written=bytes_written(hls), rungs=times, out_dir=hls,
        details={**_process_details(run), "playlist_endlist_s": _rounded(run.endlist_s)})


def run_per_rung(setup: Setup, out: Path) -> SystemRun:
    """One ffmpeg process per rung, lowest first, one after another; the first also does the
    audio."""
    source, hls = setup.source, out / "hls"
    _make_folders(hls, setup)
    times: dict[str, RungTimes] = {}
    runs: list[ProcessRun] = []
    origin = 0.0
    for index, plan in enumerate(setup.rungs):
        with_audio = index == 0 and source.has_audio
        argv = commands.ffmpeg_one_rung(setup.ffmpeg, source.path, plan, hls,
                                        setup.segment_seconds, with_audio,
                                        setup.ffmpeg_thread_type, source.frame_rate)
        run = checked(run_measured(argv, stderr_path=out / f"stderr-{plan.name}.log",
                                    watch=_playlists(hls, setup, [plan], with_audio),
                                    appear=_first_segment(hls, plan) if index == 0 else None))
        origin = origin or run.started_at
        offset = run.started_at - origin
        ended = run.endlist_s.get(plan.name, run.wall_s)
        if with_audio:
            ended = max(ended, run.endlist_s.get(AUDIO_FOLDER, 0.0))
        times[plan.name] = RungTimes(offset, offset + ended)
        runs.append(run)
    last = runs[-1]
    playable = times[setup.rungs[0].name].playable_s
    return SystemRun(
        system=PER_RUNG, time_to_playable_s=playable,
        time_to_first_segment_s=runs[0].appeared_s.get(FIRST_SEGMENT, playable),
        total_s=last.started_at - origin + last.wall_s, cpu_s=sum(r.cpu_s for r in runs),
        peak_rss_bytes=max(r.peak_rss_bytes for r in runs),
        frames_decoded=sum(_frames_decoded(r) for r in runs), source_frames=source.frames,
        bytes_written=bytes_written(hls), rungs=times, out_dir=hls,
        details={"processes": [{"rung": plan.name, **_process_details(run)}
                               for plan, run in zip(setup.rungs, runs, strict=True)]})


def _make_folders(out: Path, setup: Setup) -> None:
    for plan in setup.rungs:
        (out / plan.name).mkdir(parents=True, exist_ok=True)
    if setup.source.has_audio:
        (out / AUDIO_FOLDER).mkdir(parents=True, exist_ok=True)


def _playlists(out: Path, setup: Setup, plans: list[RungPlan],
               with_audio: bool = True) -> dict[str, Path]:
    watch = {plan.name: out / plan.name / PLAYLIST for plan in plans}
    if with_audio and setup.source.has_audio:
        watch[AUDIO_FOLDER] = out / AUDIO_FOLDER / PLAYLIST
    return watch


def _first_segment(out: Path, plan: RungPlan) -> dict[str, Path]:
    """The first rung's first segment: it appears (renamed into place) once complete."""
    return {FIRST_SEGMENT: out / plan.name / "seg_00000.m4s"}


def checked(run: ProcessRun) -> ProcessRun:
    """``run``, if it exited 0."""
    if run.returncode != 0:
        raise BenchError(f"{run.argv[0]} exited with {run.returncode}:\n{run.stderr_tail()}")
    return run


def _frames_decoded(run: ProcessRun) -> int:
    """Video frames ffmpeg says it decoded (its verbose end-of-run statistics)."""
    assert run.stderr_path is not None
    text = run.stderr_path.read_text(errors="replace")
    return sum(int(match.group(1)) for match in _FRAMES_DECODED.finditer(text))


def _process_details(run: ProcessRun) -> dict[str, Any]:
    return {"wall_s": round(run.wall_s, 3), "cpu_s": round(run.cpu_s, 3),
            "sampled_peak_rss_bytes": run.sampled_peak_rss_bytes,
            "kernel_peak_rss_bytes": run.kernel_peak_rss_bytes, "argv": run.argv}


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 3) for key, value in values.items()}
