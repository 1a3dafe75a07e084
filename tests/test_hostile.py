"""Bad and odd inputs: every case of :mod:`tests.hostile` through ``rungs transcode`` (a real
subprocess) and through the gRPC service (a real server on loopback).

Each case ends in a correct ladder (the master parses, every listed rung's playlist is complete,
every segment decodes with PyAV on its own, in 8-bit 4:2:0 at the listed size) or a clear error
(exit 2 with one stderr line; INVALID_ARGUMENT, or a FAILED job with the source's error code when
the problem shows only while decoding) - never a traceback, a hang or a dead server.

Sources that reference other files point at named pipes outside the source root: FFmpeg opening
one would block until a writer comes, and a thread here keeps trying to connect as a writer, so
any open is seen (and no open can slip through as a quick read of an empty file).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import grpc
import pytest

from engine.rpc import transcoder_pb2 as pb
from engine.rpc import transcoder_pb2_grpc
from engine.server import create_server
from tests import fuzz, hostile
from tests.conftest import assert_iframe_playlists
from tests.hostile import Case, Expect, read_ladder
from tests.polling import Poller

ROOT = Path(__file__).resolve().parents[1]
LADDER_ARG = ",".join(map(str, hostile.LADDER))
#: Seconds any one case may take through the CLI before it counts as a hang.
CASE_TIMEOUT_S = 60
#: Error codes a job may fail with when its source turns out bad only while it is decoded.
SOURCE_CODES = ("INVALID_SOURCE", "UNSUPPORTED_SOURCE", "DECODE_FAILED")


# -- catching opens of the traps ------------------------------------------------------------


class PipeWatch(Poller):
    """Notices any process opening one of ``pipes`` (named pipes) for reading.

    A reader's open blocks until a writer arrives, so the reader stays visible until this
    thread's next non-blocking writer open (every 2 ms) succeeds; that open unblocks it (it then
    reads end of file) and is recorded.
    """

    interval_s = 0.002

    def __init__(self, pipes: list[Path]) -> None:
        self.pipes = pipes
        self.opened: list[Path] = []

    def poll(self) -> None:
        for pipe in self.pipes:
            try:
                fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: nobody has it open for reading
                continue
            os.close(fd)
            self.opened.append(pipe)


# -- running the corpus ---------------------------------------------------------------------------


@dataclass
class CliRun:
    returncode: int | None  # None: killed after CASE_TIMEOUT_S
    stdout: str
    stderr: str
    seconds: float
    out: Path


@dataclass
class ServiceRun:
    #: The refusal of the Transcode call (status code, details), if it was refused.
    refused: tuple[grpc.StatusCode, str] | None
    #: The job's final state, if it was accepted.
    job: pb.Job | None
    events: list[pb.JobEvent]
    out: Path


@dataclass
class Corpus:
    source: Path
    outside: Path
    cases: list[Case]
    cli: dict[str, CliRun]
    service: dict[str, ServiceRun]
    pipes_opened: list[Path]
    timings: dict[str, float]


def _run_cli(case: Case, source: Path, out: Path) -> CliRun:
    # From inside the source folder with a relative path, as a user would type it.
    command = [sys.executable, "-m", "engine.cli", "transcode", case.file, str(out), "--ladder",
               LADDER_ARG, "--segment-seconds", str(hostile.SEGMENT_SECONDS), "--json"]
    started = time.monotonic()
    try:
        result = subprocess.run(command, cwd=source, capture_output=True, text=True,
                                timeout=CASE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        return CliRun(None, str(exc.stdout or ""), str(exc.stderr or ""),
                      time.monotonic() - started, out)
    return CliRun(result.returncode, result.stdout, result.stderr, time.monotonic() - started,
                  out)


def _run_service(stub: Any, cases: list[Case], output: Path) -> dict[str, ServiceRun]:
    runs: dict[str, ServiceRun] = {}
    accepted: dict[str, str] = {}
    for case in cases:
        options = pb.TranscodeOptions(ladder=list(hostile.LADDER),
                                      segment_seconds=hostile.SEGMENT_SECONDS)
        request = pb.TranscodeRequest(source=case.file, output=case.name, options=options)
        try:
            job = stub.Transcode(request, timeout=CASE_TIMEOUT_S)
        except grpc.RpcError as exc:
            error: Any = exc
            runs[case.name] = ServiceRun((error.code(), error.details()), None, [],
                                         output / case.name)
            continue
        accepted[case.name] = job.id
    deadline = time.monotonic() + 4 * CASE_TIMEOUT_S
    for name, job_id in accepted.items():
        events = list(stub.Watch(pb.WatchRequest(job_id=job_id),
                                 timeout=max(1.0, deadline - time.monotonic())))
        status = stub.Status(pb.StatusRequest(job_id=job_id), timeout=10)
        runs[name] = ServiceRun(None, status, events, output / name)
    return runs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    base = tmp_path_factory.mktemp("hostile")
    timings: dict[str, float] = {}
    started = time.monotonic()
    cases = hostile.make_corpus(base / "src", base / "outside")
    timings["generate"] = time.monotonic() - started
    pipes = sorted({trap for case in cases for trap in case.traps})
    cli_out = base / "cli-out"
    service_out = base / "service-out"
    with PipeWatch(pipes) as watch:
        started = time.monotonic()
        # Two at a time: the CI machine has two cores.
        with ThreadPoolExecutor(2) as pool:
            futures = {case.name: pool.submit(_run_cli, case, base / "src", cli_out / case.name)
                       for case in cases}
            cli = {name: future.result() for name, future in futures.items()}
        timings["cli"] = time.monotonic() - started

        started = time.monotonic()
        server, port = create_server("127.0.0.1:0", data_dir=base / "data",
                                     source_root=base / "src", output_root=service_out,
                                     max_jobs=2, max_queue=len(cases))
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        try:
            stub = transcoder_pb2_grpc.TranscoderStub(channel)
            service = _run_service(stub, cases, service_out)
            # The server survived every case: it still answers, and still transcodes.
            job = stub.Transcode(pb.TranscodeRequest(
                source="plain.ts", output="after-the-corpus",
                options=pb.TranscodeOptions(ladder=[144], segment_seconds=1)), timeout=30)
            final = list(stub.Watch(pb.WatchRequest(job_id=job.id), timeout=60))
            assert final[-1].state == pb.COMPLETE, final[-1]
        finally:
            channel.close()
            server.stop(grace=1)
        timings["service"] = time.monotonic() - started
    return Corpus(base / "src", base / "outside", cases, cli, service, watch.opened, timings)


RECIPES = {recipe.name: recipe for recipe in hostile.RECIPES}
#: Cases that show a bug not fixed yet; each is reported, and the xfail is strict so the test
#: says so the moment the bug is fixed.
KNOWN_BUGS: dict[str, str] = {}


def _params() -> list[Any]:
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[name]))
            if name in KNOWN_BUGS else name for name in RECIPES]


def _case(corpus: Corpus, name: str) -> Case:
    return next(case for case in corpus.cases if case.name == name)


def _explain(case: Case, run: object) -> str:
    return f"{case.name} ({case.note or case.expect.value}): {run}"


# -- the corpus, both ways ----------------------------------------------------------------------


def test_the_corpus_is_big_and_fast(corpus: Corpus) -> None:
    assert len(corpus.cases) >= 30
    print(f"\n{len(corpus.cases)} cases; seconds: " +
          ", ".join(f"{k} {v:.1f}" for k, v in corpus.timings.items()))
    slow = {name: round(run.seconds, 1) for name, run in corpus.cli.items() if run.seconds > 15}
    assert not slow, f"cases that took long through the CLI: {slow}"


@pytest.mark.parametrize("name", _params())
def test_cli(corpus: Corpus, name: str) -> None:
    """``rungs transcode`` gives a ladder (exit 0), or refuses with one line (exit 2)."""
    case, run = _case(corpus, name), corpus.cli[name]
    assert run.returncode is not None, f"{name}: no answer in {CASE_TIMEOUT_S} s"
    if case.expect is Expect.LADDER or (case.expect is Expect.EITHER and run.returncode == 0):
        assert run.returncode == 0, _explain(case, run)
        assert run.stderr == "", _explain(case, run)
        summary = json.loads(run.stdout.splitlines()[-1])
        assert summary["type"] == "summary" and summary["state"] == "COMPLETE", summary
        _check_notes(case, summary["notes"])
        output = read_ladder(run.out)
        if case.check is not None:
            case.check(output)
        assert_iframe_playlists(run.out)
        return
    assert run.returncode == 2, _explain(case, run)
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rungs: "), _explain(case, run)
    for word in case.words:
        assert word in lines[0].lower(), (word, lines[0])
    assert "Traceback" not in run.stdout + run.stderr
    assert not (run.out / "master.m3u8").exists()
    if case.expect is Expect.REFUSED:
        assert not run.out.exists() or not any(run.out.iterdir()), list(run.out.iterdir())


@pytest.mark.parametrize("name", _params())
def test_service(corpus: Corpus, name: str) -> None:
    """The gRPC service gives a ladder, or refuses: INVALID_ARGUMENT at once, or (when the
    problem shows only while decoding) a FAILED job with the source's error code."""
    case, run = _case(corpus, name), corpus.service[name]
    completed = run.job is not None and run.job.state == pb.COMPLETE
    if case.expect is Expect.LADDER or (case.expect is Expect.EITHER and completed):
        assert run.refused is None and run.job is not None, _explain(case, run.refused)
        assert run.job.state == pb.COMPLETE, _explain(case, run.job.error)
        output = read_ladder(run.out)
        assert [(r.width, r.height) for r in run.job.rungs] == output.rungs
        assert all(r.state == pb.PUBLISHED for r in run.job.rungs)
        kinds = [e.WhichOneof("kind") for e in run.events]
        assert kinds[0] == "queued" and kinds[-1] == "complete", kinds
        assert run.events[-1].complete.notes == run.job.notes
        _check_notes(case, list(run.job.notes))
        if case.check is not None:
            case.check(output)
        return
    if run.refused is not None:
        code, message = run.refused
        assert code == grpc.StatusCode.INVALID_ARGUMENT, _explain(case, run.refused)
    else:
        assert run.job is not None and run.job.state == pb.FAILED, _explain(case, run.job)
        assert run.job.error.code in SOURCE_CODES, _explain(case, run.job.error)
        message = run.job.error.message
        assert [e.WhichOneof("kind") for e in run.events][-1] == "failed"
    for word in case.words:
        assert word in message.lower(), (word, message)
    assert str(corpus.source) not in message  # no server paths in what clients are told
    assert not (run.out / "master.m3u8").exists()


