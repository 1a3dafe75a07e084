"""Medians over rounds, Rungs / ffmpeg ratios, the targets check, and the stdout table."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from bench.systems import ALL_AT_ONCE, BASELINES, PER_RUNG, RUNGS, RUNGS_GRPC, SystemRun

#: The figures of the table, in order (how each is shown: ``_show``).
FIGURES = ("time_to_playable_s", "time_to_first_segment_s", "total_s", "cpu_s", "peak_rss_bytes",
           "frames_decoded", "source_frames", "bytes_written")
#: Peak RSS limit for the 60 s 4K source.
RSS_LIMIT_BYTES = 1_500_000_000
#: "Flat": the long source's peak RSS at most this many times the short one's.
RSS_FLAT_RATIO = 1.10
PSNR_TOLERANCE_DB = 0.1
#: Rungs' total may be at most this many times the per-rung ffmpeg's.
PER_RUNG_FACTOR = 0.9


def median_run(runs: Sequence[SystemRun]) -> SystemRun:
    """The round whose total is the median (the one the timeline chart shows)."""
    ordered = sorted(runs, key=lambda r: r.total_s)
    return ordered[(len(ordered) - 1) // 2]


def medians(runs: Sequence[SystemRun]) -> dict[str, float]:
    """The median of every figure over the rounds."""
    values = [run.figures() for run in runs]
    result: dict[str, float] = {}
    for name in FIGURES:
        middle = statistics.median(v[name] for v in values)
        result[name] = round(middle, 3) if name.endswith("_s") else int(middle)
    return result


def quality_medians(runs: Sequence[SystemRun]) -> dict[str, Any]:
    """Median PSNR and SSIM per rung over the rounds, and their range (x264 with VBV and
    several threads is not deterministic, so the same command gives slightly different
    streams)."""
    result: dict[str, Any] = {}
    for metric in ("psnr_db", "ssim"):
        per_rung: dict[str, list[float]] = {}
        for run in runs:
            for rung, value in getattr(run, metric).items():
                per_rung.setdefault(rung, []).append(value)
        if per_rung:
            result[metric] = {r: round(statistics.median(v), 4) for r, v in per_rung.items()}
            result[f"{metric}_range"] = {r: [min(v), max(v)] for r, v in per_rung.items()}
    return result


def ratios(systems: dict[str, dict[str, Any]], baseline: str) -> dict[str, Any]:
    """Rungs / ``baseline`` for every figure, PSNR and SSIM per rung included."""
    ours, theirs = systems[RUNGS], systems[baseline]
    out: dict[str, Any] = {name: _ratio(ours[name], theirs[name]) for name in FIGURES}
    for metric in ("psnr_db", "ssim"):
        out[metric] = {rung: _ratio(value, theirs.get(metric, {}).get(rung))
                       for rung, value in ours.get(metric, {}).items()}
    return out


@dataclass(frozen=True)
class Target:
    """One goal: ``value`` compared with ``limit``; ``passed`` is None when not measured."""

    name: str
    value: float | None
    limit: float | None
    passed: bool | None
    detail: str = ""

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "MISS", None: "SKIP"}[self.passed]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def targets(systems: dict[str, dict[str, Any]], first_rung: str,
            rss_check: dict[str, Any] | None, floor: dict[str, Any] | None = None,
            ) -> list[Target]:
    """The goals Rungs is held to. A goal against a baseline is judged on the median of the
    rounds' ratios (each round's two runs were minutes apart), the others on the medians. With
    ``floor``, each total-time target says whether the floor's estimate leaves it within reach
    on this machine."""
    ours, once, per_rung = systems[RUNGS], systems[ALL_AT_ONCE], systems[PER_RUNG]
    checks = [
        _against("time to playable <= 0.1 x ffmpeg all-at-once total", ours, once,
                 "time_to_playable_s", 0.1, "total_s"),
        _against(f"time to playable <= 1.1 x ffmpeg {first_rung}-only pass", ours, per_rung,
                 "time_to_playable_s", 1.1),
        _bounded(_against("total <= 1.0 x ffmpeg all-at-once total", ours, once, "total_s", 1.0),
                 floor, once, 1.0),
        _share_needed(_bounded(_against("total <= 0.9 x ffmpeg per-rung total", ours, per_rung,
                                        "total_s", PER_RUNG_FACTOR), floor, per_rung,
                               PER_RUNG_FACTOR), systems, floor),
    ]
    service = systems.get(RUNGS_GRPC)
    if service is not None:
        checks.append(_against(f"via gRPC: time to playable <= 1.1 x ffmpeg {first_rung}-only "
                               f"pass", service, per_rung, "time_to_playable_s", 1.1))
    decoded = ours["frames_decoded"] / ours["source_frames"] if ours["source_frames"] else 0.0
    checks.append(Target("frames decoded = 1.00 x source", round(decoded, 4), 1.0,
                         decoded == 1.0, f"{ours['frames_decoded']} / {ours['source_frames']}"))
    checks += _rss_targets(ours, rss_check)
    for rung, psnr in ours.get("psnr_db", {}).items():
        best = max(once.get("psnr_db", {}).get(rung, -math.inf),
                   per_rung.get("psnr_db", {}).get(rung, -math.inf))
        if math.isinf(best):
            checks.append(Target(f"PSNR {rung} >= ffmpeg's - 0.1 dB", psnr, None, None,
                                 "no ffmpeg figure"))
            continue
        checks.append(_at_least(f"PSNR {rung} >= ffmpeg's - 0.1 dB", psnr,
                                best - PSNR_TOLERANCE_DB, "dB"))
    if not ours.get("psnr_db"):
        checks.append(Target("PSNR of each rung >= ffmpeg's - 0.1 dB", None, None, None,
                             "quality not measured (--no-quality)"))
    return checks


def _rss_targets(ours: dict[str, Any], rss_check: dict[str, Any] | None) -> list[Target]:
    name_limit = "peak RSS <= 1.5 GB on the 60 s 4K source"
    name_flat = f"peak RSS flat, long vs short source (<= {RSS_FLAT_RATIO:.2f} x)"
    if rss_check is None:
        why = "no long-source run (--rss-source)"
        return [Target(name_limit, None, RSS_LIMIT_BYTES, None, why),
                Target(name_flat, None, RSS_FLAT_RATIO, None, why)]
    long_peak = rss_check["peak_rss_bytes"]
    short_peak = ours["peak_rss_bytes"]
    flat = long_peak / short_peak if short_peak else math.inf
    label = f"{rss_check['source']} vs {rss_check['short_source']}"
    return [
        Target(name_limit.replace("the 60 s 4K source", rss_check["source"]), long_peak,
               RSS_LIMIT_BYTES, long_peak <= RSS_LIMIT_BYTES,
               f"{_mb(long_peak)} vs {_mb(RSS_LIMIT_BYTES)}"),
        Target(name_flat, round(flat, 3), RSS_FLAT_RATIO, flat <= RSS_FLAT_RATIO,
               f"{label}: {_mb(long_peak)} vs {_mb(short_peak)}"),
    ]


def _against(name: str, ours: dict[str, Any], theirs: dict[str, Any], figure: str,
             factor: float, their_figure: str | None = None) -> Target:
    """``ours[figure] <= factor x theirs[their_figure]``, judged round by round.

    Runs of one round are minutes apart, runs of different rounds up to an hour, and this
    machine's speed drifts by a third over that (the same ffmpeg command took 65 to 88 s in
    one run): the medians of the two systems can come from different spells, the ratio of one
    round's two runs cannot. So with two rounds or more the verdict is the median of the
    rounds' ratios; the medians are shown beside it. ``value`` and ``limit`` stay in seconds
    (the medians), which is what the floor's estimate is weighed against."""
    value, limit = ours[figure], factor * theirs[their_figure or figure]
    target = _at_most(name, value, limit, "s")
    pairs = zip(ours.get("rounds", []), theirs.get("rounds", []), strict=False)
    each = [mine[figure] / other[their_figure or figure] for mine, other in pairs
            if mine.get(figure) and other.get(their_figure or figure)]
    if len(each) < 2:
        return target
    middle = statistics.median(each)
    rounds = ", ".join(f"{ratio:.2f}" for ratio in each)
    return replace(target, passed=middle <= factor,
                   detail=f"Rungs / ffmpeg round by round {rounds}: median {middle:.2f} vs "
                          f"{factor:.2f}; medians {target.detail}")


