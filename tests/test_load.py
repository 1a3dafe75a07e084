"""Load: 8 jobs submitted at once to ``rungs serve --max-jobs 2``, watched by 100 concurrent
subscribers over loopback, with the server's memory sampled throughout.

Every job completes; every subscriber gets every state and rung event of its job, in order, the
same as the job's stored history; some subscribers stop reading for the whole run (their
buffers keep the milestones; the jobs do not wait for them); the server's resident memory stays
under RSS_BOUND_MB.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

import engine.fanout
import engine.manager
from engine.rpc import transcoder_pb2 as pb
from engine.rpc import transcoder_pb2_grpc
from engine.server import create_server
from tests import hostile
from tests.hostile import read_ladder
from tests.polling import Poller

ROOT = Path(__file__).resolve().parents[1]
JOBS = 8
SUBSCRIBERS = 100
#: Subscribers that read their first event, then nothing until every job has ended.
STALLED = 8
#: The server process's resident memory never goes above this (measured: 142 MB at the peak on
#: the 2-core machine: Python, PyAV/FFmpeg, gRPC, 116 RPC threads, 2 jobs' codecs and caches).
RSS_BOUND_MB = 300
OPTIONS = pb.TranscodeOptions(ladder=[144, 180], segment_seconds=1)
#: Events every job has (with early playback there is also first_segment).
MILESTONES = {"queued", "running", "poster_ready", "rung_published", "ready", "complete"}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Sampler(Poller):
    """Samples a process's resident memory every 20 ms."""

    pid: int
    peak_mb: float = 0.0
    samples: int = 0

    def poll(self) -> None:
        try:
            self.peak_mb = max(self.peak_mb, _rss_mb(self.pid))
        except OSError:  # the process has ended
            return
        self.samples += 1


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    source, output = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    for index in range(JOBS):
        hostile.video(source / f"clip{index}.mp4", seconds=3.0, seed=index)
    log = tmp_path / "server.log"
    with log.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "serve", "--listen", "127.0.0.1:0",
             "--data-dir", str(tmp_path / "data"), "--source-root", str(source),
             "--output-root", str(output), "--max-jobs", "2", "--max-queue", str(JOBS),
             "--workers", str(SUBSCRIBERS + STALLED + 8)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, text=True)
    port = 0
    deadline = time.monotonic() + 30
    while not port:
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        for line in log.read_text().splitlines():
            if "rungs: listening on" in line:
                port = int(line.rsplit(":", 1)[1])
        time.sleep(0.02)
    yield process, port, output
    process.terminate()
    assert process.wait(30) == 0
    assert "Traceback" not in log.read_text()


def _milestones(events: list[pb.JobEvent]) -> list[tuple[int, str]]:
    return [(e.sequence, e.WhichOneof("kind")) for e in events if not e.HasField("progress")]


