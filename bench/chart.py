"""The timeline chart: one bar per rung per system, from when its work started to when the rung was
complete, with the moment each system became playable (a star) and its completion marked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend

from bench.systems import SystemRun

_COLOURS = ("#4c9be8", "#f0a030", "#d04a4a", "#58b368", "#9467bd")
_LABELS = {"rungs": "Rungs", "rungs_grpc": "Rungs via gRPC",
           "ffmpeg_all_at_once": "ffmpeg, one process",
           "ffmpeg_per_rung": "ffmpeg, one process per rung"}


def draw(runs: Mapping[str, SystemRun], rung_names: Sequence[str], path: Path,
         title: str) -> Path:
    """Write the chart for ``runs`` (one run per system, the median round) to ``path``."""
    rows = len(runs) * len(rung_names)
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.42 * rows + 0.3 * len(runs)))
    labels: list[str] = []
    y = 0.0
    for system, run in runs.items():
        first = system == next(iter(runs))
        top = y
        for index, rung in enumerate(rung_names):
            times = run.rungs[rung]
            ax.barh(y, times.playable_s - times.start_s, left=times.start_s, height=0.6,
                    color=_COLOURS[index % len(_COLOURS)], edgecolor="black", linewidth=0.4,
                    label=rung if first else "_nolegend_")
            ax.plot(times.playable_s, y, marker="|", color="black", markersize=14,
                    label="rung complete" if first and index == 0 else "_nolegend_")
            ax.annotate(f"{times.playable_s:.1f} s", (times.playable_s, y),
                        xytext=(9, -3), textcoords="offset points", fontsize=8)
            labels.append(f"{_LABELS.get(system, system)}  {rung}")
            y += 1
        bottom = y - 1
        ax.plot(run.time_to_first_segment_s, top, marker="v", color="black", markersize=7,
                zorder=5, label="first segment" if first else "_nolegend_")
        ax.plot(run.time_to_playable_s, top, marker="*", color="gold", markeredgecolor="black",
                markersize=15, zorder=5,
                label="job playable" if first else "_nolegend_")
        ax.annotate(f"playable {run.time_to_playable_s:.1f} s", (run.time_to_playable_s, top),
                    xytext=(-4, 9), textcoords="offset points", fontsize=8, ha="left")
        ax.vlines(run.total_s, top - 0.45, bottom + 0.45, colors="black", linestyles="dashed",
                  label="job complete" if first else "_nolegend_")
        y += 0.6
    ticks = [i + 0.6 * (i // len(rung_names)) for i in range(rows)]
    ax.set_yticks(ticks, labels)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the job started")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=7, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