def _bounded(target: Target, floor: dict[str, Any] | None, theirs: dict[str, Any],
             factor: float) -> Target:
    """``target`` with the floor's estimate beside its limit: a one-decode system running one
    encoder at a time finishes about no sooner than its CPU spread over the cores, nor than the
    encoders' own times end to end. An estimate, not a strict bound (see ``bench.floor``).
    Round by round, as the verdict, when the floor has a round for each of the baseline's."""
    if floor is None or target.limit is None:
        return target
    rounds, theirs_rounds = floor.get("rounds", []), theirs.get("rounds", [])
    if len(rounds) < 2 or len(rounds) != len(theirs_rounds):
        bound = max(floor["bound_total_s"], floor.get("encoders_alone_s", 0.0))
        verdict = "within reach" if bound <= target.limit else "out of reach"
        return replace(target, detail=f"{target.detail}; one encoder at a time, the floor's "
                                      f"estimate {bound:.2f} s: {verdict}")
    bounds = [max(r["cpu_s"] / floor["cores"], sum(r["encode_s"].values())) for r in rounds]
    limits = [factor * run["total_s"] for run in theirs_rounds]
    each = ", ".join(f"{bound:.1f} vs {limit:.1f} s" for bound, limit in zip(bounds, limits,
                                                                           strict=True))
    reachable = sum(bound <= limit for bound, limit in zip(bounds, limits, strict=True))
    return replace(target, detail=f"{target.detail}; one encoder at a time, the floor's "
                                  f"estimate against the limit round by round {each}: within "
                                  f"reach in {reachable} of {len(bounds)}")


