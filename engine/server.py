"""The gRPC server: ``rungs serve``, and :func:`create_server` for tests and embedding.

One process serves ``rungs.v1.Transcoder``, the standard ``grpc.health.v1.Health`` service and
server reflection. SIGTERM (or Ctrl-C, or SIGHUP) stops it cleanly: health turns NOT_SERVING,
new RPCs are refused, queued and running jobs are cancelled (their final events end every
Watch), the store is closed, and the process exits 0.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from engine.cli import STOP_SIGNALS, Parser, host_port, port_number
from engine.errors import RungsError
from engine.manager import JobManager, Watchdog
from engine.probe import DEFAULT_MAX_DURATION_S, DEFAULT_MAX_PIXELS
from engine.rpc import transcoder_pb2_grpc
from engine.service import SERVICE_NAME, TranscoderService
from engine.store import StoreError
from engine.web import DEFAULT_HLS_JS, WebServer

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:50051"
#: Threads serving RPCs; each open Watch holds one.
DEFAULT_WORKERS = 32
#: Threads kept free of Watch streams, so Status, Cancel and the rest are always answered.
RESERVED_FOR_UNARY = 4
#: Seconds RPCs in flight get to finish when the server stops.
STOP_GRACE_S = 5.0
#: Seconds cancelled jobs get to end when the server stops; one still running after that is
#: left to the next start, which marks it INTERRUPTED.
STOP_JOBS_TIMEOUT_S = 30.0
#: How often the main thread of ``rungs serve`` wakes to run signal handlers.
SIGNAL_POLL_S = 0.25


class RungsServer:
    """A gRPC server and the job manager behind it, started and stopped together."""

    def __init__(self, server: grpc.Server, manager: JobManager,
                 health_servicer: health.HealthServicer,
                 executor: futures.ThreadPoolExecutor | None = None,
                 web: WebServer | None = None) -> None:
        self.grpc_server = server
        self.manager = manager
        self.health = health_servicer
        #: The HTTP server (outputs, player, progress), when one was asked for.
        self.web = web
        self._executor = executor
        self._stopped = False

    @property
    def http_port(self) -> int | None:
        return None if self.web is None else self.web.port

    def start(self) -> None:
        self.manager.start()
        self.grpc_server.start()
        if self.web is not None:
            self.web.start()

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Refuse new RPCs, cancel every job, let RPCs in flight finish (``grace`` seconds at
        most after the jobs end), then release the data directory. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.health.enter_graceful_shutdown()
        stopped = self.grpc_server.stop(grace)
        # Cancelling ends the jobs with terminal events, which end every Watch stream.
        self.manager.shutdown(STOP_JOBS_TIMEOUT_S)
        stopped.wait()
        if self.web is not None:
            self.web.stop()
        self.manager.close()
        # grpc.Server.stop leaves the pool's threads waiting for work forever: a process that
        # starts and stops servers (tests, embedding) would gather them.
        if self._executor is not None:
            self._executor.shutdown(wait=False)


def create_server(address: str = "127.0.0.1:0", *, data_dir: Path, source_root: Path,
                  output_root: Path, max_jobs: int = 1, max_queue: int = 16,
                  workers: int = DEFAULT_WORKERS, watchdog: Watchdog | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS,
                  max_duration_s: float = DEFAULT_MAX_DURATION_S,
                  http_port: int | None = None,
                  hls_js: Path = DEFAULT_HLS_JS) -> tuple[RungsServer, int]:
    """Build a server listening on ``address`` (port 0: any free port); returns it, not yet
    started, and the port it bound. With ``http_port`` (0: any free port) it also serves the
    outputs, a player page and progress over HTTP on the same host (:mod:`engine.web`).

    Raises :class:`RungsError` for a data directory in use or roots that cannot be used, and
    :class:`OSError` when ``address`` cannot be bound.
    """
    manager = JobManager(data_dir, source_root, output_root, max_jobs=max_jobs,
                         max_queue=max_queue, watchdog=watchdog, max_pixels=max_pixels,
                         max_duration_s=max_duration_s)
    web = None
    try:
        if http_port is not None:
            # First: a taken HTTP port then fails before any gRPC port is bound.
            web = WebServer(manager, _host(address), http_port, hls_js)
        executor = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc")
        server = grpc.server(executor)
        transcoder_pb2_grpc.add_TranscoderServicer_to_server(
            TranscoderService(manager, max_watchers=max(1, workers - RESERVED_FOR_UNARY)),
            server)
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        for service in ("", SERVICE_NAME):  # "": the server as a whole
            health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        port = _bind(server, address)
    except BaseException:
        if web is not None:
            web.stop()
        manager.close()
        raise
    return RungsServer(server, manager, health_servicer, executor, web), port


def _host(address: str) -> str:
    """The host part of ``HOST:PORT`` (``[::1]:PORT`` too), for the HTTP server to listen on."""
    host = address.rpartition(":")[0]
    return host.strip("[]") or "127.0.0.1"


def _bind(server: grpc.Server, address: str) -> int:
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpcio raises here for an address in use
        raise OSError(f"cannot listen on {address}: {exc}") from exc
    if port == 0:  # older grpcio reports failure this way
        raise OSError(f"cannot listen on {address}")
    return port


# -- rungs serve ------------------------------------------------------------------------------


def add_serve_command(commands: argparse._SubParsersAction[Parser]) -> None:
    """Register ``rungs serve`` on the CLI's subcommands."""
    serve = commands.add_parser(
        "serve", help="run the gRPC transcoding service (rungs.v1.Transcoder)",
        description="Serve rungs.v1.Transcoder, grpc.health.v1 and reflection until SIGTERM.")
    serve.add_argument("--listen", type=host_port, default=DEFAULT_LISTEN,
                       metavar="HOST:PORT",
                       help="address to listen on; port 0 picks a free one (default %(default)s)")
    serve.add_argument("--data-dir", type=Path, default=Path("rungs-data"),
                       help="job store and scratch space (default ./%(default)s)")
    serve.add_argument("--source-root", type=Path, default=Path("."),
                       help="sources are read only from inside this directory (default: cwd)")
    serve.add_argument("--output-root", type=Path, default=Path("."),
                       help="outputs are written only inside this directory (default: cwd)")
    serve.add_argument("--max-jobs", type=_positive, default=1,
                       help="jobs transcoding at once (default %(default)s)")
    serve.add_argument("--max-queue", type=_not_negative, default=16,
                       help="jobs waiting beyond those; more are refused (default %(default)s)")
    serve.add_argument("--workers", type=_positive, default=DEFAULT_WORKERS,
                       help="RPC threads; each open Watch holds one (default %(default)s)")
    defaults = Watchdog()
    serve.add_argument("--job-timeout", type=_positive_float, default=None, metavar="SECONDS",
                       help="stop a job that runs longer (default: "
                            f"{defaults.base_s:.0f} s plus {defaults.per_source_second:.0f} s "
                            "per second of its source)")
    serve.add_argument("--max-pixels", type=_positive, default=DEFAULT_MAX_PIXELS,
                       help="refuse sources with larger frames (default %(default)s)")
    serve.add_argument("--max-source-seconds", type=_positive_float,
                       default=DEFAULT_MAX_DURATION_S,
                       help="refuse longer sources (default %(default)s)")
    serve.add_argument("--http-port", type=port_number, default=None, metavar="PORT",
                       help="also serve the outputs, a player page per job (/jobs/ID) and "
                            "progress over HTTP on this port, on the --listen host")
    serve.add_argument("--hls-js", type=Path, default=DEFAULT_HLS_JS, help=argparse.SUPPRESS)
    serve.set_defaults(run=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM or Ctrl-C; 0 after a clean stop, 2 if it cannot start."""
    if not logging.getLogger().handlers:  # a server logs, with or without -v
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server, port = create_server(
            args.listen, data_dir=args.data_dir, source_root=args.source_root,
            output_root=args.output_root, max_jobs=args.max_jobs, max_queue=args.max_queue,
            workers=args.workers, watchdog=Watchdog(fixed_s=args.job_timeout),
            max_pixels=args.max_pixels, max_duration_s=args.max_source_seconds,
            http_port=args.http_port, hls_js=args.hls_js)
    except (RungsError, StoreError, OSError) as exc:
        print(f"rungs: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in STOP_SIGNALS:
        signal.signal(sig, request_stop)
    server.start()
    host = args.listen.rpartition(":")[0]
    # Printed once listening: scripts (and tests) read the port from this line.
    print(f"rungs: listening on {host}:{port}", file=sys.stderr, flush=True)
    if server.http_port is not None:
        print(f"rungs: player and outputs on http://{host}:{server.http_port}/", file=sys.stderr,
              flush=True)
    # The kernel hands a process signal to any of its threads; Python runs the handler on the
    # main thread only when that thread wakes. Waking often bounds the delay: with one long
    # wait a SIGTERM that landed on another thread was handled up to a minute late.
    while not stop.wait(SIGNAL_POLL_S):
        pass
    log.info("stopping: cancelling jobs")
    server.stop()
    log.info("stopped")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    # Finite too: a timer of inf seconds raises OverflowError on its own thread.
    if not 0 < value < math.inf:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number above 0, not {text}")
    return value


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value
