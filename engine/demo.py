"""``make demo``: transcode a generated 4K sample progressively, print the timeline, and serve a
player page where the video plays while it upgrades.

The job runs in the gRPC service's engine (in this process) with its HTTP server on
``--http-port`` (another free port if that one is taken); the page loops the video, so each rung
can be seen arriving while it plays.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from engine.cli import STOP_SIGNALS, Parser, port_number
from engine.client import EventLines
from engine.errors import RungsError
from engine.rpc import transcoder_pb2 as pb
from engine.sample import make_sample
from engine.server import RungsServer, create_server
from engine.store import StoreError


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m engine.demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--seconds", type=_seconds, default=10.0)
    parser.add_argument("--size", type=_size, default="3840x2160", metavar="WxH")
    parser.add_argument("--http-port", type=port_number, default=8080)
    parser.add_argument("--linger", type=float, default=0.0, metavar="SECONDS",
                        help="keep serving the player this long after the job ends")
    args = parser.parse_args(argv)
    width, height = args.size
    sample = args.out / f"sample-{width}x{height}-{args.seconds:g}s.mp4"
    if not sample.exists():
        print(f"generating {sample} ({width}x{height}, {args.seconds:g} s, with audio) ...")
        started = time.monotonic()
        make_sample(sample, width=width, height=height, seconds=args.seconds)
        print(f"generated in {time.monotonic() - started:.1f} s")
    try:
        server = _server(args.out, args.http_port)
    except (RungsError, StoreError, OSError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    for sig in STOP_SIGNALS:  # SIGTERM and SIGHUP too: their defaults skipped server.stop()
        signal.signal(sig, signal.default_int_handler)
    server.start()
    try:
        return _run(server, sample.name, args.linger)
    except KeyboardInterrupt:
        return 130
    finally:
        server.stop()


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 3600, not {text}")
    return value


def _size(text: str) -> tuple[int, int]:
    width, x, height = text.partition("x")
    if not (x and width.isdigit() and height.isdigit() and 16 <= int(width) <= 7680
            and 16 <= int(height) <= 4320 and int(width) % 2 == int(height) % 2 == 0):
        raise argparse.ArgumentTypeError(
            f"must be an even WIDTHxHEIGHT up to 7680x4320, not {text!r}")
    return int(width), int(height)


def _server(out: Path, http_port: int) -> RungsServer:
    def server(port: int) -> RungsServer:
        return create_server("127.0.0.1:0", data_dir=out / "data", source_root=out,
                             output_root=out, http_port=port)[0]

    try:
        return server(http_port)
    except OSError:  # the port is taken: any free one will do
        return server(0)


def _run(server: RungsServer, sample: str, linger: float) -> int:
    manager = server.manager
    job = manager.submit(pb.TranscodeRequest(source=sample, output="hls",
                                             options=pb.TranscodeOptions(overwrite=True)))
    print(f"watch it play and upgrade: http://127.0.0.1:{server.http_port}/jobs/{job.id}?loop=1",
          flush=True)
    lines = EventLines(sys.stdout)
    last: pb.JobEvent | None = None
    for event in manager.watch(job.id):
        lines(event)
        last = event
    lines.close()
    if last is None or not last.HasField("complete"):
        return 130 if last is not None and last.state == pb.CANCELLED else 1
    print(f"master playlist: {manager.roots.output / 'hls' / 'master.m3u8'}")
    if linger > 0:
        print(f"serving the player for {linger:g} s more (Ctrl-C stops)", flush=True)
        time.sleep(linger)
    return 0


if __name__ == "__main__":
    sys.exit(main())
