"""A description of the machine a benchmark ran on (timings mean little without it)."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import av
import psutil


def describe(ffmpeg: str) -> dict[str, Any]:
    """CPU, cores, memory, load, and the versions of everything measured."""
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "pyav": av.__version__,
        "pyav_ffmpeg": ".".join(map(str, av.library_versions.get("libavcodec", ()))),
        "ffmpeg_cli": _ffmpeg_version(ffmpeg),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ffmpeg_version(ffmpeg: str) -> str:
    done = subprocess.run([ffmpeg, "-hide_banner", "-version"], capture_output=True, text=True,
                          check=False)
    first = done.stdout.splitlines()[0] if done.stdout else "unknown"
    return first.removeprefix("ffmpeg version ").split(" Copyright")[0]


REPO_ROOT = Path(__file__).resolve().parent.parent


def snapshot_engine(into: Path) -> Path:
    """Copy ``engine/`` into ``into/engine`` and return ``into``: Rungs runs from the copy (as
    its working directory), so every round measures the engine as it was at the start even if
    the working tree changes meanwhile."""
    shutil.copytree(REPO_ROOT / "engine", into / "engine",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return into


def engine_fingerprint(root: Path = REPO_ROOT) -> dict[str, Any]:
    """The commit checked out and a hash of ``root/engine/**.py`` (others may be editing)."""
    digest = hashlib.sha256()
    for path in sorted((root / "engine").rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=False)
    return {"commit": done.stdout.strip() or None, "engine_sha256": digest.hexdigest()[:16]}
