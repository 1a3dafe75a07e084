"""Run one process and measure it: wall time, CPU seconds and peak RSS of its process tree.

The same measurement for every system: the process is reaped with ``os.wait4`` (its user + system
CPU seconds, its children's included, and the kernel's peak RSS), while a sampler thread sums the
RSS of the whole process tree every ``RSS_INTERVAL_S`` with psutil and watches HLS playlists for
``#EXT-X-ENDLIST``. Stdout lines (Rungs' JSON events) are timestamped as they arrive.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

#: How often watched playlists are read.
FILE_POLL_S = 0.025
#: How often the process tree's RSS is summed.
RSS_INTERVAL_S = 0.05
ENDLIST = "#EXT-X-ENDLIST"


@dataclass
class ProcessRun:
    """What one measured process did. Times are seconds since it was started."""

    argv: list[str]
    returncode: int
    wall_s: float
    cpu_s: float
    #: The larger of the sampled tree sum and the kernel's own peak for the process.
    peak_rss_bytes: int
    sampled_peak_rss_bytes: int
    kernel_peak_rss_bytes: int
    #: Stdout lines with the time each was read (only when asked for).
    lines: list[tuple[float, str]] = field(default_factory=list)
    #: Watched name -> when its playlist first held ``#EXT-X-ENDLIST``.
    endlist_s: dict[str, float] = field(default_factory=dict)
    #: Watched name -> when its file first existed.
    appeared_s: dict[str, float] = field(default_factory=dict)
    #: When the process started, on the ``time.monotonic`` clock.
    started_at: float = 0.0
    stderr_path: Path | None = None

    def stderr_tail(self, lines: int = 20) -> str:
        if self.stderr_path is None or not self.stderr_path.is_file():
            return ""
        return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])


def run_measured(argv: Sequence[str], *, stderr_path: Path, read_stdout: bool = False,
                 watch: Mapping[str, Path] | None = None,
                 appear: Mapping[str, Path] | None = None, cwd: Path | None = None,
                 start_after: str | None = None) -> ProcessRun:
    """Run ``argv`` to the end and measure it (never raises for a non-zero exit).

    ``watch`` names playlists to time ``#EXT-X-ENDLIST`` in; ``appear`` names files to time the
    appearance of (segments are renamed into place when complete). With ``start_after`` (and
    ``read_stdout``), the clock starts once the process has printed that line, and a line is
    written to its stdin to tell it so: times and CPU seconds are counted from then.
    """
    watch = dict(watch or {})
    stderr_path.parent.mkdir(parents=True, exist_ok=True)
    lines: list[tuple[float, str]] = []
    with stderr_path.open("wb") as stderr:
        started = time.monotonic()
        proc = subprocess.Popen(list(argv),
                                stdin=subprocess.PIPE if start_after else subprocess.DEVNULL,
                                stdout=subprocess.PIPE if read_stdout else subprocess.DEVNULL,
                                stderr=stderr, cwd=cwd, text=True, bufsize=1)
        cpu_before = 0.0
        if start_after is not None:
            cpu_before = _wait_for_line(proc, start_after)
            started = time.monotonic()
            _tell_start(proc)
        sampler = _Sampler(proc.pid, started, watch, dict(appear or {}))
        sampler.start()
        reader = None
        if read_stdout:
            assert proc.stdout is not None
            reader = threading.Thread(target=_read_lines, args=(proc.stdout, started, lines),
                                      name="stdout-reader", daemon=True)
            reader.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # interrupted: leave no encoder running behind us
            proc.kill()
            os.wait4(proc.pid, 0)
            proc.returncode = -9
            sampler.stop()
            raise
        ended = time.monotonic()
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop()
        if reader is not None:
            reader.join()
    # A file finished between the last poll and the exit counts as finished at the exit.
    for name, path in watch.items():
        if name not in sampler.endlist_s and _has_endlist(path):
            sampler.endlist_s[name] = ended - started
    for name, path in (appear or {}).items():
        if name not in sampler.appeared_s and path.exists():
            sampler.appeared_s[name] = ended - started
    kernel_peak = usage.ru_maxrss * 1024  # kilobytes on Linux
    return ProcessRun(
        argv=list(argv), returncode=proc.returncode, wall_s=ended - started,
        cpu_s=usage.ru_utime + usage.ru_stime - cpu_before,
        peak_rss_bytes=max(kernel_peak, sampler.peak_rss), sampled_peak_rss_bytes=sampler.peak_rss,
        kernel_peak_rss_bytes=kernel_peak, lines=lines, endlist_s=dict(sampler.endlist_s),
        appeared_s=dict(sampler.appeared_s), started_at=started, stderr_path=stderr_path,
    )


def _wait_for_line(proc: subprocess.Popen[str], expected: str) -> float:
    """Read stdout up to the line ``expected`` (or its end); the process's CPU seconds then."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.rstrip("\n") == expected:
            break
    try:
        times = psutil.Process(proc.pid).cpu_times()
    except psutil.Error:  # it ended before saying it: its exit status tells why
        return 0.0
    return float(times.user + times.system)


def _tell_start(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):  # it ended already: its exit status tells why
        try:
            proc.stdin.write("start\n")
        finally:
            proc.stdin.close()


def _read_lines(stream: IO[str], started: float, lines: list[tuple[float, str]]) -> None:
    for line in stream:
        lines.append((time.monotonic() - started, line.rstrip("\n")))


class _Sampler(threading.Thread):
    """Polls the process tree's RSS and the watched files until stopped."""

    def __init__(self, pid: int, started: float, watch: dict[str, Path],
                 appear: dict[str, Path]) -> None:
        super().__init__(name="sampler", daemon=True)
        self.started = started
        self.watch = watch
        self.appear = appear
        self.peak_rss = 0
        self.endlist_s: dict[str, float] = {}
        self.appeared_s: dict[str, float] = {}
        self._stop_event = threading.Event()
        try:
            self._process: psutil.Process | None = psutil.Process(pid)
        except psutil.NoSuchProcess:
            self._process = None

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def run(self) -> None:
        next_rss = 0.0
        while not self._stop_event.is_set():
            now = time.monotonic()
            if now >= next_rss:
                self.peak_rss = max(self.peak_rss, self._tree_rss())
                next_rss = now + RSS_INTERVAL_S
            for name, path in self.watch.items():
                if name not in self.endlist_s and _has_endlist(path):
                    self.endlist_s[name] = time.monotonic() - self.started
            for name, path in self.appear.items():
                if name not in self.appeared_s and path.exists():
                    self.appeared_s[name] = time.monotonic() - self.started
            self._stop_event.wait(FILE_POLL_S)

    def _tree_rss(self) -> int:
        if self._process is None:
            return 0
        total = 0
        try:
            processes = [self._process, *self._process.children(recursive=True)]
        except psutil.Error:
            return 0
        for process in processes:
            # A process may be gone (or a zombie) between listing and reading.
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        return total


def _has_endlist(path: Path) -> bool:
    try:
        return ENDLIST in path.read_text(errors="replace")
    except OSError:
        return False