def _check_notes(case: Case, notes: list[str]) -> None:
    """The job's notes name what it left out of the source, and only that."""
    notes = [note for note in notes if not any(words in note for words in case.may_note)]
    assert len(notes) == len(case.notes), (case.notes, notes)
    for words, note in zip(case.notes, notes, strict=True):
        assert words in note, (words, note)


def _peak_rss_mb(corpus: Corpus, case: str, out: Path) -> float:
    """Peak resident memory of ``rungs transcode`` on a corpus file (os.wait4's rusage)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "transcode", _case(corpus, case).file, str(out),
         "--ladder", LADDER_ARG], cwd=corpus.source, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 2
    return usage.ru_maxrss / 1024


def test_huge_dimensions_are_refused_before_a_frame_is_allocated(corpus: Corpus,
                                                                 tmp_path: Path) -> None:
    """One 8192x8192 frame is 100 MB (FFmpeg's header probing used to decode one, and more
    with frame threads): refusing such a file costs no more memory than refusing an empty
    one, give or take what opening a real container loads."""
    baseline = _peak_rss_mb(corpus, "empty", tmp_path / "empty")
    for case in ("huge_dims_mp4", "huge_dims_ts", "huge_dims_h264"):
        peak = _peak_rss_mb(corpus, case, tmp_path / case)
        assert peak < baseline + 60, (case, peak, baseline)


def test_nothing_outside_the_source_root_was_opened(corpus: Corpus) -> None:
    trapped = [case for case in corpus.cases if case.traps]
    assert len(trapped) >= 4
    assert corpus.pipes_opened == []
    for case in trapped:
        assert corpus.cli[case.name].returncode == 2
        assert corpus.service[case.name].refused is not None


def test_cli_opens_no_file_outside_the_root_under_strace(corpus: Corpus,
                                                         tmp_path: Path) -> None:
    """The same, seen from the kernel's side: every file the CLI process tree opens."""
    strace = shutil.which("strace")
    if strace is None or subprocess.run([strace, "-f", "-o", os.devnull, "true"],
                                        capture_output=True, check=False).returncode != 0:
        pytest.skip("strace is not installed or may not trace here")
    for case in [c for c in corpus.cases if c.traps]:
        log = tmp_path / f"{case.name}.strace"
        result = subprocess.run(
            [strace, "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(log),
             sys.executable, "-m", "engine.cli", "transcode", case.file,
             str(tmp_path / case.name), "--ladder", LADDER_ARG],
            cwd=corpus.source, capture_output=True, text=True, timeout=CASE_TIMEOUT_S,
            check=False)
        assert result.returncode == 2, result.stderr
        opened = log.read_text()
        assert str(corpus.outside) not in opened, case.name
        assert "secret.mp4" not in opened, case.name
        assert f"/{case.file}" in opened  # the trace does see what it opens


