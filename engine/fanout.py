"""Hand every decoded frame to every rung: the first rung directly, the others through a cache.

The first (lowest) rung takes decoded frames straight from the decoder through a short bounded
queue, so it runs at decode speed and never waits for slower rungs; its back-pressure paces the
decoder. Slower rungs read the same frames later from a :class:`FrameCache`.

Measured on this project's 2-core machine: keeping every decoded 4K frame alive cut decode from
about 100 to 27 fps (a fresh 12 MB buffer per frame), while copying planes into a pool of reused
buffers kept 76 fps. So the cache copies each frame into a pooled slot when the whole source
fits in a memory budget, and otherwise writes it to reused slots of a scratch file on disk, up
to a disk budget, straight from the decoder's memory (a small frame through a copy). The scratch
file is written and read with direct I/O (``O_DIRECT``) where the file system allows it: 120 4K
frames through the page cache cost 1.3 to 4 s of kernel CPU here, directly 0.1 s (and 0.8 s of
waiting), which is what kept the first rung of a 4K job at a third of its speed.

The slower rungs take their turns: the first starts once the decoder is done and every spilled
frame is written (the first rung does not wait for the disk), each next one once the one before
it has closed its encoder, so the first rung has the machine to itself and only one large
encoder is in memory at a time. Measured on 10 s of 4K on two cores: 1080p and 2160p
encoding at once finished 1-7% sooner (each x264 alone leaves about a twentieth of the cores
idle, which the other fills), but peaked at 1.77 GB instead of 1.40 GB. So taking
turns is the default and going at once an option (``take_turns=False``). Taking turns needs the
whole source in the cache; when the disk budget runs out first, the decoder waits for room and
every rung goes at once instead, so a long source never fills the disk.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import queue
import secrets
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import av.video.frame
import numpy as np

from engine.decode import PIXEL_FORMAT, plane_array, sample_type
from engine.errors import JobCancelledError, OutputWriteError
from engine.gop import FrameTime

Item = tuple[av.video.frame.VideoFrame, FrameTime]

#: Frames queued between the decoder and the first rung.
LEAD_QUEUE_FRAMES = 8
_POLL_S = 0.1


@dataclass
class CacheStats:
    """How the cache was used, for reports and benchmarks."""

    frames_in_memory: int = 0
    frames_spilled: int = 0
    peak_memory_bytes: int = 0
    peak_spill_bytes: int = 0
    #: The disk budget ran out, so the readers stopped taking turns.
    readers_at_once: bool = False


class _End:
    """Marks the end of the frames (or, with ``error`` set, that decoding failed)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class FanOut:
    """Distributes frames from the decode thread to ``rungs`` reader threads."""

    def __init__(self, rungs: int, width: int, height: int, budget_bytes: int,
                 scratch_dir: Path, cancel: threading.Event, spill_budget_bytes: int,
                 take_turns: bool = True, expected_frames: int = 0,
                 pixel_format: str = PIXEL_FORMAT) -> None:
        self.cancel = cancel
        self._lead: queue.Queue[Item | _End] = queue.Queue(LEAD_QUEUE_FRAMES)
        self.cache = (FrameCache(rungs - 1, width, height, budget_bytes, scratch_dir, cancel,
                                 spill_budget_bytes, take_turns, expected_frames, pixel_format)
                      if rungs > 1 else None)

    def put(self, frame: av.video.frame.VideoFrame, time: FrameTime) -> None:
        """Called by the decoder for each frame, in order."""
        if self.cache is not None:
            self.cache.put(frame, time)
        self._put_lead((frame, time))

    def finish(self, error: BaseException | None = None) -> None:
        """No more frames; readers end (raising ``error`` if given) after the last one. The
        first rung's end does not wait for the spilled frames to be written: its time to
        playable is not the disk's; a failed write ends the slower rungs' readers."""
        if self.cache is not None:
            self.cache.finish(error, wait=False)
        self._put_lead(_End(error), force=error is not None)

    def reader(self, rung_index: int) -> Iterator[Item]:
        """The frames for rung ``rung_index`` (0 is the first rung)."""
        if rung_index == 0:
            return self._lead_frames()
        assert self.cache is not None
        return self.cache.frames(rung_index - 1)

    def done(self, rung_index: int) -> None:
        """Rung ``rung_index`` has closed its encoder (or failed): the next rung's turn."""
        if rung_index and self.cache is not None:
            self.cache.done(rung_index - 1)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    def _put_lead(self, item: Item | _End, force: bool = False) -> None:
        while True:
            if self.cancel.is_set() and not force:
                raise JobCancelledError("cancelled")
            try:
                self._lead.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                if force:
                    # The reader has gone; make room for the end marker.
                    self._drain_one()

    def _drain_one(self) -> None:
        with contextlib.suppress(queue.Empty):
            self._lead.get_nowait()

    def _lead_frames(self) -> Iterator[Item]:
        while True:
            try:
                item = self._lead.get(timeout=_POLL_S)
            except queue.Empty:
                if self.cancel.is_set():
                    raise JobCancelledError("cancelled") from None
                continue
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item


