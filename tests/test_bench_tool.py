"""The benchmark tool's own logic (``bench/``): fast, no media, part of the default run."""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

from bench import commands, report
from bench.measure import run_measured
from bench.outputs import settings_differences, x264_settings
from bench.systems import ALL_AT_ONCE, PER_RUNG, RUNGS, RUNGS_GRPC
from engine.gop import grid_rate
from engine.hwaccel import SOFTWARE_ENCODER, encoder_options
from engine.ladder import MAX_FRAME_RATE, Rung, default_settings


def plan(short_side: int, width: int, frame_rate: Fraction = Fraction(30)) -> commands.RungPlan:
    settings = default_settings(short_side)
    assert settings.preset and settings.crf is not None and settings.maxrate_kbps
    rung = Rung(f"{short_side}p", width, short_side, frame_rate, settings.preset, settings.crf,
                settings.maxrate_kbps, settings.bufsize_kbps or 2 * settings.maxrate_kbps)
    return commands.RungPlan(rung, encoder_options(SOFTWARE_ENCODER, rung,
                                                   commands.gop_frames(4.0)))


def test_all_at_once_uses_the_engine_settings(tmp_path: Path) -> None:
    plans = [plan(720, 1280), plan(1080, 1920)]
    argv = commands.ffmpeg_all_at_once("ffmpeg", tmp_path / "in.mp4", plans, tmp_path, 4.0,
                                       True, None, 30.0)
    graph = argv[argv.index("-filter_complex") + 1]
    assert graph.startswith("[0:v]split=2[s0][s1]")
    assert "scale=1280:720:flags=area" in graph and "scale=1920:1080:flags=area" in graph
    assert argv.count("-force_key_frames") == 2
    assert "expr:gte(t,n_forced*4)" in argv
    assert argv.count("-x264-params") == 2
    assert plans[0].x264["x264-params"] in argv
    assert "keyint=480:min-keyint=480:scenecut=0" in plans[0].x264["x264-params"]
    assert argv[argv.index("-b:a") + 1] == "128000"  # the engine's 128 kbit/s AAC
    assert argv.count("-f") == 3  # two rungs and the audio, each its own HLS output
    assert "-thread_type" not in argv


def test_one_rung_has_its_own_decode_and_optional_audio(tmp_path: Path) -> None:
    fast = plan(1080, 1920, grid_rate(Fraction(120), MAX_FRAME_RATE))  # the ladder's, for 120 fps
    argv = commands.ffmpeg_one_rung("ffmpeg", tmp_path / "in.mp4", fast, tmp_path,
                                    2.0, False, "slice", 120.0)
    assert argv.count("-i") == 1 and "-b:a" not in argv
    assert argv[argv.index("-thread_type") + 1] == "slice"
    assert argv[argv.index("-filter_complex") + 1].startswith("[0:v]fps=60,scale=1920:1080")
    assert "expr:gte(t,n_forced*2)" in argv


