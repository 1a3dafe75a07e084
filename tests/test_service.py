"""The gRPC service end to end: real servers on ephemeral loopback ports, clients through the
generated stubs (and the ``rungs`` client commands as subprocesses).

Media is generated once per module: a 4 s clip that transcodes in well under a second, and a
20 s one whose job lasts long enough to cancel, kill or stop in the middle (on two cores its top
rung is published about a second after its first).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import grpc
import m3u8
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from engine.manager import JobManager, Subscription
from engine.rpc import generate, transcoder_pb2_grpc
from engine.rpc import transcoder_pb2 as pb
from engine.server import RungsServer, create_server
from engine.store import StoreError
from tests import hostile, media
from tests.serving import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
#: The small ladder and segment length every job here uses.
OPTIONS = pb.TranscodeOptions(ladder=[180, 360], segment_seconds=2)
# Early playback is on by default: READY at the first rung's first segment.
MILESTONES = ["queued", "running", "poster_ready", "first_segment", "ready", "rung_published",
              "rung_published", "complete"]
LONG_SECONDS = 20


# -- fixtures ---------------------------------------------------------------------------------


@dataclass
class Dirs:
    source: Path
    output: Path

    def data(self, name: str) -> Path:
        return self.source.parent / f"data-{name}"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> Dirs:
    base = tmp_path_factory.mktemp("service")
    source = base / "src"
    source.mkdir()
    media.make_video(source / "short.mp4", width=640, height=360, seconds=4)
    media.make_video(source / "long.mp4", width=640, height=360, seconds=LONG_SECONDS)
    media.make_text_file(source / "notes.mp4")
    (source / "escape.mp4").symlink_to(source / ".." / "outside.mp4")
    media.make_video(base / "outside.mp4", width=320, height=180, seconds=1)
    output = base / "out"
    output.mkdir()
    (output / "escape").symlink_to(base)
    return Dirs(source, output)


@dataclass
class Running:
    server: RungsServer
    port: int
    stub: Any
    channel: grpc.Channel


@pytest.fixture
def start(dirs: Dirs) -> Iterator[Callable[..., Running]]:
    """Start a server (stopped at the end of the test) on a data dir of the given name."""
    started: list[Running] = []

    def start_server(data: str, **kwargs: Any) -> Running:
        server, port = create_server("127.0.0.1:0", data_dir=dirs.data(data),
                                     source_root=dirs.source, output_root=dirs.output, **kwargs)
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        running = Running(server, port, transcoder_pb2_grpc.TranscoderStub(channel), channel)
        started.append(running)
        return running

    yield start_server
    for running in started:
        running.channel.close()
        running.server.stop(grace=1)


@pytest.fixture(scope="module")
def shared(dirs: Dirs) -> Iterator[Running]:
    """One server for the tests that leave it idle (errors, health)."""
    server, port = create_server("127.0.0.1:0", data_dir=dirs.data("shared"),
                                 source_root=dirs.source, output_root=dirs.output)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield Running(server, port, transcoder_pb2_grpc.TranscoderStub(channel), channel)
    channel.close()
    server.stop(grace=1)


def transcode(stub: Any, source: str, output: str, **fields: Any) -> pb.Job:
    options = fields.pop("options", OPTIONS)
    job: pb.Job = stub.Transcode(pb.TranscodeRequest(source=source, output=output,
                                                     options=options, **fields), timeout=30)
    return job


def watch(stub: Any, job_id: str, after: int = 0,
          until: Callable[[pb.JobEvent], bool] | None = None) -> list[pb.JobEvent]:
    """Events of a Watch, to its end (or to the first event ``until`` accepts)."""
    events = []
    call = stub.Watch(pb.WatchRequest(job_id=job_id, after_sequence=after), timeout=60)
    for event in call:
        events.append(event)
        if until is not None and until(event):
            call.cancel()
            break
    return events


def kinds(events: list[pb.JobEvent], progress: bool = False) -> list[str]:
    return [k for e in events if (k := e.WhichOneof("kind")) != "progress" or progress]


def rpc_error(call: Callable[[], Any], code: grpc.StatusCode) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error: Any = info.value
    assert error.code() == code, error.details()
    return info.value


def error_code(error: Any) -> str:
    return dict(error.trailing_metadata() or ())["rungs-error-code"]


def decoded_frames(master: Path) -> int:
    """Frames of the first video stream PyAV's HLS demuxer finds through ``master``."""
    with av.open(str(master)) as container:
        return sum(1 for _ in container.decode(video=0))