class FrameCache:
    """Decoded frames kept until every one of ``readers`` has taken them.

    Frames live in pooled memory slots up to ``budget_bytes``, then in reused slots of one scratch
    file (which has no name: see :func:`_open_scratch`) up to ``spill_budget_bytes``; with both
    full, :meth:`put` waits for a slot to be freed. When the ``expected_frames`` of the source
    (0: not known) do not all fit in ``budget_bytes``, every frame goes to the scratch file: a
    pool that holds only the first few frames saves nothing worth its fresh memory (see
    :meth:`__init__`). Readers each take every frame in order; a slot is reused once all have
    taken it. Reader 0 starts once every frame is in, reader ``n`` once reader ``n - 1`` is
    :meth:`done` (without ``take_turns``, all of them once every frame is in); all of them start
    as soon as the cache is full. Frames are 4:2:0 in ``pixel_format``, 8 or 16 bits a sample.
    """

    def __init__(self, readers: int, width: int, height: int, budget_bytes: int,
                 scratch_dir: Path, cancel: threading.Event, spill_budget_bytes: int,
                 take_turns: bool = True, expected_frames: int = 0,
                 pixel_format: str = PIXEL_FORMAT) -> None:
        self.readers = readers
        self.take_turns = take_turns
        self.width, self.height = width, height
        self.pixel_format = pixel_format
        self._sample = sample_type(pixel_format)
        planes = _plane_sizes(width, height, pixel_format)
        self._packed = _packed(planes)
        self.frame_bytes = _frame_bytes(planes)
        self._slot_bytes = _spill_slot_size(planes)
        self._max_slots = max(0, budget_bytes // self.frame_bytes)
        if expected_frames > self._max_slots:
            # The pool would hold only the first frames (5 of 10 s of 4K), and the decoder
            # would fault their fresh memory in while the first rung waits for it: on this
            # project's virtual machines the first touch of NumPy's huge pages costs 2.6 to
            # 3.0 ms per MB. Without it, on 10 s of 4K on two cores, the 30th frame reached
            # the first rung at 0.41 instead of 0.52 s and the first rung was complete at
            # 4.05 instead of 4.29 s (7.45 vs 7.87 CPU-s; medians of two sets of 8
            # interleaved runs). Spilling those 60 MB too is about 20 ms of the disk's time
            # (2.8 GB/s of direct writes, measured the same day).
            self._max_slots = 0
        # Room for one frame at least, or the decoder would wait for ever.
        self._max_spill_slots = max(0 if self._max_slots else 1,
                                    spill_budget_bytes // self._slot_bytes)
        self._slots: list[np.ndarray] = []
        self._free_slots: list[int] = []
        self._free_spill: list[int] = []
        self._spill_slots = 0
        # A name of its own: jobs of several processes may share the directory.
        self._spill_path = scratch_dir / f"rungs-{secrets.token_hex(8)}.spill"
        self._spill_fd: int | None = None
        self._punch_holes = True
        self._writer: _SpillWriter | None = None
        self._entries: dict[int, _Entry] = {}
        self._next_index = 0
        self._readers_done = 0
        self._end: _End | None = None
        self._cond = threading.Condition()
        self.cancel = cancel
        self.stats = CacheStats()

    @staticmethod
    def holds(frames: int, width: int, height: int, pixel_format: str, budget_bytes: int,
              spill_budget_bytes: int) -> bool:
        """Whether a cache with these budgets has room for all ``frames``, so that its
        readers take turns."""
        planes = _plane_sizes(width, height, pixel_format)
        return (frames * _frame_bytes(planes) <= budget_bytes
                or frames * _spill_slot_size(planes) <= spill_budget_bytes)

    def put(self, frame: av.video.frame.VideoFrame, time: FrameTime) -> None:
        with self._cond:
            slot, spill = self._take_slot()
            index = self._next_index
            self._next_index += 1
        if slot is not None:
            self._copy_in(frame, self._slots[slot])
            self._add(index, _Entry(time, self.readers, slot, spill, self._packed))
            return
        assert spill is not None
        writer = self._spill_writer()
        writer.wait_for_room()
        blocks = _blocks_of(frame, self._slot_bytes)
        if blocks is not None:
            views, planes = blocks
            holding: np.ndarray | av.video.frame.VideoFrame = frame
        else:
            holding = writer.buffer()
            self._copy_in(frame, holding)
            views, planes = [holding], self._packed
        entry = _Entry(time, self.readers, slot, spill, planes)
        writer.write(views, spill * self._slot_bytes, lambda: self._add(index, entry), holding)

    def finish(self, error: BaseException | None = None, wait: bool = True) -> None:
        """No more frames. The readers have them all once every spilled one is written: with
        ``wait``, this waits for that and raises a failed write (which the readers then raise
        too) unless ``error`` already ends them; without, the writes go on behind and a failed
        one ends the readers with it."""
        if self._writer is not None and error is None and not wait:
            self._writer.finish(self._end_frames)
            return
        failed = None
        if self._writer is not None:
            failed = self._writer.close()
            self._writer = None  # and its buffers
        self._end_frames(error or failed)
        if failed is not None and error is None:
            raise failed

    def _end_frames(self, error: BaseException | None) -> None:
        with self._cond:
            if self._end is None:
                self._end = _End(error)
            self._cond.notify_all()

    def frames(self, reader: int) -> Iterator[Item]:
        """Every frame, in order, for one reader; each reader has its own read buffer."""
        self._wait_turn(reader)
        buffer = _aligned(self._slot_bytes)
        frames = _FrameRing(self.width, self.height, self.pixel_format)
        index = 0
        while True:
            entry = self._wait_for(index)
            if entry is None:
                return
            frame = frames.take()
            if entry.slot is not None:
                self._copy_out(self._slots[entry.slot], entry.planes, frame, self._sample)
            else:
                assert entry.spill is not None
                end = max(offset + line * plane.height
                          for (offset, line), plane in zip(entry.planes, frame.planes, strict=True))
                _transfer(_read_at, self._spill_file(), [buffer[:_round_up(end, _BLOCK)]],
                          entry.spill * self._slot_bytes, self._spill_path)
                self._copy_out(buffer, entry.planes, frame, self._sample)
            self._release(index)
            yield frame, entry.time
            index += 1

    def done(self, reader: int) -> None:
        """``reader`` is finished with its frames (its encoder closed): the next one's turn.
        Passing the turn only then keeps two large encoders out of memory at once."""
        with self._cond:
            self._readers_done = max(self._readers_done, reader + 1)
            self._cond.notify_all()

    def close(self) -> None:
        """Free the memory and the scratch file."""
        if self._writer is not None:
            self._writer.close()
        with self._cond:
            self._slots.clear()
            self._entries.clear()
            if self._spill_fd is not None:
                os.close(self._spill_fd)
                self._spill_fd = None
            self._spill_path.unlink(missing_ok=True)

    def _wait_turn(self, reader: int) -> None:
        with self._cond:
            while ((self._end is None or (self.take_turns and reader > self._readers_done))
                   and not self.stats.readers_at_once):
                self._check_cancel()
                self._cond.wait(_POLL_S)

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise JobCancelledError("cancelled")

    def _wait_for(self, index: int) -> _Entry | None:
        with self._cond:
            while index not in self._entries:
                if self._end is not None and self._end.error is not None:
                    raise self._end.error  # a failed write never adds its frame
                if self._end is not None and index >= self._next_index:
                    return None
                self._check_cancel()
                self._cond.wait(_POLL_S)
            return self._entries[index]

    def _release(self, index: int) -> None:
        with self._cond:
            entry = self._entries[index]
            entry.readers_left -= 1
            if entry.readers_left:
                return
            del self._entries[index]
            last = self._end is not None
            if entry.slot is not None and last:
                # No frame will come for this slot again: free its memory for the encoders.
                self._slots[entry.slot] = _NO_SLOT
            elif entry.slot is not None:
                self._free_slots.append(entry.slot)
            elif entry.spill is not None and not last:
                self._free_spill.append(entry.spill)
            self._cond.notify_all()  # the decoder may be waiting for a slot
        if entry.spill is not None and last and self._punch_holes:
            # Nor for this block of the scratch file: give it back to the file system now.
            # On a disk mounted with online discard (this project's machines), deleting the
            # whole file at the end took 0.33 s per GB (1.2 s for 10 s of 4K) with nothing
            # else to do; a block at a time, it hides behind the last rung's encoder.
            self._punch_holes = _punch_hole(self._spill_file(), entry.spill * self._slot_bytes,
                                            self._slot_bytes)

    def _take_slot(self) -> tuple[int | None, int | None]:
        """A free memory slot, else a spill slot; waits while there is neither."""
        while True:
            slot = self._take_memory_slot()
            if slot is not None:
                return slot, None
            spill = self._take_spill_slot()
            if spill is not None:
                return None, spill
            if not self.stats.readers_at_once:
                self.stats.readers_at_once = True
                self._cond.notify_all()
            self._check_cancel()
            self._cond.wait(_POLL_S)

    def _take_memory_slot(self) -> int | None:
        if self._free_slots:
            return self._free_slots.pop()
        if len(self._slots) < self._max_slots:
            self._slots.append(np.empty(self.frame_bytes, np.uint8))
            self.stats.peak_memory_bytes = len(self._slots) * self.frame_bytes
            return len(self._slots) - 1
        return None

    def _take_spill_slot(self) -> int | None:
        if self._free_spill:
            return self._free_spill.pop()
        if self._spill_slots >= self._max_spill_slots:
            return None
        if self._spill_fd is None:
            self._spill_fd = _open_scratch(self._spill_path)
        self._spill_slots += 1
        self.stats.peak_spill_bytes = self._spill_slots * self._slot_bytes
        return self._spill_slots - 1

    def _spill_file(self) -> int:
        assert self._spill_fd is not None, "opened by the first spilled frame"
        return self._spill_fd

    def _spill_writer(self) -> _SpillWriter:
        if self._writer is None:
            self._writer = _SpillWriter(self._spill_file(), self._slot_bytes, self._spill_path)
        return self._writer

    def _add(self, index: int, entry: _Entry) -> None:
        """Frame ``index`` is in its slot: readers may take it."""
        with self._cond:
            self._entries[index] = entry
            if entry.slot is not None:
                self.stats.frames_in_memory += 1
            else:
                self.stats.frames_spilled += 1
            self._cond.notify_all()

    def _copy_in(self, frame: av.video.frame.VideoFrame, buffer: np.ndarray) -> None:
        for plane, (offset, _) in zip(frame.planes, self._packed, strict=True):
            view = _plane_bytes(plane, self._sample)
            buffer[offset:offset + view.size].reshape(view.shape)[:] = view

    @staticmethod
    def _copy_out(buffer: np.ndarray, planes: Planes, frame: av.video.frame.VideoFrame,
                  sample: type[np.unsignedinteger[Any]]) -> None:
        for plane, (offset, line) in zip(frame.planes, planes, strict=True):
            view = _plane_bytes(plane, sample)
            rows = buffer[offset:offset + line * plane.height].reshape(plane.height, line)
            view[:] = rows[:, :view.shape[1]]


#: Where each plane of a frame lies in a slot: its offset and its line size, in bytes.
Planes = tuple[tuple[int, int], ...]


def _plane_bytes(plane: av.video.plane.VideoPlane,
                 sample: type[np.unsignedinteger[Any]]) -> np.ndarray:
    """A writable view of a plane's visible bytes, a row of them for each line."""
    return plane_array(plane, sample).view(np.uint8)


def _plane_sizes(width: int, height: int, pixel_format: str) -> tuple[tuple[int, int], ...]:
    """Each 4:2:0 plane's visible bytes: a line's, and its lines."""
    size = np.dtype(sample_type(pixel_format)).itemsize
    return ((width * size, height),) + 2 * (((width + 1) // 2 * size, (height + 1) // 2),)


def _frame_bytes(planes: tuple[tuple[int, int], ...]) -> int:
    """A frame's visible bytes: what a memory slot holds."""
    return sum(line * lines for line, lines in planes)


def _spill_slot_size(planes: tuple[tuple[int, int], ...]) -> int:
    """The room a frame of these planes takes on disk.

    Spill slots are whole blocks, so that direct I/O can read and write them; a large frame's
    also have room for the blocks of memory that hold its planes, to be written from there (see
    :func:`_blocks_of`). A smaller frame is copied: those blocks would add more to its slot on
    disk (a 360p frame's by 6%, a 720p one's by 1.2%) than the copy costs.
    """
    frame_bytes = _frame_bytes(planes)
    slot = _round_up(frame_bytes, _BLOCK)
    if frame_bytes >= _DIRECT_MIN_BYTES:
        slot = max(slot, sum(_blocks_room(_round_up(line, _LINE_ALIGN) * lines)
                             for line, lines in planes))
    return slot


def _packed(sizes: tuple[tuple[int, int], ...]) -> Planes:
    """Planes of these (width, height) one after the other, without line padding."""
    planes, offset = [], 0
    for width, height in sizes:
        planes.append((offset, width))
        offset += width * height
    return tuple(planes)


def _blocks_of(frame: av.video.frame.VideoFrame,
               room: int) -> tuple[list[np.ndarray], Planes] | None:
    """The whole blocks of memory that hold ``frame``'s planes, to write to disk straight from
    the decoder's memory, and where each plane then lies in the slot; None if they take more
    than ``room`` bytes.

    Direct I/O wants block-aligned buffers, and FFmpeg's planes start anywhere in a page, so
    each plane goes out with the rest of the blocks around it. Copying every 4K frame into an
    aligned buffer first took 8% of the CPU time to the first rung's publication (perf,
    ``memmove``); without the copy, on 10 s of 4K, the first rung was published in 3.30
    instead of 3.53 s (medians of 8 interleaved runs, sooner in every one).
    """
    views, planes, offset = [], [], 0
    for plane in frame.planes:
        start = plane.buffer_ptr
        first = start - start % _BLOCK
        end = _round_up(start + plane.buffer_size, _BLOCK)
        if plane.line_size <= 0 or offset + end - first > room:
            return None
        memory = (ctypes.c_ubyte * (end - first)).from_address(first)
        views.append(np.ctypeslib.as_array(memory))
        planes.append((offset + start - first, plane.line_size))
        offset += end - first
    return views, tuple(planes)


def _blocks_room(size: int) -> int:
    """The most whole blocks ``size`` bytes can touch, wherever they start."""
    return _round_up(size + _BLOCK - 1, _BLOCK)


def _round_up(size: int, step: int) -> int:
    return -(-size // step) * step


class _FrameRing:
    """The frames one reader hands out, each used again once nothing else holds it.

    A new 4K frame is a fresh 12 MiB mapping (engine.memory): faulting its pages in cost 6 ms
    more per frame than copying into a frame used before. Only this ring holding a frame means
    the encoder is done with it (an encoder keeping its buffer instead gets a copy from
    ``make_writable``).
    """

    #: Frames kept for reuse; more are in flight only when a reader runs far ahead.
    SIZE = 8

    def __init__(self, width: int, height: int, pixel_format: str) -> None:
        self.width, self.height = width, height
        self.pixel_format = pixel_format
        self._frames: collections.deque[av.video.frame.VideoFrame] = collections.deque()

    def take(self) -> av.video.frame.VideoFrame:
        """A frame to fill: the oldest one handed out if it is free again, else a new one."""
        if self._frames and sys.getrefcount(self._frames[0]) == _ONLY_HELD_HERE:
            frame = self._frames.popleft()
            frame.make_writable()
        else:
            frame = av.video.frame.VideoFrame(self.width, self.height, self.pixel_format)
            if len(self._frames) == self.SIZE:
                self._frames.popleft()  # still in use: forget it
        self._frames.append(frame)
        return frame


#: ``sys.getrefcount`` of a frame only the ring holds: the ring's reference and the call's.
_ONLY_HELD_HERE = 2


class _SpillWriter:
    """Writes spilled frames on a thread of its own, so the decoder does not wait for the disk.

    The decode thread hands over a frame (or, where its memory cannot be written directly, a
    block-aligned copy of it) and goes back to decoding while this thread writes them out. A
    direct write returns only once the device has the data (about 7 ms for a 4K frame on this
    project's disk, 764 MB/s, but it varies), which the decoder used to wait out for every
    spilled frame. With two frames in flight the decoder still waited 0.04 to 1.07 s over 10 s
    of 4K (3 runs), with eight never (3 runs) while the cores were the bottleneck. But 10 s of
    4K is 3.7 GB of frames, which this project's disk takes 3.3 to 3.7 s to write directly
    (1.0-1.1 GB/s), while in a fast spell of the machine the ffmpeg CLI's 720p-only pass took
    2.6-2.9 s: eight in flight held the decoder, and so the first rung, to the disk's pace. So
    the frames waiting to be written may take up to ``PENDING_BYTES``: while decoding, when
    memory is at its lowest (0.45 GB for 4K), they let the writes fall behind and catch up
    after the decoder is done, and a job whose disk keeps up holds only a few. With the disk
    held to 400 MB/s, time to playable for 10 s of 4K went from 9.41 to 7.66 s (medians of 3
    and 2), its first phase peaking at 1.15 GB, below the 2160p encoder's 1.35 GB.
    """

    PENDING_BYTES = 768 << 20
    #: At least this many, whatever the frame size.
    MIN_PENDING = 8

    def __init__(self, fd: int, slot_bytes: int, path: Path) -> None:
        self._fd = fd
        self._path = path
        self._slot_bytes = slot_bytes
        self._room = threading.Semaphore(max(self.MIN_PENDING, self.PENDING_BYTES // slot_bytes))
        self._free: list[np.ndarray] = []
        self._work: queue.Queue[_Write | _Finish | None] = queue.Queue()
        self._error: Exception | None = None
        self._thread: threading.Thread | None = threading.Thread(
            target=self._run, name="spill-writer", daemon=True)
        self._thread.start()

    def wait_for_room(self) -> None:
        """Wait until fewer than the most writes are pending (one thread only); raises the
        first failed write."""
        self._room.acquire()
        if self._error is not None:
            self._room.release()
            raise self._error

    def buffer(self) -> np.ndarray:
        """A block-aligned buffer for a frame's copy, the most recently freed first (the
        memory least likely to be fresh); called after :meth:`wait_for_room`."""
        with contextlib.suppress(IndexError):
            return self._free.pop()
        return _aligned(self._slot_bytes)

    def write(self, views: list[np.ndarray], offset: int, done: Callable[[], None],
              holding: np.ndarray | av.video.frame.VideoFrame) -> None:
        """Write ``views`` one after the other at ``offset``, then call ``done`` (on the
        writer's thread); ``holding`` is what owns their memory (a frame, or a buffer from
        :meth:`buffer`), kept until then. Called once for each :meth:`wait_for_room`."""
        self._work.put(_Write(views, offset, done, holding))

    def finish(self, done: Callable[[Exception | None], None]) -> None:
        """No more writes: once every one is made, call ``done`` with the first failed one
        (or None) on the writer's thread, let go of the buffers and end the thread."""
        self._work.put(_Finish(done))

    def close(self) -> Exception | None:
        """Wait for every write and end the thread; the first failed write, if any."""
        if self._thread is not None:
            self._work.put(None)
            self._thread.join()
            self._thread = None
        return self._error

    def _run(self) -> None:
        while isinstance(item := self._work.get(), _Write):
            try:
                if self._error is None:
                    _transfer(_write_at, self._fd, item.views, item.offset, self._path)
                    item.done()
            except Exception as exc:  # raised in the decode thread by its next put or finish
                self._error = exc
            finally:
                if isinstance(item.holding, np.ndarray):
                    self._free.append(item.holding)
                del item  # and with it the frame, before there is room for the next one
                self._room.release()
        if isinstance(item, _Finish):
            self._free.clear()  # the memory back before the slower rungs start
            item.done(self._error)


@dataclass(frozen=True)
class _Write:
    views: list[np.ndarray]
    offset: int
    done: Callable[[], None]
    holding: np.ndarray | av.video.frame.VideoFrame


@dataclass(frozen=True)
class _Finish:
    done: Callable[[Exception | None], None]


#: What stands in the pool for a slot freed once the decoder is done.
_NO_SLOT = np.empty(0, np.uint8)

#: Direct I/O wants buffers, offsets and sizes in whole blocks of the device (512 or 4096 bytes).
_BLOCK = 4096
#: What FFmpeg rounds a frame's line size up to (64 bytes, for AVX-512).
_LINE_ALIGN = 64
#: Frames of this many bytes and more (720p and up) are spilled without a copy.
_DIRECT_MIN_BYTES = 1 << 20


def _aligned(size: int) -> np.ndarray:
    """A buffer of ``size`` bytes starting on a block boundary."""
    raw = np.empty(size + _BLOCK, np.uint8)
    start = -raw.ctypes.data % _BLOCK
    return raw[start:start + size]


def _open_scratch(path: Path) -> int:
    """The scratch file, for direct I/O where the file system takes it (not tmpfs, say).

    Its name is removed as soon as it is open, so the file system takes its blocks back when
    the last descriptor closes, however the process ends: a ``rungs transcode`` killed with
    SIGKILL (or by the OOM killer) half way through 10 s of 4K left 1.0 to 3.1 GB of frames in
    /tmp, and 60 s of 4K spills 22 GB. A system that cannot remove an open file's name keeps
    it until :meth:`FrameCache.close`."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
    direct = getattr(os, "O_DIRECT", 0)
    fd = -1
    try:
        if direct:
            try:
                fd = os.open(path, flags | direct, 0o600)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
        if fd < 0:
            fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise _scratch_error("create", path, exc) from exc
    with contextlib.suppress(OSError):
        path.unlink()
    return fd


def _transfer(call: Callable[[int, list[memoryview], int], int], fd: int,
              buffers: list[np.ndarray], offset: int, path: Path) -> None:
    """Write or read all of ``buffers``, one after the other, at ``offset`` of the scratch file
    ``path``, going on after a short transfer; a file system that refuses direct I/O only when
    it is used gets buffered I/O from then on."""
    views = [buffer.data.cast("B") for buffer in buffers]
    while views:
        try:
            count = call(fd, views, offset)
            if count == 0:
                raise OSError(errno.EIO, f"file ends before offset {offset}")
        except OSError as exc:
            if exc.errno == errno.EINVAL and _drop_direct(fd):
                continue
            raise _scratch_error("write to" if call is _write_at else "read", path, exc) from exc
        offset += count
        while views and count >= len(views[0]):
            count -= len(views.pop(0))
        if count:
            views[0] = views[0][count:]


def _scratch_error(verb: str, path: Path, exc: OSError) -> OutputWriteError:
    """A scratch file's failure as the job's error: a full disk or a read-only directory is
    the machine's state, not a fault of Rungs."""
    return OutputWriteError(f"cannot {verb} the scratch file for decoded frames in "
                            f"{str(path.parent)!r}: {exc.strerror or exc}")


def _write_at(fd: int, views: list[memoryview], offset: int) -> int:
    return os.pwritev(fd, views, offset)


def _read_at(fd: int, views: list[memoryview], offset: int) -> int:
    return os.preadv(fd, views, offset)


#: ``fallocate`` modes (linux/falloc.h): free the range, keep the file's size.
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


@functools.cache
def _fallocate() -> Callable[[int, int, int, int], int] | None:
    """The C library's ``fallocate``, where there is one (Linux)."""
    try:
        call = ctypes.CDLL(None).fallocate
    except (AttributeError, OSError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    call.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], call)


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    """Free ``length`` bytes of ``fd`` at ``offset`` (reading them gives zeros); False where the
    system or file system cannot, so the caller stops asking."""
    call = _fallocate()
    if call is None:
        return False
    return call(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0


def _drop_direct(fd: int) -> bool:
    """Turn direct I/O off on ``fd``; False when it was not on."""
    direct = getattr(os, "O_DIRECT", 0)
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if not flags & direct:
        return False
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~direct)
    return True


@dataclass
class _Entry:
    time: FrameTime
    readers_left: int
    slot: int | None
    spill: int | None
    planes: Planes
