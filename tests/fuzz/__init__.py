"""A bounded mutation fuzzer for the probe and the first seconds of decode.

``python -m tests.fuzz [--seconds 120] [--seed 1] [--workers 2] [--out DIR]`` mutates small
valid media files (:mod:`tests.fuzz.mutate`: bit flips, interesting integers in MP4 box headers
and fields, inserted, deleted, duplicated and overwritten chunks, truncation) and feeds each to
:mod:`tests.fuzz.worker`, which runs the probe, the decode stage and the audio encoder on it in a
separate process. A file must be decoded or refused with a :class:`~engine.errors.RungsError`;
anything else is a finding:

- ``bug``: another exception (a traceback a user would see as an internal error);
- ``crash``: the worker died (a signal: FFmpeg or PyAV crashed);
- ``hang``: no answer within ``--timeout`` seconds.

Every input is rebuilt from (seed file, iteration): iteration ``i`` uses
``random.Random(f"{seed}:{i}")``, so a run is reproducible and a finding can be added to the
hostile corpus (``tests/hostile.py``) as a recipe. Findings are written to ``DIR/findings``
(the input file and a JSON line with its recipe). Not part of the default test run; a short
smoke run of it is (``tests/test_hostile.py``).
"""

from __future__ import annotations

import json
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.fuzz import mutate

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Finding:
    kind: str
    iteration: int
    seed_file: str
    ops: list[mutate.Op]
    detail: str
    saved: Path | None = None


@dataclass
class Report:
    executions: int = 0
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)

    def summary(self) -> str:
        rate = self.executions / self.seconds if self.seconds else 0.0
        lines = [f"{self.executions} inputs in {self.seconds:.0f} s ({rate:.1f}/s): "
                 + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))]
        signatures = Counter(f"{f.kind}: {f.detail.splitlines()[0][:160]}"
                             for f in self.findings)
        lines += [f"  {count} x {signature}" for signature, count in signatures.most_common()]
        return "\n".join(lines)


class _Worker:
    """One worker process, restarted after it crashes or hangs."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None
        self._answers: queue.Queue[str | None] = queue.Queue()

    def _start(self) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz.worker"], cwd=ROOT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._answers = queue.Queue()
        assert process.stdout is not None
        threading.Thread(target=self._read, args=(process.stdout, self._answers),
                         daemon=True).start()
        return process

    @staticmethod
    def _read(stream: IO[str], answers: queue.Queue[str | None]) -> None:
        for line in stream:
            answers.put(line)
        answers.put(None)  # end of file: the worker died

    def ask(self, path: Path, timeout: float) -> dict[str, Any]:
        if self.process is None or self.process.poll() is not None:
            self.process = self._start()
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps({"path": str(path)}) + "\n")
            self.process.stdin.flush()
            line = self._answers.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            return {"outcome": "hang", "error": f"no answer in {timeout:.0f} s"}
        except BrokenPipeError:
            line = None
        if line is None:
            code = self.process.wait()
            self.process = None
            name = signal.Signals(-code).name if code < 0 else f"exit {code}"
            return {"outcome": "crash", "error": f"worker died: {name}"}
        answer: dict[str, Any] = json.loads(line)
        return answer

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def run(seconds: float, seed: int = 1, workers: int = 2, out: Path | None = None,
        timeout: float = 20.0, iterations: int | None = None,
        only: Collection[str] = ()) -> Report:
    """Fuzz for ``seconds`` (or ``iterations`` inputs, whichever ends first), on the seed files
    named in ``only`` (all of them when empty)."""
    report = Report()
    lock = threading.Lock()
    counter = iter(range(iterations if iterations is not None else sys.maxsize))
    with tempfile.TemporaryDirectory(prefix="rungs-fuzz-") as temporary:
        work = Path(temporary)
        seeds = [(path.name, path.read_bytes()) for path in mutate.make_seeds(work / "seeds", only)]
        findings_dir = (out or work) / "findings"
        started = time.monotonic()
        deadline = started + seconds

        def next_iteration() -> int | None:
            with lock:
                if time.monotonic() >= deadline:
                    return None
                return next(counter, None)

        def loop(number: int) -> None:
            worker = _Worker()
            try:
                while (iteration := next_iteration()) is not None:
                    rng = random.Random(f"{seed}:{iteration}")
                    name, data = rng.choice(seeds)
                    ops = mutate.mutations(rng, data)
                    path = work / f"input-{number}{Path(name).suffix}"
                    path.write_bytes(mutate.apply(data, ops))
                    answer = worker.ask(path, timeout)
                    outcome = answer["outcome"]
                    with lock:
                        report.executions += 1
                        report.outcomes[outcome] += 1
                        if outcome in ("bug", "crash", "hang"):
                            finding = Finding(outcome, iteration, name, ops,
                                              str(answer.get("traceback") or answer["error"]))
                            report.findings.append(finding)
                            if out is not None:
                                _save(findings_dir, finding, path)
            finally:
                worker.stop()

        threads = [threading.Thread(target=loop, args=(n,), name=f"fuzz-{n}")
                   for n in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        report.seconds = time.monotonic() - started
    return report


def _save(folder: Path, finding: Finding, path: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{finding.kind}-{finding.iteration}{path.suffix}"
    target.write_bytes(path.read_bytes())
    finding.saved = target
    with (folder / "findings.jsonl").open("a") as log:
        log.write(json.dumps({"kind": finding.kind, "iteration": finding.iteration,
                              "seed_file": finding.seed_file, "ops": finding.ops,
                              "detail": finding.detail, "file": target.name}) + "\n")


__all__ = ["Finding", "Report", "run"]