# -- the generated code -----------------------------------------------------------------------


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    assert generate.differences(tmp_path) == [], (
        "engine/rpc is stale: run python -m engine.rpc.generate")


# -- a job from start to end ------------------------------------------------------------------


def test_watch_sees_every_milestone_in_order_and_status_agrees(
        start: Callable[..., Running], dirs: Dirs) -> None:
    running = start("milestones")
    stub = running.stub
    job = transcode(stub, "short.mp4", "milestones")
    assert job.state == pb.QUEUED and job.source == "short.mp4" and job.output == "milestones"
    assert list(job.options.ladder) == [180, 360] and job.options.encoder == "auto"

    events = watch(stub, job.id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert kinds(events) == MILESTONES
    published = [e.rung_published for e in events if e.HasField("rung_published")]
    assert [p.rung for p in published] == ["180p", "360p"]
    states = {e.WhichOneof("kind"): e.state for e in events if not e.HasField("progress")}
    assert states["running"] == pb.RUNNING and states["ready"] == pb.READY
    assert states["complete"] == pb.COMPLETE
    ready = next(e.ready for e in events if e.HasField("ready"))
    poster = next(e.poster_ready for e in events if e.HasField("poster_ready"))
    complete = events[-1].complete

    status = stub.Status(pb.StatusRequest(job_id=job.id))
    assert status.state == pb.COMPLETE and status.last_sequence == events[-1].sequence
    assert status.master_playlist == ready.master_playlist == "milestones/master.m3u8"
    assert status.poster == poster.poster == "milestones/poster.jpg"
    assert [(r.name, r.state, r.bandwidth, r.average_bandwidth, r.encoder) for r in status.rungs] \
        == [(p.rung, pb.PUBLISHED, p.bandwidth, p.average_bandwidth, p.encoder) for p in published]
    assert all(r.frames_done == r.frames_total == complete.source_frames for r in status.rungs)
    assert status.frames_decoded == complete.frames_decoded == complete.source_frames == 120
    assert not status.HasField("error")
    times = [status.created_at, status.started_at, status.ready_at, status.completed_at]
    assert [t.ToNanoseconds() for t in times] == sorted(t.ToNanoseconds() for t in times)
    assert status.ended_at == status.completed_at
    assert status.rungs[0].published_at == published_events_time(events, "180p")
    assert (dirs.output / status.master_playlist).is_file()
    assert decoded_frames(dirs.output / status.master_playlist) == 120

    # A Watch started after the end replays the whole history; after_sequence skips a prefix.
    assert watch(stub, job.id) == events
    assert watch(stub, job.id, after=5) == events[5:]
    assert watch(stub, job.id, after=len(events)) == []

    # Everything answers the same after a restart on the same data directory.
    listed = stub.ListJobs(pb.ListJobsRequest())
    running.server.stop(grace=1)
    again = start("milestones").stub
    assert again.Status(pb.StatusRequest(job_id=job.id)) == status
    assert watch(again, job.id) == events
    assert again.ListJobs(pb.ListJobsRequest()) == listed


def test_a_complete_job_lists_its_audio_and_subtitles(start: Callable[..., Running],
                                                      dirs: Dirs) -> None:
    """The audio and subtitle renditions the master playlist lists are in the complete event
    and in the job, which the store keeps: language, flags and playlist (relative to the output
    root)."""
    media.make_subtitled(dirs.source / "short.mp4", dirs.source / "subtitled.mkv", [
        media.SubtitleSpec([(0.5, 1.5, "Hello")], language="eng", title="English",
                           default=True),
        media.SubtitleSpec([(1.0, 2.0, "Bonjour")], language="fre", forced=True),
        media.SubtitleSpec([(2.0, 3.0, "???")], title="Commentary")])
    running = start("subtitles")
    job = transcode(running.stub, "subtitled.mkv", "subtitled")
    complete = watch(running.stub, job.id)[-1].complete
    listed = [(t.name, t.language, t.default, t.forced, t.playlist) for t in complete.subtitles]
    assert [track[:4] for track in listed] == [("English", "en", True, False),
                                               ("Français", "fr", False, True),
                                               ("Commentary", "", False, False)]
    master = m3u8.load(str(dirs.output / "subtitled" / "master.m3u8"))
    assert [t.playlist for t in complete.subtitles] == [
        f"subtitled/{m.uri}" for m in master.media if m.type == "SUBTITLES"]
    assert all((dirs.output / t.playlist).is_file() for t in complete.subtitles)
    assert [(a.name, a.language, a.channels, a.playlist) for a in complete.audio] == [
        ("Audio 1", "", 2, f"subtitled/{m.uri}") for m in master.media if m.type == "AUDIO"]
    status = running.stub.Status(pb.StatusRequest(job_id=job.id))
    assert status.subtitles == complete.subtitles and status.audio == complete.audio
    shown = rungs("status", job.id, server=running).stdout
    assert f"  subtitle English (en)  {listed[0][4]}\n" in shown, shown
    assert f"  subtitle Commentary  {listed[2][4]}\n" in shown, shown
    assert f"  audio    Audio 1 (und, 2 channels)  {complete.audio[0].playlist}\n" in shown, shown
    watched = rungs("watch", job.id, server=running).stdout
    assert "; subtitles: English, Français, Commentary" in watched, watched
    running.server.stop(grace=1)
    assert start("subtitles").stub.Status(pb.StatusRequest(job_id=job.id)) == status


def test_a_complete_job_names_its_closed_captions(start: Callable[..., Running],
                                                  dirs: Dirs) -> None:
    """The CEA-608 channels the master declares are in the complete event and the job: the
    pictures carry them, so no playlist names them otherwise."""
    triples = [a + b for a, b in zip(media.cea608_pop_on(["ONE"], 30, channel=1),
                                     media.cea608_pop_on(["TWO"], 30, channel=4), strict=False)]
    media.make_video(dirs.source / "captioned.mp4", width=160, height=90, seconds=1.0,
                     captions=triples)
    running = start("captions")
    job = transcode(running.stub, "captioned.mp4", "captioned")
    complete = watch(running.stub, job.id)[-1].complete
    master = m3u8.load(str(dirs.output / "captioned" / "master.m3u8"))
    declared = [m.instream_id for m in master.media if m.type == "CLOSED-CAPTIONS"]
    assert list(complete.closed_captions) == declared == ["CC1", "CC4"]
    status = running.stub.Status(pb.StatusRequest(job_id=job.id))
    assert status.closed_captions == complete.closed_captions
    assert "  captions CC1, CC4 (CEA-608, in the video)\n" in rungs("status", job.id,
                                                                  server=running).stdout
    assert "; closed captions: CC1, CC4" in rungs("watch", job.id, server=running).stdout
    running.server.stop(grace=1)
    assert start("captions").stub.Status(pb.StatusRequest(job_id=job.id)) == status


def published_events_time(events: list[pb.JobEvent], rung: str) -> Any:
    return next(e.time for e in events
                if e.HasField("rung_published") and e.rung_published.rung == rung)


def test_request_id_makes_transcode_idempotent(start: Callable[..., Running]) -> None:
    stub = start("idempotent").stub
    first = transcode(stub, "short.mp4", "idem", request_id="upload-42")
    again = transcode(stub, "short.mp4", "idem", request_id="upload-42")
    assert again.id == first.id
    error = rpc_error(lambda: transcode(stub, "short.mp4", "other", request_id="upload-42"),
                      grpc.StatusCode.ALREADY_EXISTS)
    assert error_code(error) == "REQUEST_ID_REUSED"
    assert watch(stub, first.id)[-1].state == pb.COMPLETE
    # Still the same job once it has ended, and no second job was made.
    assert transcode(stub, "short.mp4", "idem", request_id="upload-42").state == pb.COMPLETE
    assert [j.id for j in stub.ListJobs(pb.ListJobsRequest()).jobs] == [first.id]


def test_queue_is_fifo_bounded_listed_and_cancellable(start: Callable[..., Running],
                                                      dirs: Dirs) -> None:
    stub = start("queue", max_jobs=1, max_queue=2).stub
    first = transcode(stub, "long.mp4", "q-first")
    watch(stub, first.id, until=lambda e: e.HasField("running"))
    busy = rpc_error(lambda: transcode(stub, "short.mp4", "q-first/inner"),
                     grpc.StatusCode.ALREADY_EXISTS)
    assert error_code(busy) == "OUTPUT_IN_USE"
    second = transcode(stub, "short.mp4", "q-second")
    # Its source disappears while it waits: found only when it runs, so the job FAILS.
    shutil.copy(dirs.source / "short.mp4", dirs.source / "vanishing.mp4")
    third = transcode(stub, "vanishing.mp4", "q-third")
    (dirs.source / "vanishing.mp4").unlink()
    full = rpc_error(lambda: transcode(stub, "short.mp4", "q-fourth"),
                     grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert error_code(full) == "QUEUE_FULL" and "queue is full" in full.details()

    page = stub.ListJobs(pb.ListJobsRequest(page_size=2))
    assert [j.id for j in page.jobs] == [third.id, second.id] and page.next_page_token
    rest = stub.ListJobs(pb.ListJobsRequest(page_size=2, page_token=page.next_page_token))
    assert [j.id for j in rest.jobs] == [first.id] and not rest.next_page_token
    queued = stub.ListJobs(pb.ListJobsRequest(states=[pb.QUEUED]))
    assert [j.id for j in queued.jobs] == [third.id, second.id]

    # A queued job is cancelled at once and never runs.
    cancelled = stub.Cancel(pb.CancelRequest(job_id=second.id))
    assert cancelled.state == pb.CANCELLED
    assert kinds(watch(stub, second.id)) == ["queued", "cancelled"]

    # A running job stops mid-encode; what it had not published is removed.
    stopped = stub.Cancel(pb.CancelRequest(job_id=first.id))
    assert stopped.state == pb.CANCELLED and not stopped.HasField("completed_at")
    events = watch(stub, first.id)
    assert events[-1].cancelled.reason == "cancelled by a client"
    assert "complete" not in kinds(events)
    unpublished = [r.name for r in stopped.rungs if r.state != pb.PUBLISHED]
    assert unpublished and not any((dirs.output / "q-first" / n).exists() for n in unpublished)
    # Cancelling a job that has ended changes nothing.
    assert stub.Cancel(pb.CancelRequest(job_id=first.id)) == stopped

    # Then the queue moves on: the third job runs, and fails with the engine's code.
    events = watch(stub, third.id)
    assert kinds(events) == ["queued", "running", "failed"]
    error = stub.Status(pb.StatusRequest(job_id=third.id)).error
    assert error == events[-1].failed.error
    assert error.code == "INVALID_SOURCE"
    assert error.message == "source 'vanishing.mp4' does not exist or is not a file"


def test_a_watcher_that_never_reads_does_not_hold_the_job_back(
        start: Callable[..., Running]) -> None:
    running = start("slow-watcher")
    job = transcode(running.stub, "long.mp4", "slow")
    # A tiny buffer, never read while the job runs: progress events are dropped, nothing else.
    stream = running.server.manager.watch(job.id, buffer=2)
    fast = watch(running.stub, job.id)
    assert fast[-1].state == pb.COMPLETE
    slow = list(stream)
    assert kinds(slow) == kinds(fast) == MILESTONES
    assert [e for e in slow if not e.HasField("progress")] == \
        [e for e in fast if not e.HasField("progress")]
    # Only progress events may be missing, and those kept are the same events, in order.
    assert set(map(bytes, map(pb.JobEvent.SerializeToString, slow))) <= \
        set(map(bytes, map(pb.JobEvent.SerializeToString, fast)))
    assert [e.sequence for e in slow] == sorted(e.sequence for e in slow)
    assert len(kinds(fast, progress=True)) > 2 + len(MILESTONES)  # so some had to be dropped
    assert len(slow) < len(fast)


def test_subscription_keeps_every_milestone_and_coalesces_progress() -> None:
    subscription = Subscription(capacity=3)
    events = [pb.JobEvent(sequence=n, progress=pb.ProgressEvent()) for n in range(1, 6)]
    events.insert(2, pb.JobEvent(sequence=99, ready=pb.ReadyEvent()))
    events += [pb.JobEvent(sequence=100 + n, rung_published=pb.RungPublishedEvent())
               for n in range(4)]
    for event in events:
        subscription.put(event)
    kept = []
    while (event := subscription.get(timeout=0)) is not None:
        kept.append(event)
    assert [e.sequence for e in kept if not e.HasField("progress")] == [99, 100, 101, 102, 103]
    assert subscription.dropped == 5 - sum(e.HasField("progress") for e in kept)


# -- refusals -----------------------------------------------------------------------------------


BAD_REQUESTS: dict[str, tuple[dict[str, Any], grpc.StatusCode, str, str]] = {
    "not a video": ({"source": "notes.mp4"}, grpc.StatusCode.INVALID_ARGUMENT,
                    "INVALID_SOURCE", "not a video"),
    "missing source": ({"source": "nothing.mp4"}, grpc.StatusCode.INVALID_ARGUMENT,
                       "INVALID_SOURCE", "does not exist"),
    "source is a folder": ({"source": "."}, grpc.StatusCode.INVALID_ARGUMENT,
                           "INVALID_SOURCE", "not a file"),
    "empty source": ({"source": ""}, grpc.StatusCode.INVALID_ARGUMENT,
                     "INVALID_REQUEST", "source is empty"),
    "segment length": ({"options": pb.TranscodeOptions(segment_seconds=100)},
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_OPTIONS", "segment length"),
    "ladder": ({"options": pb.TranscodeOptions(ladder=[8])}, grpc.StatusCode.INVALID_ARGUMENT,
               "INVALID_OPTIONS", "ladder heights"),
    "encoder": ({"options": pb.TranscodeOptions(encoder="h263")},
                grpc.StatusCode.INVALID_ARGUMENT, "INVALID_OPTIONS", "unknown encoder"),
    "output is the root": ({"output": "."}, grpc.StatusCode.INVALID_ARGUMENT,
                           "INVALID_REQUEST", "inside the output root"),
    "output with a line break": ({"output": "two\nlines"}, grpc.StatusCode.INVALID_ARGUMENT,
                                 "INVALID_REQUEST", "control character"),
    "output a lone space": ({"output": "jobs/ "}, grpc.StatusCode.INVALID_ARGUMENT,
                            "INVALID_REQUEST", "starts or ends with a space"),
    "request_id too long": ({"request_id": "k" * 257}, grpc.StatusCode.INVALID_ARGUMENT,
                            "INVALID_REQUEST", "request_id is 257 characters long"),
    "source ..": ({"source": "../outside.mp4"}, grpc.StatusCode.PERMISSION_DENIED,
                  "PATH_OUTSIDE_ROOT", "'..'"),
    "source absolute outside": ({"source": "/etc/hostname"}, grpc.StatusCode.PERMISSION_DENIED,
                                "PATH_OUTSIDE_ROOT", "outside the source root"),
    "source symlink out": ({"source": "escape.mp4"}, grpc.StatusCode.PERMISSION_DENIED,
                           "PATH_OUTSIDE_ROOT", "outside the source root"),
    "output ..": ({"output": "../elsewhere"}, grpc.StatusCode.PERMISSION_DENIED,
                  "PATH_OUTSIDE_ROOT", "'..'"),
    "output absolute outside": ({"output": "/tmp/rungs-elsewhere"},
                                grpc.StatusCode.PERMISSION_DENIED, "PATH_OUTSIDE_ROOT",
                                "outside the output root"),
    "output symlink out": ({"output": "escape/inner"}, grpc.StatusCode.PERMISSION_DENIED,
                           "PATH_OUTSIDE_ROOT", "outside the output root"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_transcode_refuses_bad_requests_with_their_code(shared: Running, case: str) -> None:
    fields, status, code, words = BAD_REQUESTS[case]
    request = {"source": "short.mp4", "output": f"bad-{len(case)}", "options": OPTIONS, **fields}
    error = rpc_error(lambda: shared.stub.Transcode(pb.TranscodeRequest(**request)), status)
    assert error_code(error) == code
    assert words in error.details()
    assert str(shared.server.manager.roots.source) not in error.details()


def test_a_non_empty_output_needs_overwrite(shared: Running, dirs: Dirs) -> None:
    (dirs.output / "full").mkdir()
    (dirs.output / "full" / "keep.txt").write_text("mine")
    error = rpc_error(lambda: transcode(shared.stub, "short.mp4", "full"),
                      grpc.StatusCode.ALREADY_EXISTS)
    assert error_code(error) == "OUTPUT_EXISTS" and "not empty" in error.details()
    job = transcode(shared.stub, "short.mp4", "full",
                    options=pb.TranscodeOptions(ladder=[180], segment_seconds=2, overwrite=True))
    assert watch(shared.stub, job.id)[-1].state == pb.COMPLETE
    assert not (dirs.output / "full" / "keep.txt").exists()


def test_outputs_never_hold_the_data_directory_or_a_source(tmp_path: Path,
                                                           dirs: Dirs) -> None:
    # The defaults' layout: sources, outputs and the data directory in one directory.
    share = tmp_path / "share"
    (share / "movies").mkdir(parents=True)
    for name in ("a.mp4", "b.mp4"):
        shutil.copy(dirs.source / "short.mp4", share / "movies" / name)
    shutil.copy(dirs.source / "short.mp4", share / "c.mp4")
    (share / "o1").mkdir()
    shutil.copy(dirs.source / "short.mp4", share / "o1" / "clip.mp4")
    server, port = create_server("127.0.0.1:0", data_dir=share / "rungs-data", source_root=share,
                                 output_root=share, max_jobs=1)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = transcoder_pb2_grpc.TranscoderStub(channel)
        overwrite = pb.TranscodeOptions(ladder=[180], segment_seconds=2, overwrite=True)
        for output in ("rungs-data", "rungs-data/scratch"):
            error = rpc_error(functools.partial(transcode, stub, "movies/a.mp4", output,
                                                options=overwrite),
                              grpc.StatusCode.INVALID_ARGUMENT)
            assert "data directory" in error.details()
        error = rpc_error(lambda: transcode(stub, "movies/a.mp4", "movies", options=overwrite),
                          grpc.StatusCode.INVALID_ARGUMENT)
        assert error_code(error) == "INVALID_OPTIONS" and "holds 'movies/a.mp4'" in error.details()
        assert str(share) not in error.details()

        running = transcode(stub, "movies/a.mp4", "running")
        replacing = transcode(stub, "movies/a.mp4", "o1", options=overwrite)  # queued
        reading = transcode(stub, "movies/b.mp4", "b-out")  # queued
        # Emptying "movies" would delete the queued job's source; the queued job emptying "o1"
        # would delete this one's.
        for source, output, words in (("c.mp4", "movies", "holds the source of job"),
                                      ("o1/clip.mp4", "clip-out", f"output of job {replacing.id}")):
            error = rpc_error(functools.partial(transcode, stub, source, output,
                                                options=overwrite),
                              grpc.StatusCode.ALREADY_EXISTS)
            assert error_code(error) == "OUTPUT_IN_USE" and words in error.details()
        for job in (reading, replacing, running):
            stub.Cancel(pb.CancelRequest(job_id=job.id), timeout=30)
        assert sorted(p.name for p in (share / "movies").iterdir()) == ["a.mp4", "b.mp4"]
        assert (share / "rungs-data" / "jobs.sqlite3").is_file()
        assert len(stub.ListJobs(pb.ListJobsRequest()).jobs) == 3
        # A job cancelled before it published anything leaves no directory it made behind.
        assert not (share / "running").exists() and not (share / "b-out").exists()
    finally:
        channel.close()
        server.stop(grace=1)


def test_a_watch_after_the_last_event_ends_with_the_job(shared: Running) -> None:
    job = transcode(shared.stub, "short.mp4", "watch-past", options=pb.TranscodeOptions(
        ladder=[180], segment_seconds=2))
    # Asked for events after ones that never come: nothing is sent, and the stream ends when
    # the job does (it used to stay open until its deadline, holding a Watch slot).
    assert watch(shared.stub, job.id, after=1000) == []
    assert shared.stub.Status(pb.StatusRequest(job_id=job.id)).state == pb.COMPLETE
    assert watch(shared.stub, job.id, after=2**32 - 1) == []


def test_unknown_jobs_and_bad_arguments(shared: Running) -> None:
    stub = shared.stub
    for call in (lambda: stub.Status(pb.StatusRequest(job_id="nope")),
                 lambda: stub.Cancel(pb.CancelRequest(job_id="nope")),
                 lambda: list(stub.Watch(pb.WatchRequest(job_id="nope")))):
        assert error_code(rpc_error(call, grpc.StatusCode.NOT_FOUND)) == "JOB_NOT_FOUND"
    rpc_error(lambda: stub.Status(pb.StatusRequest()), grpc.StatusCode.INVALID_ARGUMENT)
    for token in ("junk", base64.urlsafe_b64encode(f"before:{2**63}".encode()).decode()):
        rpc_error(functools.partial(stub.ListJobs, pb.ListJobsRequest(page_token=token)),
                  grpc.StatusCode.INVALID_ARGUMENT)
    rpc_error(lambda: stub.ListJobs(pb.ListJobsRequest(states=[42])),
              grpc.StatusCode.INVALID_ARGUMENT)


def test_health_reports_serving_and_reflection_lists_the_service(shared: Running) -> None:
    health = health_pb2_grpc.HealthStub(shared.channel)
    for service in ("", "rungs.v1.Transcoder"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(shared.channel)
    replies = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"rungs.v1.Transcoder", "grpc.health.v1.Health"} <= names


def test_a_damaged_job_database_is_refused_in_one_line(tmp_path: Path) -> None:
    """A data directory whose jobs.sqlite3 is not a database (a disk fault, a file copied over
    it): the server says so and exits 2, and the refusal leaves the directory unlocked."""
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    (data / "jobs.sqlite3").write_bytes(b"SQLite format 3\0" + bytes(range(256)) * 16)
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "serve", "--listen", "127.0.0.1:0", "--data-dir",
         str(data), "--source-root", str(tmp_path), "--output-root", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("rungs: ") and result.stderr.count("\n") == 1, result.stderr
    assert "cannot be read as Rungs' job database" in result.stderr
    with pytest.raises(StoreError):
        JobManager(data, tmp_path, out)
    (data / "jobs.sqlite3").rename(data / "damaged.sqlite3")
    JobManager(data, tmp_path, out).close()


# -- a server process: kill -9, restart, SIGTERM ------------------------------------------------


def test_kill_9_mid_job_then_restart_marks_it_interrupted_and_published_rungs_play(
        dirs: Dirs, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = ServerProcess(dirs.source, dirs.output, data, tmp_path / "first.log")
    job = transcode(first.stub, "long.mp4", "killed")
    before = watch(first.stub, job.id, until=lambda e: e.HasField("ready"))
    # Queued behind it to replace an earlier output, which it never gets to touch.
    earlier = dirs.output / "earlier"
    for name in ("master.m3u8", "audio/index.m3u8", "180p/index.m3u8"):
        (earlier / name).parent.mkdir(parents=True, exist_ok=True)
        (earlier / name).write_text(f"{name}\n")
    waiting = transcode(first.stub, "short.mp4", "earlier", options=pb.TranscodeOptions(
        ladder=[180], segment_seconds=2, overwrite=True))
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL

    second = ServerProcess(dirs.source, dirs.output, data, tmp_path / "second.log")
    status = second.stub.Status(pb.StatusRequest(job_id=job.id))
    assert status.state == pb.FAILED and status.error.code == "INTERRUPTED"
    assert [(r.name, r.state) for r in status.rungs] == [("180p", pb.PUBLISHED),
                                                         ("360p", pb.ENCODING)]
    assert status.master_playlist == "killed/master.m3u8"
    out = dirs.output / "killed"
    master = m3u8.load(str(out / "master.m3u8"))
    assert [p.uri for p in master.playlists] == ["180p/index.m3u8"]
    assert not (out / "360p").exists()  # half-written, removed
    # Killed at READY, which early playback reaches at the first rung's first segment: the rung
    # stays listed with the segments it had, its playlist ended, and every listed frame plays.
    listed = m3u8.load(str(out / "180p" / "index.m3u8"))
    assert listed.is_endlist and listed.segments
    listed_frames = round(sum(s.duration for s in listed.segments) * 30)
    assert 60 <= listed_frames <= LONG_SECONDS * 30
    assert decoded_frames(out / "master.m3u8") == listed_frames
    status = second.stub.Status(pb.StatusRequest(job_id=waiting.id))
    assert status.error.code == "INTERRUPTED" and "waiting to start" in status.error.message
    assert sorted(p.relative_to(earlier).as_posix() for p in earlier.rglob("*.m3u8")) == [
        "180p/index.m3u8", "audio/index.m3u8", "master.m3u8"]
    history = watch(second.stub, job.id)
    assert history[:len(before)] == before
    assert [e.sequence for e in history] == list(range(1, len(history) + 1))
    assert history[-1].failed.error.code == "INTERRUPTED"

    # SIGTERM mid-job: the job is cancelled and stored as such, and the process exits 0.
    stopped = transcode(second.stub, "long.mp4", "terminated")
    watch(second.stub, stopped.id, until=lambda e: e.HasField("running"))
    assert second.stop(signal.SIGTERM) == 0
    third = ServerProcess(dirs.source, dirs.output, data, tmp_path / "third.log")
    status = third.stub.Status(pb.StatusRequest(job_id=stopped.id))
    assert status.state == pb.CANCELLED
    assert watch(third.stub, stopped.id)[-1].cancelled.reason == "the server is shutting down"
    assert third.stop(signal.SIGTERM) == 0
    for server in (first, second, third):
        assert "Traceback" not in server.log.read_text()


# -- the client commands ------------------------------------------------------------------------


def rungs(*args: str, server: Running | None = None) -> subprocess.CompletedProcess[str]:
    address = ["--server", f"127.0.0.1:{server.port}"] if server else []
    return subprocess.run([sys.executable, "-m", "engine.cli", *args, *address], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "RUNGS_SERVER": "127.0.0.1:9"})


def test_status_and_watch_say_what_the_output_left_out(shared: Running, dirs: Dirs) -> None:
    source = hostile.unknown_audio_codec(dirs.source)
    submitted = rungs("submit", source.name, "silent", "--ladder", "180", "--json",
                      server=shared)
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    watched = rungs("watch", job_id, server=shared)
    note = "the source's audio is in a format FFmpeg cannot decode: the output has no sound"
    assert watched.stdout.rstrip().endswith(f"; note: {note}"), watched.stdout
    status = rungs("status", job_id, server=shared)
    assert f"  note     {note}\n" in status.stdout, status.stdout
    shown = json.loads(rungs("status", job_id, "--json", server=shared).stdout)
    assert shown["notes"] == [note] and shown["audio"] == []  # a silent output


def test_a_job_failed_on_its_source_exits_2_as_rungs_transcode_does(shared: Running,
                                                                    dirs: Dirs) -> None:
    """Half the frames wiped: the job fails DECODE_FAILED while it decodes. ``rungs transcode``
    exits 2 for it (bad input); so do ``submit --watch`` and ``watch`` (they said 1)."""
    hostile.corrupt_packets(dirs.source, "wiped.mp4", 0.5, 3, zeroed=True)
    submitted = rungs("submit", "wiped.mp4", "wiped", "--ladder", "180", "--watch",
                      server=shared)
    assert submitted.returncode == 2, submitted.stderr
    assert submitted.stderr.endswith("(DECODE_FAILED)\n"), submitted.stderr
    job_id = submitted.stdout.split()[1]
    watched = rungs("watch", job_id, server=shared)
    assert watched.returncode == 2 and "(DECODE_FAILED)" in watched.stderr, watched.stderr


def test_client_commands(shared: Running) -> None:
    submitted = rungs("submit", "short.mp4", "cli", "--ladder", "180,360", "--segment-seconds",
                      "2", "--watch", "--json", "--request-id", "cli-1", server=shared)
    assert submitted.returncode == 0, submitted.stderr
    lines = [json.loads(line) for line in submitted.stdout.splitlines()]
    assert lines[0]["type"] == "job" and lines[0]["state"] == "QUEUED"
    job_id = lines[0]["id"]
    events = lines[1:]
    assert [e["type"] for e in events if e["type"] != "progress"] == MILESTONES
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["state"] == "COMPLETE" and events[-1]["frames_decoded"] == 120

    status = rungs("status", job_id, "--json", server=shared)
    job = json.loads(status.stdout)
    assert status.returncode == 0 and job["state"] == "COMPLETE"
    assert [r["state"] for r in job["rungs"]] == ["PUBLISHED", "PUBLISHED"]
    human = rungs("status", job_id, server=shared)
    for words in ("COMPLETE", "180p", "PUBLISHED", "cli/master.m3u8"):
        assert words in human.stdout

    replay = rungs("watch", job_id, "--json", server=shared)
    assert replay.returncode == 0 and [json.loads(x) for x in replay.stdout.splitlines()] == events
    # Its reader gone before the first line (``| head``): quiet, as a tool SIGPIPE kills.
    for command in (["watch", job_id], ["watch", job_id, "--json"], ["jobs"]):
        read_end, write_end = os.pipe()
        os.close(read_end)
        headless = subprocess.run(
            [sys.executable, "-m", "engine.cli", *command, "--server", f"127.0.0.1:{shared.port}"],
            cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, check=False)
        os.close(write_end)
        assert headless.returncode == 128 + signal.SIGPIPE, headless.stderr
        assert headless.stderr == "", headless.stderr
    listed = rungs("jobs", "--json", "--state", "COMPLETE", server=shared)
    assert job_id in [json.loads(x)["id"] for x in listed.stdout.splitlines()]
    assert job_id in rungs("jobs", server=shared).stdout
    cancel = rungs("cancel", job_id, "--json", server=shared)
    assert cancel.returncode == 0 and json.loads(cancel.stdout)["state"] == "COMPLETE"

    missing = rungs("status", "nope", server=shared)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "NOT_FOUND" in missing.stderr
    refused = rungs("submit", "../outside.mp4", "x", server=shared)
    assert refused.returncode == 2 and "PERMISSION_DENIED" in refused.stderr
    unreachable = rungs("jobs")  # $RUNGS_SERVER points at a closed port
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr
