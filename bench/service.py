"""Rungs through its gRPC service: one warm ``rungs serve`` for the whole benchmark, a job a round.

This is how internal services use Rungs, so it is timed as they see it: from the Transcode call,
with the server already running (no interpreter start-up in the job's times). The server's CPU
seconds over the job and its peak RSS while the job runs are measured with psutil, the figures
of the job itself (frames decoded) come from its COMPLETE event.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

import grpc
import psutil

from bench.measure import RSS_INTERVAL_S
from bench.outputs import bytes_written
from bench.systems import RUNGS_GRPC, BenchError, RungTimes, Setup, SystemRun
from engine.rpc import transcoder_pb2 as pb
from engine.rpc import transcoder_pb2_grpc

#: How long the server may take to say it listens.
START_TIMEOUT_S = 30.0


class Service:
    """``python -m engine.cli serve`` from the measured engine copy, on a free loopback port."""

    def __init__(self, setup: Setup, folder: Path) -> None:
        self.setup = setup
        # A fresh data directory and output root: job names start again at job-1.
        shutil.rmtree(folder, ignore_errors=True)
        self.outputs = folder / "out"
        self.outputs.mkdir(parents=True, exist_ok=True)
        self.log = folder / "server.log"
        self._jobs = 0
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "engine.cli", "serve", "--listen", "127.0.0.1:0",
                 "--data-dir", str(folder / "data"),
                 "--source-root", str(setup.source.path.parent),
                 "--output-root", str(self.outputs), "--max-queue", "1"],
                cwd=setup.rungs_cwd, stdout=subprocess.DEVNULL, stderr=log)
        try:
            self.channel = grpc.insecure_channel(f"127.0.0.1:{self._port()}")
            self.stub = transcoder_pb2_grpc.TranscoderStub(self.channel)
        except BaseException:
            self._stop()
            raise

    def __enter__(self) -> Service:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.channel.close()
        self._stop()

    def run(self) -> SystemRun:
        """One job on the source, timed from the Transcode call to its COMPLETE event."""
        self._jobs += 1
        name = f"job-{self._jobs}"
        process = psutil.Process(self.process.pid)
        cpu_before = _cpu_seconds(process)
        sampler = _PeakRss(process)
        try:
            return self._job(name, process, cpu_before, sampler)
        finally:
            sampler.stop()  # a refused or failed job's too

    def _job(self, name: str, process: psutil.Process, cpu_before: float,
             sampler: _PeakRss) -> SystemRun:
        started = time.monotonic()
        try:
            job = self.stub.Transcode(pb.TranscodeRequest(
                source=self.setup.source.path.name, output=name,
                options=pb.TranscodeOptions(encoder="libx264",
                                            segment_seconds=self.setup.segment_seconds)),
                timeout=60)
        except grpc.RpcError as exc:
            raise BenchError(f"rungs via gRPC refused the job: {exc.code().name}: "
                             f"{exc.details()}") from exc
        times: dict[str, float] = {}
        published: dict[str, float] = {}
        complete: pb.CompleteEvent | None = None
        for event in self.stub.Watch(pb.WatchRequest(job_id=job.id)):
            kind = event.WhichOneof("kind")
            now = time.monotonic() - started
            times.setdefault(kind, now)
            if kind == "rung_published":
                published[event.rung_published.rung] = now
            elif kind == "complete":
                complete = event.complete
            elif kind in ("failed", "cancelled"):
                raise BenchError(f"rungs via gRPC did not complete: {event}")
        total = time.monotonic() - started
        peak = sampler.stop()
        assert complete is not None
        first = self.setup.rungs[0].name
        return SystemRun(
            system=RUNGS_GRPC, time_to_playable_s=published[first],
            time_to_first_segment_s=times.get("first_segment", published[first]),
            total_s=total, cpu_s=_cpu_seconds(process) - cpu_before, peak_rss_bytes=peak,
            frames_decoded=complete.frames_decoded, source_frames=complete.source_frames,
            bytes_written=bytes_written(self.outputs / name),
            rungs={plan.name: RungTimes(times.get("running", 0.0), published[plan.name])
                   for plan in self.setup.rungs},
            out_dir=self.outputs / name,
            details={"transcode_call_s": round(times.get("queued", 0.0), 3),
                     "ready_s": round(times["ready"], 3),
                     "engine_total_s": round(complete.total_seconds, 3)})

    def _port(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if "rungs: listening on" in line:
                    return int(line.rsplit(":", 1)[1])
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise BenchError(f"rungs serve did not start: {self.log.read_text()[-2000:]}")

    def _stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


class _PeakRss:
    """The largest RSS of ``process`` seen every ``RSS_INTERVAL_S`` until :meth:`stop`."""

    def __init__(self, process: psutil.Process) -> None:
        self._process = process
        self._peak = process.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return int(self._peak)

    def _sample(self) -> None:
        while not self._done.wait(RSS_INTERVAL_S):
            try:
                self._peak = max(self._peak, self._process.memory_info().rss)
            except psutil.Error:  # the server has gone: the job fails on its own
                return