def _share_needed(target: Target, systems: dict[str, dict[str, Any]],
                  floor: dict[str, Any] | None) -> Target:
    """The per-rung total target with the share of the cores a one-decode system must keep busy
    to meet it, round by round, beside the busiest share any system kept in the run.

    Decoding once saves the per-rung ffmpeg two of its three decodes and nothing else: the same
    scalers and encoders at the same settings do the same work. So a one-decode system spends
    about the per-rung run's CPU seconds less two of the floor's decodes (an estimate: encoders
    that share the cores have used less), and to finish within the limit it must keep that share
    of the cores busy from the start to the end. Unlike the
    totals, the share hardly moves when the machine drifts: it is a ratio of work done in the
    same spell."""
    per_rung_rounds = systems[PER_RUNG].get("rounds", [])
    if floor is None or not per_rung_rounds or len(floor.get("rounds", [])) < len(per_rung_rounds):
        return target
    cores = floor["cores"]
    work = [run["cpu_s"] - 2 * floor_run["decode_cpu_s"]
            for run, floor_run in zip(per_rung_rounds, floor["rounds"], strict=False)]
    needed = [cpu / (cores * PER_RUNG_FACTOR * run["total_s"])
              for cpu, run in zip(work, per_rung_rounds, strict=True)]
    busiest, share = max(((name, busy_share(system, cores)) for name, system in systems.items()),
                         key=lambda pair: pair[1])
    rounds = ", ".join(f"{value:.1%}" for value in needed)
    middle = statistics.median(needed)
    return replace(target, detail=(
        f"{target.detail}; a one-decode system spends about the per-rung CPU less two "
        f"decodes ({statistics.median(work):.1f} s), so it must keep about {middle:.1%} of the "
        f"{cores} cores busy from start to end to meet it (round by round {rounds})"
        f"{': more than there is' if middle > 1 else ''}; the busiest system in this run kept "
        f"{share:.1%} ({busiest})"))


