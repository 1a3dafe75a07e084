"""``rungs serve`` as a process of its own, for the tests that kill, restart or signal it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from engine.rpc import transcoder_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]


class ServerProcess:
    """``python -m engine.cli serve`` on a free port, its log in a file."""

    def __init__(self, source: Path, output: Path, data: Path, log: Path,
                 *extra: str) -> None:
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "engine.cli", "serve", "--listen", "127.0.0.1:0",
                 "--data-dir", str(data), "--source-root", str(source), "--output-root",
                 str(output), *extra], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=out)
        self.port = self._wait_for_port()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub: Any = transcoder_pb2_grpc.TranscoderStub(self.channel)

    def _wait_for_port(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if "rungs: listening on" in line:
                    return int(line.rsplit(":", 1)[1])
            assert self.process.poll() is None, self.log.read_text()
            time.sleep(0.02)
        raise AssertionError(f"server did not start:\n{self.log.read_text()}")

    def stop(self, sig: int) -> int:
        self.channel.close()
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)
