"""Crashes and faults: kill -9 and restart, a reader polling every playlist at 50 Hz, a full
disk, an encoder failing mid-stream, a cancel at every stage, and the job watchdog.

Everything leaks nothing: after each job the process has the threads (Python's and FFmpeg's
native ones, counted in /proc/self/task) and file descriptors it had before, the scratch space
is empty, and no temporary file is left in the output.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import gc
import io
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import grpc
import m3u8
import pytest

import engine.fanout
import engine.job
import engine.manager
import engine.rung
import engine.segment
from engine import Job, JobEvent, JobState, LadderOptions, TranscodeOptions
from engine.errors import EncoderError, OutputWriteError
from engine.manager import Watchdog
from engine.rpc import transcoder_pb2 as pb
from engine.rpc import transcoder_pb2_grpc
from engine.server import RungsServer, create_server
from tests import hostile
from tests.hostile import read_ladder
from tests.polling import Poller
from tests.serving import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
LADDER = (144, 180)
OPTIONS = pb.TranscodeOptions(ladder=list(LADDER), segment_seconds=1)


def engine_options(**overrides: Any) -> TranscodeOptions:
    values: dict[str, Any] = {"ladder": LadderOptions(heights=LADDER), "segment_seconds": 1.0,
                              "encoder": "libx264", "hwaccel": "none"}
    values.update(overrides)
    return TranscodeOptions(**values)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fault-sources")
    hostile.video(folder / "short.mp4", seconds=2.0)
    hostile.video(folder / "long.mp4", seconds=8.0)
    return folder


# -- what a process holds -------------------------------------------------------------------------


@dataclass(frozen=True)
class Held:
    """Threads (Python's by name; every native one, FFmpeg's included, by its kernel name)
    and open file descriptors."""

    threads: frozenset[str]
    native_threads: collections.Counter[str]
    fds: frozenset[str]

    @staticmethod
    def now() -> Held:
        fds, native = set(), collections.Counter[str]()
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # the listing's own descriptor is gone already
                fds.add(f"{fd}:{os.readlink(f'/proc/self/fd/{fd}')}")
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):  # a thread that just ended
                native[Path(f"/proc/self/task/{task}/comm").read_text().strip()] += 1
        return Held(frozenset(t.name for t in threading.enumerate()), native, frozenset(fds))


#: gRPC's process-wide timer thread: started with the first server or channel, kept for good.
GRPC_GLOBAL = "grpc_global_tim"


def assert_released(before: Held, timeout: float = 5.0) -> None:
    """Everything held now and not ``before`` is let go within ``timeout`` seconds, once the
    objects of finished jobs are collected (see test_a_finished_job_holds_no_codec_threads)."""
    gc.collect()
    deadline = time.monotonic() + timeout
    while True:
        now = Held.now()
        extra_threads = now.threads - before.threads
        extra_fds = now.fds - before.fds
        extra_native = now.native_threads - before.native_threads
        extra_native.pop(GRPC_GLOBAL, None)
        if not extra_threads and not extra_fds and not extra_native:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"leaked: threads {sorted(extra_threads)}, native threads "
                                 f"{dict(extra_native)}, fds {sorted(extra_fds)}")
        time.sleep(0.05)


def leftovers(folder: Path) -> list[str]:
    """Temporary files under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.endswith(".tmp") or p.name == ".muxer.m3u8")


