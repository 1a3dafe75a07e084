"""Stop waiting for a decoder that never returns.

FFmpeg's decoders can deadlock on damaged data: the fuzzer found an HEVC file on which the
frame-threaded decoder waits for ever inside ``avcodec_send_packet`` (the ffmpeg CLI 9.0.2 hangs
on it too). A thread stuck in C cannot be interrupted or joined, and while the stuck one is the
main thread no signal handler runs: ``rungs transcode`` ignored Ctrl-C and SIGTERM, and the
server's Transcode call, which probes the source, never answered. So the work that decodes runs
on a thread of its own while the caller's thread watches its decoder calls: one that has not
returned after :data:`STALL_S` ends the work with a clear error, and the stuck thread is left
behind, holding the source open (closing it would wait for the decoder as well) until the
process ends.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from engine.errors import InvalidSourceError

#: How long one decoder call may take. Decoding one frame takes milliseconds (an 8K one well
#: under a second on two cores), and a frame-threaded decoder's call waits for one frame at most.
STALL_S = 10.0
_POLL_S = 0.1

T = TypeVar("T")


class DecoderWatch:
    """Marks the decoder calls of one thread, so that another can see one that never returns."""

    def __init__(self) -> None:
        self._calls = 0
        self._busy = False

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Around one call into a decoder."""
        self._calls += 1
        self._busy = True
        try:
            yield
        finally:
            self._busy = False

    def current(self) -> int | None:
        """The number of the call in progress; None between calls."""
        return self._calls if self._busy else None


def run_watched(work: Callable[[], T], watch: DecoderWatch, name: str) -> T:
    """``work()`` on a thread of its own: its result, or its exception raised here.

    Raises :class:`InvalidSourceError` naming the source ``name`` if one decoder call that
    ``watch`` marks goes on for :data:`STALL_S`, and leaves the thread. The time is counted in
    this thread's polls, so a process that was stopped (Ctrl-Z) and resumed is not taken for a
    stuck one.
    """
    results: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(work())
        except BaseException as exc:  # handed to the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"{threading.current_thread().name}-work",
                              daemon=True)
    thread.start()
    polls, seen = 0, None
    while thread.is_alive():
        thread.join(_POLL_S)
        call = watch.current()
        polls = polls + 1 if call is not None and call == seen else 0
        seen = call
        if polls * _POLL_S >= STALL_S and thread.is_alive():
            raise InvalidSourceError(
                f"source {name!r} stopped decoding: FFmpeg's decoder has not returned in "
                f"{STALL_S:.0f} s (damaged data it cannot get past)")
    if errors:
        raise errors[0]
    return results[0]
