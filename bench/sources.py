"""The sources the benchmark runs on: generated samples (cached) or any file, and what they hold."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from engine.sample import make_sample


@dataclass(frozen=True)
class SamplePreset:
    """A source :func:`engine.sample.make_sample` generates (noise texture, moving bar, tone)."""

    width: int
    height: int
    seconds: float
    fps: int = 30

    @property
    def file_name(self) -> str:
        return f"sample-{self.width}x{self.height}-{self.seconds:g}s-{self.fps}fps.mp4"


#: Names ``--source`` accepts besides a path.
PRESETS: dict[str, SamplePreset] = {
    "4k4": SamplePreset(3840, 2160, 4.0),
    "4k10": SamplePreset(3840, 2160, 10.0),
    "4k60": SamplePreset(3840, 2160, 60.0),
    "1080p10": SamplePreset(1920, 1080, 10.0),
}


@dataclass(frozen=True)
class Source:
    """One source file and what the benchmark needs to know about it."""

    #: The preset name, or the file name for ``--source PATH``.
    name: str
    path: Path
    width: int
    height: int
    frame_rate: float
    duration_s: float
    #: Video packets in the file, counted by demuxing it (one per frame).
    frames: int
    has_audio: bool
    size_bytes: int
    generated: bool

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def resolve(name_or_path: str, cache_dir: Path) -> Source:
    """A preset (generated into ``cache_dir`` the first time) or an existing file."""
    preset = PRESETS.get(name_or_path)
    if preset is None:
        path = Path(name_or_path)
        if not path.is_file():
            known = ", ".join(PRESETS)
            raise SystemExit(f"bench: --source {name_or_path!r} is neither a file nor one of "
                             f"{known}")
        return describe(path.name, path, generated=False)
    path = cache_dir / preset.file_name
    if not path.is_file():
        print(f"generating {path} ({preset.width}x{preset.height}, {preset.seconds:g} s, "
              f"{preset.fps} fps, with audio) ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        make_sample(path, width=preset.width, height=preset.height, seconds=preset.seconds,
                    fps=preset.fps)
        print(f"generated in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    return describe(name_or_path, path, generated=True)


def describe(name: str, path: Path, *, generated: bool) -> Source:
    """Probe ``path`` with PyAV and count its video packets (a demux pass, no decoding)."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        rate = video.average_rate or video.guessed_rate or Fraction(30)
        duration = (float(container.duration) / av.time_base if container.duration
                    else float((video.duration or 0) * (video.time_base or 0)))
        has_audio = bool(container.streams.audio)
        frames = sum(1 for packet in container.demux(video) if packet.size)
        width, height = video.codec_context.width, video.codec_context.height
    return Source(name=name, path=path.resolve(), width=width, height=height,
                  frame_rate=round(float(rate), 3), duration_s=round(duration, 3),
                  frames=frames, has_audio=has_audio, size_bytes=path.stat().st_size,
                  generated=generated)


def warm_page_cache(path: Path) -> None:
    """Read the file once so the first timed run does not pay for cold disk reads."""
    with path.open("rb") as handle:
        while handle.read(1 << 24):
            pass