def test_the_pipe_watch_sees_ffmpeg_follow_a_playlist(tmp_path: Path) -> None:
    """The control for the two tests above: without the allow-lists, FFmpeg does open the trap,
    and the watch sees it."""
    trap = tmp_path / "trap.mp4"
    os.mkfifo(trap)
    playlist = hostile.hls_playlist(tmp_path, "follow.m3u8", trap)
    with PipeWatch([trap]) as watch:
        with pytest.raises(av.error.FFmpegError):  # after reading the (empty) pipe
            av.open(str(playlist), timeout=10)
        deadline = time.monotonic() + 5
        while not watch.opened and time.monotonic() < deadline:
            time.sleep(0.01)
    assert watch.opened and set(watch.opened) == {trap}


# -- names that try to leave their root ---------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """A server with a small source root holding one video and some traps."""
    base = tmp_path_factory.mktemp("names")
    source, output, outside = base / "src", base / "out", base / "outside"
    for folder in (source, output, outside):
        folder.mkdir()
    hostile.video(source / "ok.mp4", width=160, height=90)
    os.mkfifo(outside / "secret.mp4")
    (source / "link-out.mp4").symlink_to(outside / "secret.mp4")
    (source / "link-dev.mp4").symlink_to("/dev/zero")
    (source / "loop.mp4").symlink_to(source / "loop.mp4")
    os.mkfifo(source / "fifo.mp4")  # inside the root, but opening it would block the probe
    (source / "folder.mp4").mkdir()
    (output / "escape").symlink_to(outside)
    server, port = create_server("127.0.0.1:0", data_dir=base / "data", source_root=source,
                                 output_root=output)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    with PipeWatch([outside / "secret.mp4", source / "fifo.mp4"]) as watch:
        yield transcoder_pb2_grpc.TranscoderStub(channel), output
    channel.close()
    server.stop(grace=1)
    assert watch.opened == []