def scratch_freed(folder: Path, timeout: float = 2.0) -> bool:
    """Whether ``folder`` is empty within ``timeout`` seconds: a job removes its scratch space
    just after its terminal event (the server's own space; clients never see it)."""
    deadline = time.monotonic() + timeout
    while any(folder.iterdir()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def slow_decode(monkeypatch: pytest.MonkeyPatch, seconds_per_frame: float = 0.01,
                frames_seen: threading.Event | None = None, after: int = 10) -> None:
    """Slow the decode stage down, so a job is reliably mid-stream when something happens;
    ``frames_seen`` is set once ``after`` frames have been handed to the rungs."""
    real_put = engine.fanout.FanOut.put
    count = 0

    def put(self: engine.fanout.FanOut, *args: Any) -> None:
        nonlocal count
        time.sleep(seconds_per_frame)
        real_put(self, *args)
        count += 1
        if frames_seen is not None and count >= after:
            frames_seen.set()

    monkeypatch.setattr(engine.fanout.FanOut, "put", put)


def watch(stub: Any, job_id: str,
          until: Callable[[pb.JobEvent], bool] | None = None) -> list[pb.JobEvent]:
    events = []
    call = stub.Watch(pb.WatchRequest(job_id=job_id), timeout=60)
    for event in call:
        events.append(event)
        if until is not None and until(event):
            call.cancel()
            break
    return events


# -- kill -9 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("moment", ["running", "ready", "rung_published"])
def test_kill_9_mid_job_then_restart_leaves_a_clean_playable_output(
        sources: Path, tmp_path: Path, moment: str) -> None:
    output, data = tmp_path / "out", tmp_path / "data"
    first = ServerProcess(sources, output, data, tmp_path / "first.log")
    job = first.stub.Transcode(pb.TranscodeRequest(source="long.mp4", output="job",
                                                   options=OPTIONS), timeout=30)
    watch(first.stub, job.id, until=lambda e: e.HasField(moment))
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL

    second = ServerProcess(sources, output, data, tmp_path / "second.log")
    try:
        status = second.stub.Status(pb.StatusRequest(job_id=job.id), timeout=10)
        if status.state == pb.COMPLETE:
            # On a fast machine the top rung may be done before the kill lands.
            assert moment == "rung_published", status
        else:
            assert status.state == pb.FAILED and status.error.code == "INTERRUPTED", status
        # No ghost: nothing is left QUEUED, RUNNING or READY.
        active = second.stub.ListJobs(pb.ListJobsRequest(states=[pb.QUEUED, pb.RUNNING,
                                                                 pb.READY]), timeout=10)
        assert list(active.jobs) == []
        history = watch(second.stub, job.id)
        assert history[-1].state == status.state
        out = output / "job"
        assert leftovers(out) == [] and list((data / "scratch").iterdir()) == []
        listed: list[str] = []
        if (out / "master.m3u8").exists():
            ladder = read_ladder(out)  # every listed rung complete and decodable
            listed = [f"{min(w, h)}p" for w, h in ladder.rungs]
            published = [r.name for r in status.rungs if r.state == pb.PUBLISHED]
            assert published == listed
        # Nothing unlisted is left behind.
        folders = {p.name for p in out.iterdir() if p.is_dir()} if out.exists() else set()
        assert folders <= {*listed, "audio"}
        if moment != "running":
            assert listed, "the job had listed a rung before it was killed"
        # The restarted server works.
        again = second.stub.Transcode(pb.TranscodeRequest(source="short.mp4", output="again",
                                                          options=OPTIONS), timeout=30)
        assert watch(second.stub, again.id)[-1].state == pb.COMPLETE
    finally:
        assert second.stop(signal.SIGTERM) == 0
    for server in (first, second):
        assert "Traceback" not in server.log.read_text()


def test_a_restart_ends_every_listed_audio_track_and_removes_the_rest(tmp_path: Path) -> None:
    """What a job killed after its early listing leaves: growing playlists (the rung's and
    each audio track's), a segment being written in each folder, a rung not listed yet. The
    restarted server ends what the master lists, as it is, and removes the rest."""
    out = tmp_path / "job"
    for folder in ("180p", "audio", "audio2", "360p"):
        (out / folder).mkdir(parents=True)
        (out / folder / "seg_00000.m4s").write_bytes(b"listed")
        (out / folder / "seg_00001.m4s").write_bytes(b"half written")
        (out / folder / "index.m3u8").write_text(
            "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n#EXT-X-PLAYLIST-TYPE:EVENT\n"
            "#EXTINF:2.000,\nseg_00000.m4s\n")
    engine.manager._tidy_interrupted(out, {"180p"})
    assert sorted(p.name for p in out.iterdir()) == ["180p", "audio", "audio2"]
    for folder in ("180p", "audio", "audio2"):
        assert sorted(p.name for p in (out / folder).iterdir()) == ["index.m3u8",
                                                                    "seg_00000.m4s"]
        assert m3u8.load(str(out / folder / "index.m3u8")).is_endlist


# -- a reader at 50 Hz ----------------------------------------------------------------------------


@dataclass
class Reader(Poller):
    """Reads master.m3u8 and every media playlist 50 times a second while a job runs; checks
    every file it reads, and every segment the first time a playlist lists it."""

    out: Path
    problems: list[str] = field(default_factory=list)
    polls: int = 0
    #: Segment path -> its bytes when first listed (must never change afterwards).
    seen: dict[Path, int] = field(default_factory=dict)
    masters: set[str] = field(default_factory=set)

    def poll(self) -> None:
        self.polls += 1
        try:
            self._poll()
        except Exception as exc:  # anything unexpected is a problem to report
            self.problems.append(f"poll {self.polls}: {type(exc).__name__}: {exc}")

    def _poll(self) -> None:
        master_path = self.out / "master.m3u8"
        try:
            text = master_path.read_text()
        except FileNotFoundError:
            text = None
        if text is not None:
            self.masters.add(text)
            master = m3u8.loads(text)
            if not text.endswith("\n") or not master.is_variant or not master.playlists:
                self.problems.append(f"partial or invalid master:\n{text}")
                return
            for uri in [p.uri for p in master.playlists] + [m.uri for m in master.media if m.uri]:
                if not (self.out / uri).is_file():
                    self.problems.append(f"master lists {uri}, which is missing")
        # Every media playlist on disk, listed or not.
        for playlist_path in sorted(self.out.glob("*/index.m3u8")):
            try:
                self._check_media(playlist_path)
            except FileNotFoundError as exc:
                if playlist_path.exists():  # the playlist is there, a file it lists is not
                    self.problems.append(f"{playlist_path} lists {exc.filename}, which is "
                                         f"missing")

    def _check_media(self, path: Path) -> None:
        text = path.read_text()
        playlist = m3u8.loads(text)
        if not text.endswith("\n") or playlist.playlist_type not in ("vod", "event"):
            self.problems.append(f"partial or invalid {path.name}:\n{text}")
            return
        if playlist.playlist_type == "vod" and not playlist.is_endlist:
            self.problems.append(f"VOD playlist without an end: {path}")
        for segment in playlist.segments:
            segment_path = path.parent / segment.uri
            size = segment_path.stat().st_size  # FileNotFoundError: listed but missing
            if segment_path in self.seen:
                if self.seen[segment_path] != size:
                    self.problems.append(f"{segment_path} changed after it was listed")
                continue
            self.seen[segment_path] = size
            init = b""
            if segment.init_section is not None:
                init = (path.parent / segment.init_section.uri).read_bytes()
            with av.open(io.BytesIO(init + segment_path.read_bytes())) as container:
                kind = "video" if container.streams.video else "audio"
                frames = sum(1 for _ in container.decode(**{kind: 0}))
            if not frames:
                self.problems.append(f"{segment_path} decodes to nothing")


@pytest.mark.parametrize("early", [True, False], ids=["early-playback", "complete-rungs"])
def test_a_reader_at_50_hz_never_sees_a_partial_or_broken_state(
        sources: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, early: bool) -> None:
    slow_decode(monkeypatch, 0.004)  # about 1 s of job: 50 polls at least
    out = tmp_path / "out"
    job = Job(sources / "long.mp4", out,
              engine_options(ladder=LadderOptions(heights=(144, 180, 90)),
                             early_playback=early))
    with Reader(out) as reader:
        state = job.run()
    assert state == JobState.COMPLETE, job.error
    seen_while_running = set(reader.seen)
    reader.poll()  # and once more at the end, in case the last change came after the last poll
    assert reader.polls >= 40, reader.polls
    assert reader.problems == []
    assert reader.masters, "the reader never saw a master while the job ran"
    ladder = read_ladder(out)
    assert len(ladder.rungs) == 3
    # While the job ran, the reader checked every segment of the final ladder as it appeared,
    # but the last rung's: the job ends as it is published, maybe before the next poll.
    segments = set(out.glob("*/seg_*"))
    assert {p for p in segments if p.parent.name != "180p"} <= seen_while_running
    assert segments <= set(reader.seen)


# -- a full disk ----------------------------------------------------------------------------------


def _transcode_with_file_limit(source: Path, tmp_path: Path, limit_bytes: int,
                               *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``rungs transcode`` whose writes past ``limit_bytes`` of a file fail with EFBIG
    (RLIMIT_FSIZE), as writes to a full disk fail with ENOSPC; and its scratch directory."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, resource.RLIM_INFINITY))

    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "transcode", str(source), str(tmp_path / "out"),
         "--ladder", "144,180", "--scratch-dir", str(scratch), *args],
        capture_output=True, text=True, timeout=60, check=False, preexec_fn=limit)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stdout + result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    return result, scratch


def test_cli_on_a_full_disk_fails_cleanly(sources: Path, tmp_path: Path) -> None:
    """Every write past 64 KiB fails: the job fails with a clear reason, the scratch space is
    freed, nothing is left."""
    result, scratch = _transcode_with_file_limit(sources / "long.mp4", tmp_path, 64 * 1024,
                                                 "--segment-seconds", "1")
    line = result.stderr.strip()
    assert line.startswith("rungs: "), line
    assert "too large" in line.lower() or "no space" in line.lower(), line
    assert list(scratch.iterdir()) == []
    out = tmp_path / "out"
    assert not out.exists() or leftovers(out) == []
    assert not (out / "master.m3u8").exists() or read_ladder(out).rungs


def test_cli_with_a_full_scratch_disk_fails_cleanly(sources: Path, tmp_path: Path) -> None:
    """Writes past 4 MiB fail: the segments fit, the spilled frames do not. The job fails with
    one line that names the scratch directory, and leaves nothing there."""
    result, scratch = _transcode_with_file_limit(sources / "long.mp4", tmp_path, 4 << 20,
                                                 "--cache-mb", "0")
    line = result.stderr.strip()
    assert line.startswith("rungs: cannot write to the scratch file"), line
    assert str(scratch) in line and "too large" in line.lower(), line
    assert list(scratch.iterdir()) == []
    assert not (tmp_path / "out").exists() or leftovers(tmp_path / "out") == []


