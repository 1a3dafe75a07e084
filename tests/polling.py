"""A thread that polls while a ``with`` block runs: the tests' playlist readers, pipe watch and
memory sampler are each one."""

from __future__ import annotations

import threading
from typing import Self


class Poller:
    """Calls ``poll()`` every ``interval_s`` seconds on a thread of its own, from entering the
    ``with`` block until leaving it; the thread is joined on the way out.

    An exception from ``poll()`` ends the polling and is raised when the block ends: pytest
    only warns about one left on a thread of its own, and the test would pass on what was
    polled before it."""

    interval_s = 0.02

    def __enter__(self) -> Self:
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._error is not None and exc[0] is None:
            raise self._error

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval_s):
                self.poll()
        except BaseException as error:  # raised in the test's thread at the end of the block
            self._error = error

    def poll(self) -> None:
        raise NotImplementedError