LONG = "a" * 5000
BAD_SOURCES = ["../ok.mp4", "x/../../ok.mp4", "/etc/hostname", "ok.mp4/..", "bad\0name",
               LONG, f"{'b' * 300}.mp4", "link-out.mp4", "link-dev.mp4", "loop.mp4",
               "fifo.mp4", "folder.mp4", "/dev/zero", "file:ok.mp4", "%2e%2e/ok.mp4"]
BAD_OUTPUTS = ["../out", "x/../../y", "/tmp/rungs-elsewhere", "escape/x", "", ".", "nul\0",
               LONG, "c" * 300, "line\nbreak", "tab\tname", "del\x7f", " ", "a/ /b", "trail /x"]


@pytest.mark.parametrize("source", BAD_SOURCES, ids=lambda s: s[:20].replace("\0", "NUL"))
def test_bad_source_names_are_refused(service: tuple[Any, Path], source: str) -> None:
    stub, output = service
    request = pb.TranscodeRequest(source=source, output="fine",
                                  options=pb.TranscodeOptions(ladder=[90]))
    with pytest.raises(grpc.RpcError) as info:
        stub.Transcode(request, timeout=10)
    error: Any = info.value
    assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                            grpc.StatusCode.PERMISSION_DENIED), (error.code(), error.details())
    assert len(error.details()) < 400
    assert not (output / "fine").exists()


