"""``python -m bench``: run the systems interleaved, take medians, check the targets, report.

Progress goes to stderr; the table and the targets check to stdout (or, with ``--json``, the
whole result document); ``bench/results/latest.json`` and ``bench/results/timeline.png`` are
written every time.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import imageio_ffmpeg

from bench import chart, commands, floor, machine, quality, report, sources
from bench.outputs import settings_differences, x264_settings
from bench.service import Service
from bench.systems import (
    BASELINES,
    RUNGS,
    RUNGS_GRPC,
    SYSTEMS,
    BenchError,
    Setup,
    SystemRun,
    run_system,
)

RESULTS = Path(__file__).resolve().parent / "results"
QUICK_SOURCE, FULL_SOURCE, LONG_SOURCE = "4k4", "4k10", "4k60"
QUICK_NOTE = "quick mode: run without --quick for medians over 3 rounds of 10 s of 4K"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Rungs runs from a copy of engine/ taken now, so every round measures the same engine even
    # if the working tree changes meanwhile (kept outside the repository, removed at the end).
    with tempfile.TemporaryDirectory(prefix="rungs-bench-engine-") as snapshot:
        try:
            doc, runs, checks = _bench(args, machine.snapshot_engine(Path(snapshot)))
        except BenchError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
    results: Path = args.results
    results.mkdir(parents=True, exist_ok=True)
    (results / "latest.json").write_text(json.dumps(doc, indent=2) + "\n")
    rung_names = [rung["rung"] for rung in doc["settings"]["ladder"]]
    chart_path = chart.draw({name: report.median_run(runs[name]) for name in SYSTEMS}, rung_names,
                            results / "timeline.png", _title(doc))
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print_text(doc, rung_names, checks, chart_path)
    return 0


def _bench(args: argparse.Namespace, engine_dir: Path,
           ) -> tuple[dict[str, Any], dict[str, list[SystemRun]], list[report.Target]]:
    """Run everything; the result document, the runs, and the targets check."""
    started = time.monotonic()
    rounds = args.rounds or (1 if args.quick else 3)
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    source = sources.resolve(args.source or (QUICK_SOURCE if args.quick else FULL_SOURCE),
                             args.results / "cache")
    setup = Setup(source=source, rungs=commands.plan(source.path, args.segment_seconds),
                  segment_seconds=args.segment_seconds, ffmpeg=ffmpeg,
                  ffmpeg_thread_type=(None if args.ffmpeg_thread_type == "frame"
                                      else args.ffmpeg_thread_type),
                  rungs_args=tuple(args.rungs_args), work_dir=args.results / "work" / "main",
                  rungs_cwd=engine_dir)
    rung_names = [plan.name for plan in setup.rungs]
    _log(f"source {source.name}: {source.width}x{source.height} {source.frame_rate:g} fps "
         f"{source.duration_s:g} s, {source.frames} frames; rungs {', '.join(rung_names)}; "
         f"{rounds} round(s) of {', '.join(SYSTEMS)}")
    if args.quick:
        _log(QUICK_NOTE)
    if tuple(args.rungs_args) != commands.DEFAULT_RUNGS_ARGS:
        _log("note: --rungs-args reach the rungs system only; rungs_grpc takes the service's "
             "own options")
    sources.warm_page_cache(source.path)
    engine_used = machine.engine_fingerprint(engine_dir)
    doc: dict[str, Any] = {"machine": machine.describe(ffmpeg), "source": source.to_dict()}

    floor_raw = None
    if args.no_floor or (args.quick and not args.floor):
        _log("no floor (--no-floor, or --quick without --floor)")
    elif floor.raw_size(setup) > floor.MAX_RAW_BYTES:
        _log(f"no floor: the raw frames would take {floor.raw_size(setup) / 1e9:.1f} GB")
    else:
        _log("floor: decoding the source once into raw frames ...")
        floor_raw = floor.prepare(setup, setup.work_dir / "floor-raw")
    try:
        with Service(setup, setup.work_dir / RUNGS_GRPC) as service:
            runs, floor_runs = _interleaved(setup, rounds, not args.no_quality, floor_raw,
                                            service)
    finally:
        if floor_raw is not None:
            shutil.rmtree(floor_raw.parent, ignore_errors=True)
    floor_summary = floor.summary(floor_runs) if floor_runs else None
    summaries = {name: {**report.medians(runs[name]), **report.quality_medians(runs[name]),
                        "rounds": [run.to_dict() for run in runs[name]]}
                 for name in SYSTEMS}
    rss_name = args.rss_source or "none"
    rss_check = None if rss_name == "none" else _rss_check(args, rss_name, setup, summaries)
    checks = report.targets(summaries, rung_names[0], rss_check, floor_summary)
    # The engine's code, not the commit: a commit of other files is no change to what ran.
    changed = machine.engine_fingerprint()["engine_sha256"] != engine_used["engine_sha256"]
    if changed:
        _log("note: engine/ changed while the benchmark ran; every round used the copy taken "
             "at the start")
    doc["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    doc.update({
        "engine": {**engine_used, "working_tree_changed_during_run": changed},
        "settings": _settings(args, setup, rounds),
        "systems": summaries,
        "ratios": {f"rungs_vs_{name}": report.ratios(summaries, name) for name in BASELINES},
        "x264_settings_check": _settings_check(runs, rung_names),
        "rss_check": rss_check,
        "floor": floor_summary,
        "targets": [t.to_dict() for t in checks],
        "note": ("1 round per system: a single sample, not a median" if rounds == 1
                 else f"medians of {rounds} interleaved rounds"),
        "bench_wall_s": round(time.monotonic() - started, 1),
    })
    return doc, runs, checks


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_SOURCE} source, 1 round (under 3 minutes on 2 cores)")
    parser.add_argument("--source", help=f"a file, or one of {', '.join(sources.PRESETS)} "
                                         f"(default {FULL_SOURCE}; {QUICK_SOURCE} with --quick)")
    parser.add_argument("--rounds", type=int, default=0,
                        help="interleaved rounds (default 3; 1 with --quick)")
    parser.add_argument("--rss-source",
                        help=f"also run Rungs alone once on this source (e.g. {LONG_SOURCE}) to "
                             "check peak RSS against the long-source targets; adds about 6 "
                             "minutes for 4k60 on 2 cores (default: none)")
    parser.add_argument("--segment-seconds", type=float, default=4.0)
    parser.add_argument("--ffmpeg-thread-type", choices=("frame", "slice"), default="frame",
                        help="libx264 threading of the ffmpeg baselines: frame (ffmpeg's "
                             "default, and Rungs' for every rung but the first, which runs on "
                             "one thread or slices) or slice")
    parser.add_argument("--rungs-args", type=shlex.split,
                        default=list(commands.DEFAULT_RUNGS_ARGS),
                        help="extra arguments for rungs transcode (default %(default)s); "
                             "the rungs_grpc system takes the service's own options")
    parser.add_argument("--no-quality", action="store_true", help="skip PSNR and SSIM")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the floor (one decode and each encode from raw frames, "
                             "timed alone)")
    parser.add_argument("--floor", action="store_true",
                        help="run the floor in --quick mode too (it adds about 40 s)")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="where latest.json, timeline.png, cache/ and work/ go")
    parser.add_argument("--json", action="store_true",
                        help="print the result document instead of the table")
    return parser


def _interleaved(setup: Setup, rounds: int, quality_pass: bool, floor_raw: Path | None,
                 service: Service) -> tuple[dict[str, list[SystemRun]], list[floor.FloorRun]]:
    """A B C D (floor) A B C D (floor) ...: machine drift hits every system alike. Quality is
    measured after each run, outside its timed window (not for the gRPC runs: the same engine
    and encoder settings as Rungs' own run)."""
    runs: dict[str, list[SystemRun]] = {name: [] for name in SYSTEMS}
    floor_runs: list[floor.FloorRun] = []
    for index in range(rounds):
        for name in SYSTEMS:
            run = service.run() if name == RUNGS_GRPC else run_system(name, setup)
            runs[name].append(run)
            _log(f"round {index + 1}/{rounds} {name:19} first segment "
                 f"{run.time_to_first_segment_s:6.2f} s  playable {run.time_to_playable_s:6.2f} s"
                 f"  total {run.total_s:6.2f} s  cpu {run.cpu_s:6.1f} s"
                 f"  peak RSS {run.peak_rss_bytes / 1e6:5.0f} MB"
                 f"  frames decoded {run.frames_decoded}")
            if quality_pass and name != RUNGS_GRPC:
                _quality(setup, run)
        if floor_raw is not None:
            floor_run = floor.run(setup, floor_raw, setup.work_dir / "floor")
            floor_runs.append(floor_run)
            _log(f"round {index + 1}/{rounds} {'floor':19} decode {floor_run.decode_s:5.2f} s"
                 f"  encodes " + ", ".join(f"{k} {v:.2f} s" for k, v in
                                            floor_run.encode_s.items())
                 + f"  cpu {floor_run.cpu_s:6.1f} s")
    return runs, floor_runs


def _quality(setup: Setup, run: SystemRun) -> None:
    """PSNR and SSIM of every rung of ``run`` against the scaled source."""
    for plan in setup.rungs:
        measured = quality.measure(setup.ffmpeg, run.out_dir / plan.name / commands.PLAYLIST,
                                   setup.source.path, plan.rung.width, plan.rung.height,
                                   setup.work_dir / "quality" / run.system / plan.name)
        expected = commands.rung_frames(setup.source.frames, setup.source.frame_rate, plan)
        if measured.frames != expected:
            _log(f"warning: {run.system} {plan.name}: quality compared {measured.frames} frames,"
                 f" expected {expected}")
        run.psnr_db[plan.name], run.ssim[plan.name] = measured.psnr_db, measured.ssim
    _log(f"        {'quality':19} " + "  ".join(
        f"{rung} {run.psnr_db[rung]:.2f} dB / {run.ssim[rung]:.4f}" for rung in run.psnr_db))


def _rss_check(args: argparse.Namespace, name: str, main: Setup,
               summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Rungs alone, once, on the long source: is its peak RSS flat in the source's length?"""
    source = sources.resolve(name, args.results / "cache")
    setup = Setup(source=source, rungs=commands.plan(source.path, main.segment_seconds),
                  segment_seconds=main.segment_seconds, ffmpeg=main.ffmpeg,
                  ffmpeg_thread_type=main.ffmpeg_thread_type, rungs_args=main.rungs_args,
                  work_dir=args.results / "work" / "rss", rungs_cwd=main.rungs_cwd)
    _log(f"peak-RSS run: rungs alone on {source.name} ({source.duration_s:g} s, "
         f"{source.frames} frames)")
    sources.warm_page_cache(source.path)
    run = run_system(RUNGS, setup)
    _log(f"peak-RSS run: peak RSS {run.peak_rss_bytes / 1e6:.0f} MB, total {run.total_s:.1f} s")
    return {"source": source.name, "source_detail": source.to_dict(),
            "short_source": main.source.name,
            "short_source_peak_rss_bytes": summaries[RUNGS]["peak_rss_bytes"],
            **run.figures(), "run": run.to_dict()}


def _settings_check(runs: dict[str, list[SystemRun]], rung_names: list[str]) -> dict[str, Any]:
    """The x264 settings each system's streams carry, and any difference from Rungs'
    (threading aside)."""
    result: dict[str, Any] = {}
    for rung in rung_names:
        ours = x264_settings(runs[RUNGS][-1].out_dir / rung)
        result[rung] = {
            "threading": {name: {k: v for k, v in x264_settings(runs[name][-1].out_dir / rung)
                                 .items() if k in ("threads", "sliced_threads")}
                          for name in SYSTEMS},
            "differences": {name: settings_differences(
                ours, x264_settings(runs[name][-1].out_dir / rung))
                for name in SYSTEMS if name != RUNGS},
        }
    return result


def _settings(args: argparse.Namespace, setup: Setup, rounds: int) -> dict[str, Any]:
    return {
        "quick": args.quick, "rounds": rounds, "order": list(SYSTEMS),
        "segment_seconds": setup.segment_seconds,
        "ffmpeg_thread_type": args.ffmpeg_thread_type, "rungs_args": list(setup.rungs_args),
        "ladder": [{"rung": p.name, "width": p.rung.width, "height": p.rung.height,
                    "preset": p.rung.preset, "crf": p.rung.crf,
                    "maxrate_kbps": p.rung.maxrate_kbps, "bufsize_kbps": p.rung.bufsize_kbps,
                    "x264": p.x264} for p in setup.rungs],
    }


def _print_text(doc: dict[str, Any], rung_names: list[str], checks: list[report.Target],
                chart_path: Path) -> None:
    source, settings, summaries = doc["source"], doc["settings"], doc["systems"]
    print(f"source: {source['name']} {source['width']}x{source['height']} "
          f"{source['frame_rate']:g} fps {source['duration_s']:g} s ({source['frames']} frames)")
    print(f"machine: {doc['machine']['cpu']}, {doc['machine']['cores']} cores, load average "
          f"{doc['machine']['load_average'][0]} at the start, "
          f"{doc['machine']['load_average_end'][0]} at the end; "
          f"ffmpeg {doc['machine']['ffmpeg_cli']}")
    print(f"{doc['note']}; ffmpeg libx264 threads: {settings['ffmpeg_thread_type']}; "
          f"rungs args: {' '.join(settings['rungs_args'])}")
    print()
    print(report.table(summaries, rung_names))
    print()
    print(_playable_note(summaries, rung_names[0]))
    print()
    print(report.targets_text(checks))
    if doc["floor"] is not None:
        print(report.floor_text(doc["floor"], summaries))
    for rung, check in doc["x264_settings_check"].items():
        for name, differences in check["differences"].items():
            if differences:
                print(f"note: {name} {rung} x264 settings differ from Rungs': {differences}")
    print()
    print(f"wrote {chart_path.parent / 'latest.json'} and {chart_path} "
          f"(benchmark took {doc['bench_wall_s']:.0f} s)")


def _playable_note(summaries: dict[str, dict[str, Any]], first_rung: str) -> str:
    """What "playable" and "first segment" mean for each system."""
    early = any(r.get("early_playback") for r in summaries[RUNGS]["rounds"])
    rungs_first = ("READY: listed in the master as a growing EVENT playlist (early playback)"
                   if early else "written (early playback off)")
    return (f"time_to_playable_s: the whole {first_rung} rung complete and listed in a master "
            f"playlist (ffmpeg: its {first_rung} and audio playlists hold ENDLIST). "
            f"time_to_first_segment_s: the first {first_rung} segment; rungs {rungs_first}, "
            "ffmpeg when the file appears. ffmpeg's times are from its process start; rungs' "
            "from the engine API call in a process that has done its imports (CPU seconds from "
            "then); rungs_grpc's from the Transcode call to a server already running (its CPU "
            "and peak RSS are the server's during the job).")


def _title(doc: dict[str, Any]) -> str:
    source = doc["source"]
    rounds = doc["settings"]["rounds"]
    what = ("1 round" if rounds == 1
            else f"each system's round with the median total, of {rounds}")
    return (f"{source['name']}: {source['width']}x{source['height']}, {source['duration_s']:g} s,"
            f" {what};\n"
            "each bar runs from the start of a rung's work to when it was complete")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
