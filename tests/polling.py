"""A thread that polls while a ``with`` block runs: the tests' playlist readers, pipe watch and
memory sampler are each one."""

from __future__ import annotations

import threading
from typing import Self


class Poller:
    """Calls ``poll()`` every ``interval_s`` seconds on a thread of its own, from entering the
    ``with`` block until leaving it; the thread is joined on the way out."""

    interval_s = 0.02

    def __enter__(self) -> Self:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        raise NotImplementedError
