"""The floor: what decoding once and the encoders alone cost on this machine.

Each round, the ffmpeg CLI decodes the source and throws the frames away (the cost of one
decode), then encodes each rung from raw decoded frames (decoded once before the rounds and read
from the page cache), one after another, with the baselines' settings. A system that decodes
once and encodes every rung with these encoders does about this much work, so its total time
is about this CPU time spread perfectly over every core, or more. That estimate is what the
targets are weighed against. It is not a strict bound: the floor's encoders each run alone and
read raw frames through ffmpeg's rawvideo demuxer, and Rungs has come in under it (run AB in
the README: 55.3 s and 102.6 CPU-s in a round whose floor was 58.2 s and 109.0 CPU-s).
"""

from __future__ import annotations

import os
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import commands
from bench.measure import ProcessRun, run_measured
from bench.systems import Setup, checked

#: Raw frames larger than this are not written (60 s of 4K would be 22 GB): no floor then.
MAX_RAW_BYTES = 8 << 30


@dataclass(frozen=True)
class FloorRun:
    """One round of the floor."""

    decode_s: float
    decode_cpu_s: float
    #: Per rung: wall and CPU seconds of its encode from raw frames.
    encode_s: dict[str, float]
    encode_cpu_s: dict[str, float]

    @property
    def cpu_s(self) -> float:
        """One decode and every encode."""
        return self.decode_cpu_s + sum(self.encode_cpu_s.values())

    @property
    def one_after_another_s(self) -> float:
        """One decode, then each encode alone."""
        return self.decode_s + sum(self.encode_s.values())

    def to_dict(self) -> dict[str, Any]:
        return {"decode_s": round(self.decode_s, 3), "decode_cpu_s": round(self.decode_cpu_s, 3),
                "encode_s": _rounded(self.encode_s), "encode_cpu_s": _rounded(self.encode_cpu_s),
                "cpu_s": round(self.cpu_s, 3),
                "one_after_another_s": round(self.one_after_another_s, 3)}


def raw_size(setup: Setup) -> int:
    source = setup.source
    return source.frames * source.width * source.height * 3 // 2


def prepare(setup: Setup, folder: Path) -> Path:
    """Decode the source once into ``folder/frames.yuv`` (not timed)."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder / "frames.yuv"
    _run(commands.raw_frames(setup.ffmpeg, setup.source.path, raw, setup.rungs[0],
                             setup.source.frame_rate), folder / "prepare.log")
    return raw


def run(setup: Setup, raw: Path, out: Path) -> FloorRun:
    """One round: the decode alone, then each rung's encode from ``raw``."""
    shutil.rmtree(out, ignore_errors=True)
    source = setup.source
    decode = _run(commands.decode_only(setup.ffmpeg, source.path), out / "decode.log")
    walls: dict[str, float] = {}
    cpus: dict[str, float] = {}
    for plan in setup.rungs:
        (out / plan.name).mkdir(parents=True)
        encode = _run(commands.encode_only(setup.ffmpeg, raw, source.width, source.height,
                                           plan, out, setup.segment_seconds,
                                           setup.ffmpeg_thread_type),
                      out / f"{plan.name}.log")
        walls[plan.name], cpus[plan.name] = encode.wall_s, encode.cpu_s
    return FloorRun(decode.wall_s, decode.cpu_s, walls, cpus)


def summary(runs: Sequence[FloorRun]) -> dict[str, Any]:
    """Medians over the rounds, and the estimate of a one-decode system's total time."""
    cores = os.cpu_count() or 1
    cpu = statistics.median(r.cpu_s for r in runs)
    encode_s = {name: statistics.median(r.encode_s[name] for r in runs)
                for name in runs[0].encode_s}
    return {
        "cpu_s": round(cpu, 3),
        "one_after_another_s": round(statistics.median(r.one_after_another_s for r in runs), 3),
        "decode_s": round(statistics.median(r.decode_s for r in runs), 3),
        "encode_s": _rounded(encode_s),
        "cores": cores,
        # Two estimates of the least total of a one-decode system running one encoder at a time:
        # its CPU spread perfectly over every core, and each encoder's own time end to end (an
        # encoder alone does not keep every core busy; the decode is not counted).
        "bound_total_s": round(cpu / cores, 3),
        "encoders_alone_s": round(sum(encode_s.values()), 3),
        "rounds": [r.to_dict() for r in runs],
    }


def _run(argv: list[str], log: Path) -> ProcessRun:
    return checked(run_measured(argv, stderr_path=log))


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 3) for key, value in values.items()}