@pytest.mark.parametrize("out", BAD_OUTPUTS, ids=lambda s: s[:20].replace("\0", "NUL") or "''")
def test_bad_output_names_are_refused(service: tuple[Any, Path], out: str) -> None:
    stub, output = service
    before = sorted(p.name for p in output.iterdir())
    request = pb.TranscodeRequest(source="ok.mp4", output=out,
                                  options=pb.TranscodeOptions(ladder=[90]))
    with pytest.raises(grpc.RpcError) as info:
        stub.Transcode(request, timeout=10)
    error: Any = info.value
    assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                            grpc.StatusCode.PERMISSION_DENIED), (error.code(), error.details())
    assert sorted(p.name for p in output.iterdir()) == before


@pytest.mark.parametrize("job_id", ["../../etc/passwd", "/", "nul\0", LONG, "%2e%2e%2f", "*"],
                         ids=["dotdot", "slash", "nul", "long", "escaped", "star"])
def test_odd_job_ids_are_unknown_jobs(service: tuple[Any, Path], job_id: str) -> None:
    stub, _ = service
    calls = [lambda: stub.Status(pb.StatusRequest(job_id=job_id), timeout=10),
             lambda: stub.Cancel(pb.CancelRequest(job_id=job_id), timeout=10),
             lambda: list(stub.Watch(pb.WatchRequest(job_id=job_id), timeout=10))]
    for call in calls:
        with pytest.raises(grpc.RpcError) as info:
            call()
        error: Any = info.value
        assert error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), \
            (error.code(), error.details())


def test_the_server_still_works_after_the_bad_names(service: tuple[Any, Path]) -> None:
    stub, output = service
    job = stub.Transcode(pb.TranscodeRequest(source="ok.mp4", output="fine",
                                             options=pb.TranscodeOptions(ladder=[90])),
                         timeout=10)
    events = list(stub.Watch(pb.WatchRequest(job_id=job.id), timeout=60))
    assert events[-1].state == pb.COMPLETE
    read_ladder(output / "fine")


def test_the_fuzzer_runs(tmp_path: Path) -> None:
    """A few inputs of ``python -m tests.fuzz`` (the real runs are minutes long, by hand), so
    the harness keeps working: every input is decoded or refused, none crashes or hangs."""
    report = fuzz.run(seconds=60, seed=3, workers=1, out=tmp_path, iterations=12)
    assert report.executions == 12
    assert report.findings == [], report.summary()
    assert report.outcomes["decoded"] + report.outcomes["refused"] == 12


def test_making_the_fuzz_seeds_leaves_the_scheduling_as_it_was(tmp_path: Path) -> None:
    """The AV1 seed's encoder (SVT-AV1) makes its thread real-time where it may (as root): the
    seed maker puts it back, or every thread started afterwards inherits it (tests.fuzz.mutate).
    """
    before = (os.sched_getscheduler(0), os.sched_getparam(0))
    fuzz.mutate.make_seeds(tmp_path, ["av1_flac.mkv"])
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before