def test_eight_jobs_and_a_hundred_watchers(server: tuple[subprocess.Popen[str], int, Path]
                                           ) -> None:
    process, port, output = server
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(4)]
    # The stalled readers' own connection grants the server only a small flow-control window,
    # so the server really cannot send them more than a few events until they read again.
    channels.append(grpc.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]))
    stubs: list[Any] = [transcoder_pb2_grpc.TranscoderStub(c) for c in channels]
    started = time.monotonic()
    with Sampler(process.pid) as rss:
        with ThreadPoolExecutor(JOBS) as pool:  # all at once
            jobs = list(pool.map(
                lambda i: stubs[i % 4].Transcode(pb.TranscodeRequest(
                    source=f"clip{i}.mp4", output=f"job{i}", options=OPTIONS), timeout=30),
                range(JOBS)))
        assert all(job.state == pb.QUEUED for job in jobs)

        all_done = threading.Event()
        received: dict[int, list[pb.JobEvent]] = {}

        def subscribe(number: int) -> None:
            job = jobs[number % JOBS]
            stub = stubs[4] if number >= SUBSCRIBERS else stubs[number % 4]
            call = stub.Watch(pb.WatchRequest(job_id=job.id), timeout=120)
            events = received.setdefault(number, [])
            for event in call:
                events.append(event)
                if number >= SUBSCRIBERS and len(events) == 1:
                    all_done.wait(120)  # a stalled reader: nothing more until the end

        threads = [threading.Thread(target=subscribe, args=(n,), name=f"watch-{n}")
                   for n in range(SUBSCRIBERS + STALLED)]
        for thread in threads:
            thread.start()
        # The jobs end while the stalled subscribers read nothing.
        for index, job in enumerate(jobs):
            final = list(stubs[0].Watch(pb.WatchRequest(job_id=job.id), timeout=120))
            assert final[-1].state == pb.COMPLETE, (index, final[-1])
        jobs_took = time.monotonic() - started
        all_done.set()
        for thread in threads:
            thread.join(60)
            assert not thread.is_alive(), thread.name
    for channel in channels:
        channel.close()

    histories = {job.id: list(stubs_history(port, job.id)) for job in jobs}
    for number, events in received.items():
        job = jobs[number % JOBS]
        history = histories[job.id]
        sequences = [e.sequence for e in events]
        assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
        assert events[-1].state == pb.COMPLETE, (number, events[-1])
        # Every state and rung event, in order; progress events may only be coalesced.
        assert _milestones(events) == _milestones(history), number
        assert {kind for _, kind in _milestones(events)} >= MILESTONES
        history_by_sequence = {e.sequence: e for e in history}
        assert all(e == history_by_sequence[e.sequence] for e in events)
    assert len(received) == SUBSCRIBERS + STALLED
    for index in range(JOBS):
        assert len(read_ladder(output / f"job{index}").rungs) == 2
    print(f"\n{JOBS} jobs, {SUBSCRIBERS} + {STALLED} stalled watchers: {jobs_took:.1f} s, "
          f"server peak RSS {rss.peak_mb:.0f} MB over {rss.samples} samples")
    assert rss.samples > 10
    assert rss.peak_mb < RSS_BOUND_MB


def stubs_history(port: int, job_id: str) -> Iterator[pb.JobEvent]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: Any = transcoder_pb2_grpc.TranscoderStub(channel)
        yield from stub.Watch(pb.WatchRequest(job_id=job_id), timeout=30)


def test_a_watcher_whose_connection_is_full_does_not_hold_the_job_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A watcher that stops reading on a connection with a 1 KiB flow-control window: the
    server can send it about 14 events, then its stream blocks (counted on the server side);
    the job still runs at full speed, and the watcher, once it reads again, gets the rest."""
    real_put = engine.fanout.FanOut.put

    def slow_put(self: engine.fanout.FanOut, *args: Any) -> None:
        time.sleep(0.015)  # 180 frames: a job of about 3 s, so about 20 events
        real_put(self, *args)

    monkeypatch.setattr(engine.fanout.FanOut, "put", slow_put)
    sent: dict[int, int] = {}
    real_iter = engine.manager.EventStream.__iter__

    def counting_iter(self: engine.manager.EventStream) -> Iterator[pb.JobEvent]:
        key = id(self)
        for event in real_iter(self):
            sent[key] = sent.get(key, 0) + 1
            yield event

    monkeypatch.setattr(engine.manager.EventStream, "__iter__", counting_iter)
    source = tmp_path / "src"
    source.mkdir()
    hostile.video(source / "clip.mp4", seconds=6.0)
    server, port = create_server("127.0.0.1:0", data_dir=tmp_path / "data", source_root=source,
                                 output_root=tmp_path / "out")
    server.start()
    fast_channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    tight_channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)])
    try:
        fast: Any = transcoder_pb2_grpc.TranscoderStub(fast_channel)
        tight: Any = transcoder_pb2_grpc.TranscoderStub(tight_channel)
        job = fast.Transcode(pb.TranscodeRequest(source="clip.mp4", output="o",
                                                 options=OPTIONS), timeout=30)
        stalled = tight.Watch(pb.WatchRequest(job_id=job.id), timeout=60)
        first = next(stalled)
        stalled_key = next(iter(sent))
        started = time.monotonic()
        events = list(fast.Watch(pb.WatchRequest(job_id=job.id), timeout=60))
        took = time.monotonic() - started
        assert events[-1].state == pb.COMPLETE
        assert took < 6, took  # decode alone is about 3 s: nothing waited for the watcher
        assert sent[stalled_key] < len(events), (sent[stalled_key], len(events))
        rest = [first, *stalled]
        assert _milestones(rest) == _milestones(events)
    finally:
        fast_channel.close()
        tight_channel.close()
        server.stop(grace=1)