def busy_share(system: dict[str, Any], cores: int) -> float:
    """The median over rounds of the share of the cores a system kept busy: CPU seconds over
    the cores times its total time."""
    rounds = system.get("rounds") or [system]
    return float(statistics.median(run["cpu_s"] / (cores * run["total_s"]) for run in rounds))


def floor_text(floor: dict[str, Any], systems: dict[str, dict[str, Any]]) -> str:
    """The floor in a line: its parts, and its estimate against each system's total."""
    encodes = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in floor["encode_s"].items())
    against = ", ".join(f"{_ratio(floor['bound_total_s'], systems[name]['total_s']):.2f} x "
                        f"{name}" for name in (ALL_AT_ONCE, PER_RUNG))
    return (f"floor: one decode {floor['decode_s']:.2f} s, encodes from raw frames {encodes} "
            f"(one after another {floor['one_after_another_s']:.2f} s); {floor['cpu_s']:.1f} s "
            f"of CPU with each encoder alone on the machine, so a one-decode system that runs "
            f"one encoder at a time needs about {floor['bound_total_s']:.2f} s on "
            f"{floor['cores']} cores or more ({against}), and about the encoders' own times end "
            f"to end ({floor['encoders_alone_s']:.2f} s); an estimate, not a strict bound: "
            f"encoders sharing the cores fill them better and can use less CPU (ffmpeg all at "
            f"once: {systems[ALL_AT_ONCE]['cpu_s']:.1f} s)")


def _at_most(name: str, value: float, limit: float, unit: str) -> Target:
    return Target(name, round(value, 3), round(limit, 3), value <= limit,
                  f"{value:.2f} {unit} vs limit {limit:.2f} {unit}")


def _at_least(name: str, value: float, limit: float, unit: str) -> Target:
    return Target(name, round(value, 3), round(limit, 3), value >= limit,
                  f"{value:.2f} {unit} vs floor {limit:.2f} {unit}")


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return round(ours / theirs, 3)


# -- text ------------------------------------------------------------------------------------


def table(systems: dict[str, dict[str, Any]], rung_names: Sequence[str]) -> str:
    """Medians per system and the Rungs / ffmpeg ratios, one line per figure."""
    shown = [name for name in (RUNGS, RUNGS_GRPC, *BASELINES) if name in systems]
    labels = {RUNGS: "rungs", RUNGS_GRPC: "rungs gRPC", ALL_AT_ONCE: "ffmpeg 1 proc",
              PER_RUNG: "ffmpeg per rung"}
    header = ("figure", *(labels[name] for name in shown), "R/1proc", "R/per-rung")
    rows: list[tuple[str, ...]] = []
    for name in FIGURES:
        rows.append(_row(name, [systems[s][name] for s in shown],
                         [systems[s][name] for s in BASELINES]))
    for metric in ("psnr_db", "ssim"):
        for rung in rung_names:
            rows.append(_row(f"{metric} {rung}",
                             [systems[s].get(metric, {}).get(rung) for s in shown],
                             [systems[s].get(metric, {}).get(rung) for s in BASELINES]))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                       for i, cell in enumerate(row)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def targets_text(checks: Sequence[Target]) -> str:
    return "\n".join(f"{t.verdict:4}  {t.name}  ({t.detail})" for t in checks)


def _row(name: str, values: list[Any], baselines: list[Any]) -> tuple[str, ...]:
    """The figure for each system shown, then Rungs' (the first) over each baseline's."""
    cells = [_show(name, v) for v in values]
    return (name, *cells, *(_show_ratio(_ratio(values[0], other)) for other in baselines))


def _show(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name.endswith("_bytes") or name == "bytes_written":
        return _mb(value)
    if name.endswith("_s"):
        return f"{value:.2f} s"
    if name.startswith("psnr"):
        return f"{value:.2f} dB"
    if name.startswith("ssim"):
        return f"{value:.4f}"
    return str(value)


def _show_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _mb(value: float) -> str:
    return f"{value / 1e6:,.0f} MB"
