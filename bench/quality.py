"""PSNR and SSIM of a rung against the source scaled to the rung's size with the same scaler.

One ffmpeg pass per rung: the rung's media playlist (HLS demuxer) and the source are decoded once,
the source is scaled with ``flags=area`` (the engine's AREA scaler), and the ``psnr`` and ``ssim``
filters compare them frame by frame; the averages are parsed from stderr.

A rung of a source above 60 fps has half its frames or fewer, each at a source frame's time, so
those are the frames compared. The filters stop at the rung's end (``shortest``): they went on
to pair its last frame with the source's next, which on 3 s of 120 fps took 0.77 dB off the PSNR.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

_PSNR = re.compile(r"PSNR y:\S+ u:\S+ v:\S+ average:(\S+)")
_SSIM = re.compile(r"SSIM Y:\S+ \(\S+\) U:\S+ \(\S+\) V:\S+ \(\S+\) All:(\S+)")
_STATS = "psnr-frames.log"


@dataclass(frozen=True)
class Quality:
    """One rung's quality against the scaled source."""

    psnr_db: float
    ssim: float
    #: Frames the filters compared (should equal the rung's frame count).
    frames: int


def measure(ffmpeg: str, playlist: Path, source: Path, width: int, height: int,
            work_dir: Path) -> Quality:
    """Compare the rung behind ``playlist`` with ``source`` scaled to ``width`` x ``height``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    stats = work_dir / _STATS
    stats.unlink(missing_ok=True)
    graph = (f"[1:v]setpts=PTS-STARTPTS,scale={width}:{height}:flags=area,format=yuv420p,"
             "split[ref1][ref2];"
             "[0:v]setpts=PTS-STARTPTS,format=yuv420p,split[out1][out2];"
             f"[out1][ref1]psnr=stats_file={_STATS}:shortest=1;[out2][ref2]ssim=shortest=1")
    argv = [ffmpeg, "-hide_banner", "-nostdin", "-nostats", "-i", str(playlist.resolve()),
            "-i", str(source.resolve()), "-lavfi", graph, "-f", "null", "-"]
    # Run in work_dir so the stats file name needs no escaping inside the filter graph.
    done = subprocess.run(argv, cwd=work_dir, capture_output=True, text=True, check=False)
    psnr, ssim = _PSNR.search(done.stderr), _SSIM.search(done.stderr)
    if done.returncode != 0 or psnr is None or ssim is None:
        tail = "\n".join(done.stderr.splitlines()[-15:])
        raise RuntimeError(f"quality measurement of {playlist} failed:\n{tail}")
    frames = len(stats.read_text().splitlines()) if stats.is_file() else 0
    return Quality(psnr_db=_number(psnr.group(1)), ssim=_number(ssim.group(1)), frames=frames)


def _number(text: str) -> float:
    return float("inf") if text == "inf" else float(text)