def test_the_output_folder_deleted_mid_job_fails_it_cleanly(
        sources: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The output folder removed once the job is READY (a user's ``rm -rf``): the job fails
    with the system's reason. The muxers' failed opens used to reach PyAV as exceptions it could
    not raise, which it printed with their tracebacks."""
    out = tmp_path / "out"

    def on_event(event: JobEvent) -> None:
        if event.type == "ready":
            shutil.rmtree(out)

    job = Job(sources / "long.mp4", out, engine_options(), on_event=on_event)
    assert job.run() == JobState.FAILED
    assert isinstance(job.error, OutputWriteError), repr(job.error)
    assert "No such file or directory" in job.error.message, job.error.message
    printed = capfd.readouterr()
    assert "Traceback" not in printed.err + printed.out, printed.err
    assert not out.exists()


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, check=False)
    return result.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 640 KiB tmpfs: room for a short job's ladder, not for a long one's."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "640k"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount); "
                    "test_server_keeps_serving_after_a_write_fault covers the service portably")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@dataclass
class InProcess:
    server: RungsServer
    stub: Any
    channel: grpc.Channel
    data: Path


@contextlib.contextmanager
def in_process(source: Path, output: Path, data: Path, **kwargs: Any) -> Iterator[InProcess]:
    server, port = create_server("127.0.0.1:0", data_dir=data, source_root=source,
                                 output_root=output, **kwargs)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield InProcess(server, transcoder_pb2_grpc.TranscoderStub(channel), channel, data)
    finally:
        channel.close()
        server.stop(grace=1)


def _run(stub: Any, source: str, output: str) -> pb.Job:
    job = stub.Transcode(pb.TranscodeRequest(source=source, output=output, options=OPTIONS),
                         timeout=30)
    watch(stub, job.id)
    status: pb.Job = stub.Status(pb.StatusRequest(job_id=job.id), timeout=10)
    return status


def test_server_on_a_full_disk_fails_the_job_and_keeps_serving(
        sources: Path, tmp_path: Path, small_disk: Path) -> None:
    with in_process(sources, small_disk, tmp_path / "data", max_jobs=1) as running:
        failed = _run(running.stub, "long.mp4", "long")
        assert failed.state == pb.FAILED, failed
        assert failed.error.code == "OUTPUT_WRITE_FAILED", failed.error
        assert "no space" in failed.error.message.lower(), failed.error.message
        assert str(small_disk) not in failed.error.message
        assert scratch_freed(running.data / "scratch")
        assert leftovers(small_disk) == []
        if (small_disk / "long" / "master.m3u8").exists():
            read_ladder(small_disk / "long")  # what was listed early was ended, and plays
        # The failed job keeps only what it listed (nothing, and no folder, when the disk
        # filled before its first listing); once that is cleared the next job fits.
        shutil.rmtree(small_disk / "long", ignore_errors=True)
        ok = _run(running.stub, "short.mp4", "short")
        assert ok.state == pb.COMPLETE, ok.error
        read_ladder(small_disk / "short")


def test_server_keeps_serving_after_a_write_fault(sources: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The portable version: the segment writer of jobs writing ``full/`` raises ENOSPC after
    a few packets, as FFmpeg's muxer does on a full disk."""
    real_mux = engine.segment.HlsWriter.mux
    counts: dict[Path, int] = {}

    def mux(self: engine.segment.HlsWriter, packets: list[Any]) -> None:
        if "full" in self.directory.parts:
            counts[self.directory] = counts.get(self.directory, 0) + 1
            if counts[self.directory] > 20:
                error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                raise OutputWriteError(f"writing segments in {self.directory} failed: "
                                       f"{error}") from error
        real_mux(self, packets)

    monkeypatch.setattr(engine.segment.HlsWriter, "mux", mux)
    output = tmp_path / "out"
    with in_process(sources, output, tmp_path / "data", max_jobs=1) as running:
        before = Held.now()  # after the server started: gRPC's own threads and fds are there
        failed = _run(running.stub, "long.mp4", "full")
        assert failed.state == pb.FAILED and failed.error.code == "OUTPUT_WRITE_FAILED"
        assert "no space left" in failed.error.message.lower()
        assert scratch_freed(running.data / "scratch")
        assert leftovers(output) == []
        ok = _run(running.stub, "short.mp4", "fine")
        assert ok.state == pb.COMPLETE, ok.error
        read_ladder(output / "fine")
    assert_released(before)  # the jobs, and the server's RPC threads, are gone


# -- an encoder that fails mid-stream ------------------------------------------------------------


@pytest.mark.parametrize("fallback", [True, False], ids=["falls-back", "fails"])
def test_an_encoder_failing_mid_stream_leaks_nothing(
        sources: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fallback: bool) -> None:
    calls = []
    real_encode = engine.rung._encode

    def encode(stream: Any, frame: Any, encoder: str) -> Any:
        if frame is not None and stream.width == 320:  # the 180p rung
            calls.append(1)
            if len(calls) == 45:
                raise EncoderError(f"encoder {encoder} failed: injected failure")
        return real_encode(stream, frame, encoder)

    monkeypatch.setattr(engine.rung, "_encode", encode)
    monkeypatch.setattr(engine.job, "fallback_encoder",
                        lambda encoder: "libx264" if fallback else None)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    run = Job(sources / "long.mp4", tmp_path / "out", engine_options(scratch_dir=scratch))
    before = Held.now()
    state = run.run()
    assert len(calls) >= 45
    if fallback:
        assert state == JobState.COMPLETE, run.error
        assert [e.type for e in run.events].count("encoder_fallback") == 1
        assert len(read_ladder(tmp_path / "out").rungs) == 2
    else:
        assert state == JobState.FAILED and run.error is not None
        assert run.error.code == "ENCODER_FAILED" and "injected" in run.error.message
        assert not (tmp_path / "out" / "180p").exists()
        if (tmp_path / "out" / "master.m3u8").exists():
            assert read_ladder(tmp_path / "out").rungs == [(256, 144)]
    assert list(scratch.iterdir()) == []
    assert leftovers(tmp_path / "out") == []
    del run
    assert_released(before)


# -- cancel at every stage -----------------------------------------------------------------------


STAGES = ["probing", "first_rung", "later_rungs"]


@pytest.mark.parametrize("stage", STAGES)
def test_cancel_at_every_stage_is_quick_and_leaks_nothing(
        sources: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str) -> None:
    in_first_rung = threading.Event()
    slow_decode(monkeypatch, 0.005, in_first_rung, after=10)
    in_probe = threading.Event()
    if stage == "probing":
        real_open = engine.job.open_source

        def slow_open(*args: Any, **kwargs: Any) -> Any:
            in_probe.set()
            time.sleep(0.5)  # a slow disk: the probe is one blocking FFmpeg call
            return real_open(*args, **kwargs)

        monkeypatch.setattr(engine.job, "open_source", slow_open)
    if stage == "later_rungs":  # the top rung lags well behind, as a 4K one would
        real_encode = engine.rung._encode

        def slow_encode(stream: Any, frame: Any, encoder: str) -> Any:
            if stream.width == 320:
                time.sleep(0.01)
            return real_encode(stream, frame, encoder)

        monkeypatch.setattr(engine.rung, "_encode", slow_encode)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = tmp_path / "out"
    in_later_rungs = threading.Event()

    def on_event(event: JobEvent) -> None:
        if event.type == "rung_published":  # the first rung is complete, the others encode
            in_later_rungs.set()

    job = Job(sources / "long.mp4", out, engine_options(scratch_dir=scratch),
              on_event=on_event)
    before = Held.now()
    job.start()
    reached = {"probing": in_probe, "first_rung": in_first_rung,
               "later_rungs": in_later_rungs}[stage]
    assert reached.wait(30), "the stage never came"
    if stage == "first_rung":
        assert job.state == JobState.RUNNING and not out.joinpath("master.m3u8").exists()
    assert _cancelled_in(job) < 2.0
    assert list(scratch.iterdir()) == []
    assert not out.exists() or leftovers(out) == []
    if (out / "master.m3u8").exists():
        read_ladder(out)  # what was listed before the cancel still plays
    elif out.exists():
        assert list(out.iterdir()) == []
    del job
    assert_released(before)


def test_cancel_while_a_long_pause_in_the_sound_is_filled(tmp_path: Path) -> None:
    """Half an hour with no sound between two seconds of it (a 30-minute recording whose
    microphone was off): the pause is encoded as silence, 12-25 s of work on the decode thread
    here, and a cancel must not wait for all of it."""
    pause = 1800
    source = hostile.audio_runs(tmp_path / "pause.mkv",
                                [*range(30), *range(pause * 30, pause * 30 + 30)],
                                [(1.0, 0), (1.0, pause * 48000)])
    out = tmp_path / "out"
    job = Job(source, out, engine_options(segment_seconds=4.0))
    job.start()
    deadline = time.monotonic() + 60
    # 2 s of sound make one segment: the 31st means the silence is being encoded.
    while len(list(out.glob("audio/seg_*"))) < 30:
        assert time.monotonic() < deadline and not job.wait(0.05), (job.state, job.error)
    assert _cancelled_in(job) < 2.0


def _cancelled_in(job: Job) -> float:
    """Cancel ``job``; the seconds until it ended, CANCELLED."""
    job.cancel()
    cancelled_at = time.monotonic()
    assert job.wait(30)
    took = time.monotonic() - cancelled_at
    assert job.state == JobState.CANCELLED, (job.state, job.error, took)
    return took


def test_a_finished_job_holds_no_codec_threads(sources: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    started = threading.Event()
    slow_decode(monkeypatch, 0.005, started, after=10)
    job = Job(sources / "long.mp4", tmp_path / "out", engine_options())
    before = Held.now()
    job.start()
    assert started.wait(30)
    job.cancel()
    assert job.wait(10) and job.state == JobState.CANCELLED
    time.sleep(0.2)
    # The job object is still referenced (a server keeps it for a while; so does this test).
    extra = Held.now().native_threads - before.native_threads
    assert not extra, dict(extra)


def test_cancel_through_the_service_mid_rung(sources: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    slow_decode(monkeypatch, 0.005)
    output = tmp_path / "out"
    with in_process(sources, output, tmp_path / "data") as running:
        job = running.stub.Transcode(pb.TranscodeRequest(source="long.mp4", output="c",
                                                         options=OPTIONS), timeout=30)
        watch(running.stub, job.id, until=lambda e: e.HasField("progress")
              and e.progress.rungs[0].frames_done > 10)
        # Status counts the frames decoded while the decoder runs, not only once it is done.
        decoding = running.stub.Status(pb.StatusRequest(job_id=job.id), timeout=10)
        assert decoding.frames_decoded > 10
        started = time.monotonic()
        stopped = running.stub.Cancel(pb.CancelRequest(job_id=job.id), timeout=10)
        assert time.monotonic() - started < 2.0
        assert stopped.state == pb.CANCELLED
        assert stopped.frames_decoded >= decoding.frames_decoded
        # Cancel answers once the job has stopped and cleaned up, not only ended.
        assert list((running.data / "scratch").iterdir()) == []
        assert leftovers(output) == []


# -- the watchdog ---------------------------------------------------------------------------------


def test_the_watchdog_stops_a_job_that_runs_too_long(sources: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    slow_decode(monkeypatch, 0.02)  # 240 frames: about 5 s
    output = tmp_path / "out"
    with in_process(sources, output, tmp_path / "data",
                    watchdog=Watchdog(fixed_s=1.0, grace_s=5)) as running:
        started = time.monotonic()
        job = running.stub.Transcode(pb.TranscodeRequest(source="long.mp4", output="slow",
                                                         options=OPTIONS), timeout=30)
        events = watch(running.stub, job.id)
        assert time.monotonic() - started < 3.5
        assert events[-1].state == pb.FAILED
        error = events[-1].failed.error
        assert error.code == "TIMED_OUT" and "time limit of 1 s" in error.message, error
        status = running.stub.Status(pb.StatusRequest(job_id=job.id), timeout=10)
        assert status.state == pb.FAILED and status.error == error
        assert scratch_freed(running.data / "scratch")
        assert leftovers(output) == []
        if (output / "slow" / "master.m3u8").exists():
            read_ladder(output / "slow")


def test_the_watchdog_abandons_a_stuck_job_and_the_server_goes_on(
        sources: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    real_decode = engine.job.decode_source

    def stuck(source: Any, *args: Any, **kwargs: Any) -> Any:
        if "stuck" in str(source.info.path):
            release.wait(60)  # deaf to cancel, like a blocking read that never returns
        return real_decode(source, *args, **kwargs)

    monkeypatch.setattr(engine.job, "decode_source", stuck)
    shutil.copy(sources / "short.mp4", tmp_path / "stuck.mp4")
    shutil.copy(sources / "short.mp4", tmp_path / "fine.mp4")
    output = tmp_path / "out"
    with in_process(tmp_path, output, tmp_path / "data", max_jobs=1,
                    watchdog=Watchdog(fixed_s=1.0, grace_s=0.5)) as running:
        job = running.stub.Transcode(pb.TranscodeRequest(source="stuck.mp4", output="stuck",
                                                         options=OPTIONS), timeout=30)
        started = time.monotonic()
        events = watch(running.stub, job.id)
        assert time.monotonic() - started < 4
        error = events[-1].failed.error
        assert error.code == "TIMED_OUT" and "did not stop" in error.message, error
        # The only worker is stuck; its replacement runs the next job.
        fine = _run(running.stub, "fine.mp4", "fine")
        assert fine.state == pb.COMPLETE, fine.error
        release.set()
        deadline = time.monotonic() + 10
        while sum(t.name.startswith("job-worker") for t in threading.enumerate()) > 1:
            assert time.monotonic() < deadline, "the abandoned worker never went away"
            time.sleep(0.05)