def test_the_baselines_keep_the_frames_the_engine_keeps(tmp_path: Path) -> None:
    """A 100 fps source's rungs play at 50 fps (engine.gop.grid_rate: every other frame),
    not at the 60 fps cap: the baselines, the floor's raw frames and the expected frame count
    follow the rungs' rate."""
    rungs = [plan(720, 1280, grid_rate(Fraction(100), MAX_FRAME_RATE)), plan(1080, 1920,
                                                                               Fraction(50))]
    assert rungs[0].rung.frame_rate == 50
    all_at_once = commands.ffmpeg_all_at_once("ffmpeg", tmp_path / "in.mp4", rungs, tmp_path,
                                              4.0, False, None, 100.0)
    assert all_at_once[all_at_once.index("-filter_complex") + 1].startswith("[0:v]fps=50,split")
    raw = commands.raw_frames("ffmpeg", tmp_path / "in.mp4", tmp_path / "raw", rungs[0], 100.0)
    assert raw[raw.index("-vf") + 1] == "fps=50,format=yuv420p"
    encode = commands.encode_only("ffmpeg", tmp_path / "raw", 3840, 2160, rungs[1], tmp_path,
                                  4.0, None)
    assert encode[encode.index("-r") + 1] == "50"
    assert commands.rung_frames(300, 100.0, rungs[0]) == 150
    same = plan(720, 1280, Fraction(30000, 1001))
    assert commands.rung_frames(300, 29.97, same) == 300
    assert "fps=" not in " ".join(commands.raw_frames("ffmpeg", tmp_path / "in.mp4",
                                                      tmp_path / "raw", same, 29.97))
    # bench.sources rounds the source's rate to 3 decimals, here up: no frame is dropped.
    rounded_up = plan(720, 1280, Fraction(299996, 10000))
    assert "fps=" not in " ".join(commands.raw_frames("ffmpeg", tmp_path / "in.mp4",
                                                      tmp_path / "raw", rounded_up, 30.0))


def summaries(**rungs: Any) -> dict[str, dict[str, Any]]:
    base = {"time_to_playable_s": 2.0, "time_to_first_segment_s": 1.0, "total_s": 40.0,
            "cpu_s": 80.0,
            "peak_rss_bytes": 1_000_000_000, "frames_decoded": 300, "source_frames": 300,
            "bytes_written": 1, "psnr_db": {"720p": 40.0}, "ssim": {"720p": 0.99}}
    return {RUNGS: {**base, **rungs},
            ALL_AT_ONCE: {**base, "time_to_playable_s": 50.0, "total_s": 50.0},
            PER_RUNG: {**base, "time_to_playable_s": 2.0, "total_s": 60.0, "frames_decoded": 900}}


def test_targets_pass_miss_and_skip() -> None:
    checks = {t.name: t for t in report.targets(summaries(), "720p", None)}
    assert checks["time to playable <= 0.1 x ffmpeg all-at-once total"].passed is True
    assert checks["time to playable <= 1.1 x ffmpeg 720p-only pass"].passed is True
    assert checks["total <= 0.9 x ffmpeg per-rung total"].passed is True
    assert checks["frames decoded = 1.00 x source"].passed is True
    assert checks["PSNR 720p >= ffmpeg's - 0.1 dB"].passed is True
    assert checks["peak RSS <= 1.5 GB on the 60 s 4K source"].verdict == "SKIP"

    worse = summaries(total_s=55.0, frames_decoded=600, psnr_db={"720p": 39.8})
    rss = {"source": "4k60", "short_source": "4k10", "peak_rss_bytes": 1_600_000_000}
    checks = {t.name: t for t in report.targets(worse, "720p", rss)}
    assert checks["total <= 1.0 x ffmpeg all-at-once total"].verdict == "MISS"
    assert checks["frames decoded = 1.00 x source"].verdict == "MISS"
    assert checks["PSNR 720p >= ffmpeg's - 0.1 dB"].verdict == "MISS"
    assert checks["peak RSS <= 1.5 GB on 4k60"].verdict == "MISS"
    flat = next(t for name, t in checks.items() if name.startswith("peak RSS flat"))
    assert flat.verdict == "MISS" and flat.value == 1.6


def test_targets_against_a_baseline_are_judged_round_by_round() -> None:
    """Each round's two runs are compared, and the median of those ratios is the verdict, even
    where the medians of the rounds (here 40 s against 50 s) would say otherwise."""
    systems = summaries()
    for name, totals in (("rungs", (80.0, 95.0, 81.0)), ("ffmpeg_all_at_once", (79.0, 80.0, 82.0))):
        systems[name]["rounds"] = [{"total_s": t, "time_to_playable_s": 5.0} for t in totals]
    check = {t.name: t for t in report.targets(systems, "720p", None)}[
        "total <= 1.0 x ffmpeg all-at-once total"]
    assert check.verdict == "MISS"
    assert check.detail == ("Rungs / ffmpeg round by round 1.01, 1.19, 0.99: median 1.01 vs "
                            "1.00; medians 40.00 s vs limit 50.00 s"), check.detail
    systems["rungs"]["rounds"][0]["total_s"] = 78.0
    check = report.targets(systems, "720p", None)[2]
    assert check.verdict == "PASS"
    assert "round by round 0.99, 1.19, 0.99: median 0.99" in check.detail


