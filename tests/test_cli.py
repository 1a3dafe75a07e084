"""The ``rungs`` command as a user runs it: a real subprocess, real files, real output."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import m3u8
import pytest

from tests import hostile, media

RUNGS = [sys.executable, "-m", "engine.cli"]


def run_cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # surrogateescape: a file name that is not UTF-8 is printed as the system holds it.
    return subprocess.run([*RUNGS, *map(str, args)], capture_output=True, text=True,
                          errors="surrogateescape", timeout=timeout, check=False)


@pytest.fixture(scope="module")
def small_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return media.make_video(tmp_path_factory.mktemp("cli") / "in.mp4", width=640, height=360,
                            seconds=3.0)


def test_json_prints_one_event_per_line_and_a_summary(small_source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("transcode", small_source, out, "--ladder", "180,360",
                     "--segment-seconds", "2", "--json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    types = [e["type"] for e in events]
    milestones = [t for t in types if t != "progress"]
    # Early playback (the default): READY at the first segment, before the rung completes.
    assert milestones == ["queued", "running", "poster_ready", "first_segment", "ready",
                          "rung_published", "rung_published", "complete", "summary"]
    assert [e["rung"] for e in events if e["type"] == "rung_published"] == ["180p", "360p"]
    summary = events[-1]
    assert summary["frames_decoded"] == summary["source_frames"] == 90
    assert 0 < summary["time_to_ready_s"] <= summary["total_s"]
    assert all(r["encode_fps"] > 0 for r in summary["rungs"])
    master = m3u8.load(str(out / "master.m3u8"))
    assert [p.uri for p in master.playlists] == ["180p/index.m3u8", "360p/index.m3u8"]
    assert result.stderr == ""


@pytest.mark.parametrize("fps", [Fraction(30), Fraction(30000, 1001)])
def test_a_segment_length_of_a_half_second_completes(tmp_path: Path, fps: Fraction) -> None:
    # 2.5 s segments of 29.97 fps video last 2.5025 s (EXTINF rounds to 3): a target duration
    # of round(2.5) = 2 failed the job, and without audio listed 2.5 s segments under it.
    source = media.make_video(tmp_path / "in.mp4", width=320, height=180, fps=fps, seconds=5.5,
                              audio=fps == 30)
    out = tmp_path / "out"
    result = run_cli("transcode", source, out, "--ladder", "90,180", "--segment-seconds", "2.5")
    assert result.returncode == 0, result.stderr
    for name in ("90p", "180p"):
        playlist = m3u8.load(str(out / name / "index.m3u8"))
        assert playlist.target_duration == 3
        # A segment ends at the first frame at or after 2.5 s: 2.5 s at 30 fps, 2.5025 s at 29.97.
        first_keyframe_s = math.ceil(Fraction(5, 2) * fps) / fps
        assert [s.duration for s in playlist.segments][:2] == pytest.approx(
            [float(first_keyframe_s)] * 2, abs=1e-3)


def test_rungs_at_once_still_publish_lowest_first(small_source: Path, tmp_path: Path) -> None:
    result = run_cli("transcode", small_source, tmp_path / "out", "--ladder", "180,270,360",
                     "--json", "--rungs-at-once")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["rung"] for e in events if e["type"] == "rung_published"] == [
        "180p", "270p", "360p"]
    assert events[-1]["frames_decoded"] == events[-1]["source_frames"] == 90


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc")
def test_kill_9_leaves_no_frames_in_the_scratch_dir(tmp_path: Path) -> None:
    """A killed process cleans nothing up: the frame cache's scratch file has no name from the
    moment it is open, so the file system takes it back when the process dies, and no folder of
    the job's is left beside it."""
    source = media.make_video(tmp_path / "in.mp4", seconds=8.0)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    process = subprocess.Popen(
        [*RUNGS, "transcode", str(source), str(tmp_path / "out"), "--ladder", "180,360",
         "--cache-mb", "0", "--scratch-dir", str(scratch), "--json"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        spill = None
        for _ in process.stdout:
            spill = next((link for link in _open_files(process.pid) if ".spill" in link),
                         None)
            if spill is not None:
                break
        assert spill is not None, "the job ended before it spilled a frame"
        assert spill.endswith(" (deleted)"), spill
        assert spill.startswith(f"{scratch}/rungs-"), spill
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_stop_signal_cancels_cleanly(tmp_path: Path, stop: signal.Signals) -> None:
    """Ctrl-C, SIGTERM and SIGHUP (the terminal closed) once the first rung is listed early:
    the job is cancelled, exit 130, and that rung's playlist is ended, so it plays as far as it
    got. SIGHUP's default killed the process, leaving an EVENT playlist players poll for ever."""
    source = media.make_video(tmp_path / "in.mp4", seconds=8.0)
    out = tmp_path / "out"
    process = subprocess.Popen(
        [*RUNGS, "transcode", str(source), str(out), "--ladder", "180,360",
         "--segment-seconds", "1", "--json"], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if json.loads(line)["type"] == "ready":
            process.send_signal(stop)
            break
    events = [json.loads(line) for line in process.stdout]
    assert process.wait(timeout=60) == 130
    assert events[-1]["type"] == "summary" and events[-1]["state"] == "CANCELLED"
    master = m3u8.load(str(out / "master.m3u8"))
    first = m3u8.load(str(out / master.playlists[0].uri))
    assert first.is_endlist and first.segments
    assert not list(out.rglob("*.tmp"))


def _open_files(pid: int) -> list[str]:
    links = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            links.append(os.readlink(fd))
    return links


def test_timeline_on_a_terminal_names_each_milestone(small_source: Path, tmp_path: Path) -> None:
    result = run_cli("transcode", small_source, tmp_path / "out", "--ladder", "180,360")
    assert result.returncode == 0, result.stderr
    for word in ("poster", "READY", "published", "180p", "360p", "COMPLETE", "time to ready"):
        assert word in result.stdout
    assert "note:" not in result.stdout  # nothing of this source was left out


def test_the_timeline_ends_with_what_the_output_left_out(tmp_path: Path) -> None:
    """A source whose sound nothing decodes completes without it, and says so at the end."""
    source = hostile.unknown_audio_codec(tmp_path)
    result = run_cli("transcode", source, tmp_path / "out", "--ladder", "180")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        "note: the source's audio is in a format FFmpeg cannot decode: the output has no sound")


def test_the_timeline_names_the_subtitles_kept(tmp_path: Path) -> None:
    source = hostile.subtitles_in_pictures(tmp_path)
    result = run_cli("transcode", source, tmp_path / "out", "--ladder", "180")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == [
        "subtitles: English",
        "note: 1 subtitle track not in text (DVD, Blu-ray or DVB pictures, teletext) not kept: "
        "the output's subtitles are text"]


def test_the_timeline_names_the_closed_captions_declared(tmp_path: Path) -> None:
    """Captions carried in the pictures have no file of their own: the timeline names the
    channels the master declares, as it names the subtitle tracks."""
    source = media.make_video(tmp_path / "captioned.mp4", width=160, height=90, seconds=1.0,
                              captions=media.cea608_pop_on(["HI"], 30, channel=3))
    result = run_cli("transcode", source, tmp_path / "out", "--ladder", "90")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "closed captions: CC3"


BAD_INPUTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "empty": (lambda d: _touch(d / "empty.mp4"), "empty"),
    "random bytes": (lambda d: media.make_random_bytes(d / "noise.mp4"), "not a video"),
    "text named .mp4": (lambda d: media.make_text_file(d / "notes.mp4"), "not a video"),
    "audio only": (lambda d: media.make_audio_only(d / "sound.m4a", seconds=1.0),
                   "no video stream"),
    "still image": (lambda d: media.make_still_image(d / "still.png"), "not a video"),
    # Sound files the allowed demuxers do not read are named, not "invalid argument".
    "mp3": (lambda d: media.make_audio_only(d / "song.mp3", seconds=1.0, codec="libmp3lame"),
            "is an audio file (MP3), not a video"),
    "flac": (lambda d: media.make_audio_only(d / "song.flac", seconds=1.0, codec="flac"),
             "is an audio file (FLAC), not a video"),
    "wav": (lambda d: media.make_audio_only(d / "take.wav", seconds=1.0, codec="pcm_s16le"),
            "is an audio file (WAV), not a video"),
    "missing": (lambda d: d / "missing.mp4", "does not exist"),
    # A name the system refuses: "internal error: OSError: [Errno 36] File name too long", exit 1.
    "name too long": (lambda d: d / f"{'x' * 300}.mp4", "cannot be read: File name too long"),
}


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(case: str, tmp_path: Path) -> None:
    make, words = BAD_INPUTS[case]
    source = make(tmp_path)
    result = run_cli("transcode", source, tmp_path / "out")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rungs: ")
    assert words in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "out" / "master.m3u8").exists()


