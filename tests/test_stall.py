"""A decoder that never returns: the job ends with a clear error anyway (engine.stall).

The real case is a fuzzed HEVC file on which FFmpeg's frame-threaded decoder deadlocks (its
recipe is in tests/hostile.py, which runs it through the CLI and the service); here the same
file through a job in this process and a CLI that is sent SIGINT, and a decoder call made to
hang part way through a job that has already published its first segments.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from engine import Job, JobState, stall
from engine import decode as decode_module
from engine import job as job_module
from engine.errors import InvalidSourceError
from tests import hostile, media
from tests.conftest import options

#: The stall limit in these tests, so each takes seconds.
STALL_S = 1.0


@pytest.fixture
def short_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stall, "STALL_S", STALL_S)


@pytest.fixture(scope="module")
def deadlocking(tmp_path_factory: pytest.TempPathFactory) -> Path:
    recipe = next(r for r in hostile.RECIPES if r.name == "fuzz_hevc_decoder_deadlock")
    return recipe.make(tmp_path_factory.mktemp("stall"), Path("/nonexistent"))


def test_run_watched_hands_back_the_result_or_the_error(short_stall: None) -> None:
    watch = stall.DecoderWatch()
    assert stall.run_watched(lambda: 42, watch, "x.mp4") == 42

    def fails() -> None:
        with watch.call():
            raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        stall.run_watched(fails, watch, "x.mp4")


def test_a_slow_job_with_quick_decoder_calls_is_not_stopped(short_stall: None) -> None:
    watch = stall.DecoderWatch()

    def many_calls() -> int:
        for _ in range(30):  # 3 s in all, three times the limit, but no call near it
            with watch.call():
                time.sleep(0.1)
        return 30

    assert stall.run_watched(many_calls, watch, "x.mp4") == 30


def test_a_call_that_never_returns_is_left_behind(short_stall: None) -> None:
    watch = stall.DecoderWatch()
    release = threading.Event()

    def stuck() -> None:
        with watch.call():
            release.wait()

    started = time.monotonic()
    try:
        with pytest.raises(InvalidSourceError, match=r"'x\.mp4' stopped decoding"):
            stall.run_watched(stuck, watch, "x.mp4")
    finally:
        release.set()
    assert STALL_S <= time.monotonic() - started < STALL_S + 1


def test_a_job_on_a_decoder_that_deadlocks_fails_cleanly(short_stall: None, deadlocking: Path,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = Job(deadlocking, out, options())
    started = time.monotonic()
    assert job.run() == JobState.FAILED
    assert time.monotonic() - started < STALL_S + 5
    assert job.error is not None and job.error.code == "INVALID_SOURCE"
    assert "stopped decoding" in job.error.message
    assert [e.type for e in job.events] == ["queued", "running", "failed"]
    assert not out.exists() or not any(out.iterdir())


def test_ctrl_c_reaches_a_cli_whose_decoder_deadlocked(deadlocking: Path,
                                                       tmp_path: Path) -> None:
    """Before the watch, the main thread sat in FFmpeg for ever and no signal got through."""
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "transcode", str(deadlocking), str(tmp_path / "out")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=stall.STALL_S + 10)
    finally:
        process.kill()
    assert process.returncode == 2, stderr
    assert stderr.splitlines() == [
        f"rungs: source {deadlocking.name!r} stopped decoding: FFmpeg's decoder has not "
        f"returned in {stall.STALL_S:.0f} s (damaged data it cannot get past)"]


def work_threads() -> set[threading.Thread]:
    """The threads a job's work runs on (see engine.stall.run_watched)."""
    return {t for t in threading.enumerate() if t.name.endswith("-work")}


def test_a_decoder_stuck_part_way_ends_the_job_and_withdraws_it(
        short_stall: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A decoder call that hangs after the first segments were listed (early playback): the
    job fails, nothing stays listed, and when the call comes back at last it changes
    nothing."""
    source = media.make_video(tmp_path / "in.mp4", width=320, height=180, seconds=6.0)
    release = threading.Event()
    real = decode_module.decode_source

    def decode_then_hang(source_: Any, schedule: Any, on_video: Any, on_audio: Any,
                         cancel: threading.Event, max_seconds: float, **kwargs: Any) -> Any:
        frames = 0

        def video(frame: Any, when: Any) -> None:
            nonlocal frames
            on_video(frame, when)
            frames += 1
            if frames == 100:  # past the first 2 s segment
                time.sleep(1.0)  # for the first rung to close it
                with source_.watch.call():
                    release.wait()

        return real(source_, schedule, video, on_audio, cancel, max_seconds, **kwargs)

    monkeypatch.setattr(job_module, "decode_source", decode_then_hang)
    earlier = work_threads()  # a stuck call an earlier test abandoned
    out = tmp_path / "out"
    job = Job(source, out, options(early_playback=True, ladder=options().ladder))
    try:
        assert job.run() == JobState.FAILED
        types = [e.type for e in job.events if e.type != "progress"]
        assert "ready" in types and types[-1] == "failed", types
        assert job.error is not None and "stopped decoding" in job.error.message
        assert not out.exists()  # withdrawn, and the directory it made removed
    finally:
        release.set()
    deadline = time.monotonic() + 10
    while work_threads() - earlier and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not work_threads() - earlier, "the released decoder call never came back"
    assert job.state == JobState.FAILED
    assert [e.type for e in job.events if e.type != "progress"][-1] == "failed"