def test_table_has_a_ratio_per_figure() -> None:
    text = report.table(summaries(), ["720p"])
    assert "time_to_playable_s" in text and "psnr_db 720p" in text
    line = next(row for row in text.splitlines() if row.startswith("total_s"))
    assert line.split()[-2:] == ["0.80", "0.67"]


def test_run_measured_times_lines_and_playlists(tmp_path: Path) -> None:
    playlist = tmp_path / "index.m3u8"
    script = (f"import pathlib, time; print('one', flush=True); time.sleep(0.2); "
              f"pathlib.Path({str(playlist)!r}).write_text('#EXTM3U\\n#EXT-X-ENDLIST\\n'); "
              f"x = bytearray(50_000_000); print('two')")
    run = run_measured([sys.executable, "-c", script], stderr_path=tmp_path / "err.log",
                       read_stdout=True, watch={"rung": playlist}, appear={"file": playlist})
    assert run.returncode == 0
    assert [line for _, line in run.lines] == ["one", "two"]
    assert run.lines[0][0] < run.endlist_s["rung"] <= run.wall_s
    assert run.appeared_s["file"] <= run.wall_s
    assert run.peak_rss_bytes >= 50_000_000
    assert run.cpu_s > 0


def test_run_measured_starts_the_clock_on_a_line(tmp_path: Path) -> None:
    """A warm process: it busies itself for 0.5 s before saying it is ready, then waits for the
    start line; what it did before counts neither in its times nor in its CPU seconds."""
    script = ("import sys, time\n"
              "end = time.process_time() + 0.5\n"
              "while time.process_time() < end: pass\n"
              "print('loaded', flush=True)\n"
              "print('got', sys.stdin.readline().strip(), flush=True)\n"
              "time.sleep(0.2)\n")
    run = run_measured([sys.executable, "-c", script], stderr_path=tmp_path / "err.log",
                       read_stdout=True, start_after="loaded")
    assert run.returncode == 0
    assert [line for _, line in run.lines] == ["got start"]
    assert 0.2 <= run.wall_s < 1.0
    assert run.cpu_s < 0.3


def test_x264_settings_read_back(tmp_path: Path) -> None:
    folder = tmp_path / "720p"
    folder.mkdir()
    (folder / "seg_00000.m4s").write_bytes(
        b"\x00\x01x264 - core 165 - H.264/MPEG-4 AVC codec - Copyleft 2003-2025 - "
        b"http://www.videolan.org/x264.html - options: cabac=0 threads=2 keyint=480 crf=25.0"
        b"\x00\x80")
    settings = x264_settings(folder)
    assert settings == {"cabac": "0", "threads": "2", "keyint": "480", "crf": "25.0"}
    assert settings_differences(settings, {**settings, "threads": "3"}) == {}
    assert settings_differences(settings, {**settings, "crf": "23.0"}) == {"crf": "25.0 vs 23.0"}


