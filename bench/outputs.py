"""Read back what a system wrote: bytes on disk, and the x264 settings inside its streams."""

from __future__ import annotations

import re
from pathlib import Path

#: x264 writes its settings into the first access unit as an SEI: "x264 - core ... options: ...".
_OPTIONS = re.compile(rb"x264 - core \d+.*? - H\.264/MPEG-4 AVC codec .*?options: ([^\x00]*)")
#: Settings that describe threading rather than the encode; reported, not compared.
THREADING_KEYS = frozenset({"threads", "lookahead_threads", "sliced_threads", "slices"})


def bytes_written(out_dir: Path) -> int:
    """Total size of every file under ``out_dir``."""
    return sum(path.stat().st_size for path in out_dir.rglob("*") if path.is_file())


def x264_settings(rung_dir: Path) -> dict[str, str]:
    """The x264 options string of the first segment in ``rung_dir``, as a dict ({} if none)."""
    segments = sorted(rung_dir.glob("seg_*"))
    if not segments:
        return {}
    with segments[0].open("rb") as handle:
        head = handle.read(1 << 16)
    match = _OPTIONS.search(head)
    if match is None:
        return {}
    pairs = match.group(1).decode("ascii", errors="replace").split()
    return dict(pair.split("=", 1) for pair in pairs if "=" in pair)


def settings_differences(reference: dict[str, str], other: dict[str, str]) -> dict[str, str]:
    """Encode settings (threading aside) that differ: ``key -> "reference vs other"``."""
    keys = (reference.keys() | other.keys()) - THREADING_KEYS
    return {key: f"{reference.get(key)} vs {other.get(key)}" for key in sorted(keys)
            if reference.get(key) != other.get(key)}