@pytest.mark.parametrize(("out", "reason"), [
    ("x" * 300, "File name too long"), (f"{'x' * 300}/inside", "File name too long"),
    ("/proc/rungs-out", "No such file or directory")], ids=["long", "long parent", "proc"])
def test_an_output_that_cannot_be_made_exits_2_with_one_line(
        small_source: Path, tmp_path: Path, out: str, reason: str) -> None:
    """An output the system will not make there (a name too long, a place that takes no new
    folder) is the command line's to mend: "internal error" and exit 1 before."""
    result = run_cli("transcode", small_source, tmp_path / out, "--ladder", "90")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"rungs: output directory {str(tmp_path / out)!r} cannot be made: {reason}"]


def test_non_empty_output_is_refused_without_overwrite(small_source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli("transcode", small_source, out, "--ladder", "180")
    assert result.returncode == 2
    assert "not empty" in result.stderr and len(result.stderr.splitlines()) == 1
    assert (out / "keep.txt").read_text() == "mine"


def test_an_output_in_the_way_or_holding_the_source_is_refused(small_source: Path,
                                                                tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("mine")
    movies = tmp_path / "movies"
    movies.mkdir()
    source = movies / "in.mp4"
    source.write_bytes(small_source.read_bytes())
    cases = [
        (small_source, tmp_path / "a-file", [], "not a directory"),
        (small_source, tmp_path / "a-file" / "sub", [], "is a file"),
        # Overwriting would delete the source (it used to, and the job still completed).
        (source, movies, ["--overwrite"], "holds"),
    ]
    for src, out, extra, words in cases:
        result = run_cli("transcode", src, out, "--ladder", "180", *extra)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.splitlines()) == 1 and words in result.stderr, result.stderr
    assert (tmp_path / "a-file").read_text() == "mine"
    assert source.read_bytes() == small_source.read_bytes()


@pytest.mark.parametrize(("args", "words"), [
    # gRPC takes a port above 65535 modulo 65536: 99999 listened on 34463.
    (["serve", "--listen", "127.0.0.1:99999"], "--listen"),
    (["serve", "--listen", "localhost"], "--listen"),
    (["status", "some-job", "--server", "localhost:99999"], "--server"),
    # A timer of inf seconds raises OverflowError on its own thread: no limit, and a traceback.
    (["serve", "--job-timeout", "inf"], "--job-timeout"),
    (["serve", "--job-timeout", "nan"], "--job-timeout"),
    (["serve", "--max-source-seconds", "0"], "--max-source-seconds"),
    (["serve", "--max-jobs", "0"], "--max-jobs"),
    (["serve", "--http-port", "70000"], "--http-port"),
])
def test_service_commands_refuse_bad_options(tmp_path: Path, args: list[str],
                                             words: str) -> None:
    data = ["--data-dir", str(tmp_path / "data")] if args[0] == "serve" else []
    result = run_cli(*args, *data, timeout=30)
    assert result.returncode == 2, result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "listening" not in result.stderr and "cannot reach" not in result.stderr


def test_names_that_are_not_utf8(small_source: Path, tmp_path: Path) -> None:
    """A source named in bytes that are not UTF-8 (a Latin-1 disk) transcodes; an output
    directory so named is refused in one line: FFmpeg's HLS muxer takes its names in UTF-8."""
    latin = os.fsdecode(b"vid\xe9o")
    source = tmp_path / f"{latin}.mp4"
    source.write_bytes(small_source.read_bytes())
    result = run_cli("transcode", source, tmp_path / "out", "--ladder", "180")
    assert result.returncode == 0, result.stderr
    assert len(m3u8.load(str(tmp_path / "out" / "master.m3u8")).playlists) == 1
    result = run_cli("transcode", small_source, tmp_path / latin, "--ladder", "180")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "UTF-8" in result.stderr, result.stderr
    assert not (tmp_path / latin).exists()


@pytest.mark.parametrize("args", [["--ladder", "abc"], ["--segment-seconds", "0"],
                                  ["--segment-seconds", "nan"], ["--segment-seconds", "inf"],
                                  ["--rung", "720:speed=9"], ["--rung", "480:crf=20"],
                                  ["--scratch-dir", "/nonexistent/scratch"],
                                  ["--scratch-dir", "/dev/null"], ["--cache-mb", "1000000000"],
                                  # Refused by argparse, which printed its whole usage first.
                                  ["--encoder", "nonsense"], ["--cache-mb", "nan"],
                                  ["--no-such-option"]])
def test_bad_options_exit_2(small_source: Path, tmp_path: Path, args: list[str]) -> None:
    result = run_cli("transcode", small_source, tmp_path / "out", *args)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert "internal error" not in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_the_demo_runs_and_refuses_bad_options(tmp_path: Path) -> None:
    """``make demo``'s program, on a small sample: the job completes through the service's
    engine and the master lists its rung; bad options are one usage line (they were
    tracebacks: ``--size abc``, ``--seconds nan``)."""
    demo = [sys.executable, "-m", "engine.demo", "--out", str(tmp_path), "--http-port", "0"]
    result = subprocess.run([*demo, "--size", "320x180", "--seconds", "2"], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "COMPLETE" in result.stdout and "frames 60/60" in result.stdout, result.stdout
    assert len(m3u8.load(str(tmp_path / "hls" / "master.m3u8")).playlists) == 1
    for bad in (["--size", "abc"], ["--size", "641x360"], ["--seconds", "nan"],
                ["--http-port", "99999"]):
        result = subprocess.run([*demo, *bad], capture_output=True, text=True, timeout=60,
                                check=False)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and bad[0] in result.stderr, result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.parametrize("json_lines", [True, False], ids=["json", "timeline"])
def test_a_reader_that_goes_away_does_not_stop_the_job(small_source: Path, tmp_path: Path,
                                                       json_lines: bool) -> None:
    """``rungs transcode ... | head -1``: the job goes on and completes once its stdout's
    reader has gone. With --json it ended in a BrokenPipeError traceback; on the timeline, rich
    raised SystemExit from the job's event, which ended the job, deleted its output and exited
    1 without a word."""
    out = tmp_path / "out"
    process = subprocess.Popen(
        [*RUNGS, "transcode", str(small_source), str(out), "--ladder", "180,360",
         "--segment-seconds", "1", *(["--json"] if json_lines else [])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline()
    process.stdout.close()
    assert process.wait(timeout=120) == 0
    assert "Traceback" not in process.stderr.read()
    ladder = m3u8.load(str(out / "master.m3u8"))
    assert [p.uri for p in ladder.playlists] == ["180p/index.m3u8", "360p/index.m3u8"]


def test_the_demo_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM once the demo's job is READY: the service's engine stops, the job is cancelled
    with its first rung's playlist ended, exit 130 (SIGTERM's default killed it mid-write)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.demo", "--out", str(tmp_path), "--size", "640x360",
         "--seconds", "8", "--http-port", "0"], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if "playable" in line:
            process.send_signal(signal.SIGTERM)
            break
    process.stdout.read()
    assert process.wait(timeout=60) == 130
    master = m3u8.load(str(tmp_path / "hls" / "master.m3u8"))
    first = m3u8.load(str(tmp_path / "hls" / master.playlists[0].uri))
    assert first.is_endlist and first.segments