def test_floor_decodes_once_and_encodes_each_rung_from_raw_frames(tmp_path: Path) -> None:
    """A real floor round on a tiny source: the raw file holds every frame, each rung's
    playlist from raw frames decodes to every frame, and the estimate is the CPU over the
    cores."""
    import av
    import imageio_ffmpeg

    from bench import floor, sources
    from bench.systems import Setup
    from tests import media

    source = sources.describe("tiny", media.make_video(tmp_path / "tiny.mp4", width=320,
                                                       height=180, seconds=1.0),
                              generated=False)
    setup = Setup(source=source, rungs=[plan(180, 320), plan(90, 160)], segment_seconds=1.0,
                  ffmpeg=imageio_ffmpeg.get_ffmpeg_exe(), ffmpeg_thread_type=None,
                  rungs_args=(), work_dir=tmp_path / "work")
    raw = floor.prepare(setup, tmp_path / "raw")
    assert raw.stat().st_size == floor.raw_size(setup) == source.frames * 320 * 180 * 3 // 2
    run = floor.run(setup, raw, tmp_path / "floor")
    assert set(run.encode_s) == {"180p", "90p"} and run.decode_cpu_s > 0
    for name, size in (("180p", (320, 180)), ("90p", (160, 90))):
        with av.open(str(tmp_path / "floor" / name / commands.PLAYLIST)) as played:
            frames = [(f.width, f.height) for f in played.decode(video=0)]
        assert frames == [size] * source.frames
    summary = floor.summary([run])
    assert summary["cpu_s"] == round(run.cpu_s, 3)
    assert summary["bound_total_s"] == round(run.cpu_s / summary["cores"], 3)
    assert summary["encoders_alone_s"] == round(sum(run.encode_s.values()), 3)
    text = report.floor_text(summary, summaries())
    assert "one encoder at a time" in text and f"{summary['bound_total_s']:.2f} s" in text


def test_total_targets_say_whether_the_floor_leaves_them_reachable() -> None:
    floor = {"bound_total_s": 52.0}  # limits: 50 s (all at once), 0.9 x 60 s (per rung)
    checks = {t.name: t for t in report.targets(summaries(), "720p", None, floor)}
    assert checks["total <= 1.0 x ffmpeg all-at-once total"].detail.endswith(
        "the floor's estimate 52.00 s: out of reach")
    assert checks["total <= 0.9 x ffmpeg per-rung total"].detail.endswith(": within reach")
    # An encoder alone does not fill the cores: its own times end to end weigh in too.
    floor["encoders_alone_s"] = 55.0
    checks = {t.name: t for t in report.targets(summaries(), "720p", None, floor)}
    assert checks["total <= 0.9 x ffmpeg per-rung total"].detail.endswith(
        "the floor's estimate 55.00 s: out of reach")


def test_per_rung_target_says_what_share_of_the_cores_it_needs() -> None:
    """Decoding once saves two decodes: the per-rung run's CPU less two of the floor's decodes,
    over the cores times 0.9 x its total, is the share a one-decode system must keep busy."""
    systems = summaries()
    systems[PER_RUNG]["rounds"] = [{"cpu_s": 113.0, "total_s": 60.0},
                                   {"cpu_s": 98.0, "total_s": 50.0}]
    systems[ALL_AT_ONCE]["rounds"] = [{"cpu_s": 99.0, "total_s": 50.0},
                                      {"cpu_s": 98.0, "total_s": 50.0}]
    systems[RUNGS]["rounds"] = [{"cpu_s": 70.0, "total_s": 40.0}]
    floor_round = {"cpu_s": 100.0, "encode_s": {"720p": 52.0}, "decode_cpu_s": 4.0}
    floor = {"bound_total_s": 50.0, "cores": 2, "rounds": [floor_round, floor_round]}
    checks = {t.name: t for t in report.targets(systems, "720p", None, floor)}
    detail = checks["total <= 0.9 x ffmpeg per-rung total"].detail
    # (113 - 8) / (2 x 0.9 x 60) = 97.2%, (98 - 8) / (2 x 0.9 x 50) = 100.0%
    assert "round by round 97.2%, 100.0%" in detail, detail
    assert "keep about 98.6% of the 2 cores busy" in detail, detail
    assert "the busiest system in this run kept 98.5% (ffmpeg_all_at_once)" in detail, detail
    assert "more than there is" not in detail
    # Each round's floor (52 s end to end) against that round's limit.
    assert "round by round 52.0 vs 54.0 s, 52.0 vs 45.0 s: within reach in 1 of 2" in detail
    floor["rounds"] = [{**floor_round, "decode_cpu_s": 1.0}] * 2  # more work left
    detail = report.targets(systems, "720p", None, floor)[3].detail
    assert detail.endswith("more than there is; the busiest system in this run kept 98.5% "
                           "(ffmpeg_all_at_once)"), detail


def test_the_whole_harness_runs_and_writes_its_results(tmp_path: Path) -> None:
    """``python -m bench`` end to end on a tiny source with audio, twice into the same folder:
    every system runs, the result document has every figure the issue names, the chart is a
    PNG."""
    import json

    from bench import cli
    from tests import media

    source = media.make_video(tmp_path / "tiny.mp4", width=320, height=180, seconds=2.0)
    results = tmp_path / "results"
    for _ in range(2):  # a second run over the first one's work folders
        assert cli.main(["--source", str(source), "--rounds", "1", "--results", str(results),
                         "--segment-seconds", "1"]) == 0
    doc = json.loads((results / "latest.json").read_text())
    assert set(doc["systems"]) == {RUNGS, RUNGS_GRPC, ALL_AT_ONCE, PER_RUNG}
    # The figures issue #4 names for each system, as it spells them.
    named = ("time_to_playable_s", "total_s", "cpu_s", "peak_rss_bytes", "frames_decoded",
             "source_frames")
    for name, system in doc["systems"].items():
        for figure in (*named, *report.FIGURES):
            assert system[figure] > 0, (name, figure)
        assert 0 < system["time_to_first_segment_s"] <= system["time_to_playable_s"]
        assert system["time_to_playable_s"] <= system["total_s"] + 0.5
        if name != RUNGS_GRPC:  # the same engine as RUNGS: no quality pass of its own
            assert system["psnr_db"]["180p"] > 30 and 0.9 < system["ssim"]["180p"] <= 1
    for name in (RUNGS, RUNGS_GRPC):
        assert doc["systems"][name]["frames_decoded"] == doc["systems"][name]["source_frames"]
        assert doc["systems"][name]["source_frames"] == 60
    assert doc["floor"]["bound_total_s"] > 0
    verdicts = [t["verdict"] for t in doc["targets"]]
    assert len(verdicts) >= 8 and set(verdicts) <= {"PASS", "MISS", "SKIP"}, verdicts
    assert (results / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rung_of_a_source_above_60_fps_is_compared_frame_for_frame(tmp_path: Path) -> None:
    """Quality of a 60 fps rung (the engine's cap) of 1 s of 120 fps: its 60 frames are each
    compared with the source frame of its time. The filters went on past the rung's end and
    paired its last frame with the source's next one: 61 comparisons, PSNR pulled down."""
    import subprocess

    import imageio_ffmpeg

    from bench import quality

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    source = tmp_path / "fast.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=160x90:r=120:d=1",
                    "-c:v", "libx264", "-preset", "veryfast", str(source)], check=True)
    rung = tmp_path / "rung"
    rung.mkdir()
    subprocess.run([ffmpeg, "-v", "error", "-i", str(source), "-vf", "fps=60", "-c:v", "libx264",
                    "-qp", "0", "-f", "hls", "-hls_playlist_type", "vod",
                    str(rung / "index.m3u8")], check=True)
    measured = quality.measure(ffmpeg, rung / "index.m3u8", source, 160, 90, tmp_path / "work")
    sixty = plan(90, 160, grid_rate(Fraction(120), MAX_FRAME_RATE))
    assert measured.frames == commands.rung_frames(120, 120.0, sixty) == 60
    assert measured.psnr_db > 45  # lossless, against the same frames
    assert commands.rung_frames(300, 30.0, plan(90, 160)) == 300
    assert commands.rung_frames(250, 59.94, plan(90, 160, Fraction(60000, 1001))) == 250
