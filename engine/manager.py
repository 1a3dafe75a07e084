"""The jobs behind the gRPC service: admission, a FIFO queue, events to watchers, recovery.

Nothing here imports gRPC: requests and answers are ``rungs.v1`` messages, and every refusal is a
:class:`~engine.errors.RungsError` that :func:`engine.service.status_code` turns into a status.

- ``max_jobs`` worker threads each run one engine :class:`~engine.job.Job` at a time; other jobs
  wait in a FIFO queue, at most ``max_queue`` of them.
- Every engine event becomes a numbered ``rungs.v1.JobEvent`` (1, 2, 3, ... per job), stored with
  the job's new snapshot in one transaction, then handed to each watcher's own bounded buffer
  (:class:`Subscription`): the encode never waits for a watcher.
- On start, jobs a previous process left unfinished are marked FAILED with code INTERRUPTED;
  rungs they published stay listed (and playable), half-written ones are removed.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import dataclasses
import fcntl
import logging
import re
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import m3u8
from google.protobuf.message import Message

from engine.audio import AUDIO_FOLDER, AUDIO_FOLDERS
from engine.errors import (
    DataDirInUseError,
    InvalidOptionsError,
    InvalidRequestError,
    InvalidSourceError,
    JobNotFoundError,
    OutputInUseError,
    PathOutsideRootError,
    QueueFullError,
    RequestIdReusedError,
    RungsError,
    ShuttingDownError,
)
from engine.hwaccel import choose_encoder
from engine.job import Job, JobEvent, JobState, TranscodeOptions
from engine.ladder import DEFAULT_HEIGHTS, LadderOptions, plan_ladder
from engine.probe import DEFAULT_MAX_DURATION_S, DEFAULT_MAX_PIXELS, open_source
from engine.publish import MASTER, MEDIA, check_output_dir, keep_listed, write_atomically
from engine.rpc import transcoder_pb2 as pb
from engine.stall import DecoderWatch, run_watched
from engine.store import MAX_SEQUENCE, TERMINAL_STATES, JobStore, StoredJob

log = logging.getLogger(__name__)

#: Error code of jobs found unfinished when the server starts.
INTERRUPTED = "INTERRUPTED"
#: Error code of jobs their watchdog stopped (see :class:`Watchdog`).
TIMED_OUT = "TIMED_OUT"
#: Most rungs one request may ask for: each is a thread and an encoder.
MAX_RUNGS = 8
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
#: Events a watcher may fall behind before its oldest waiting progress event is dropped.
WATCH_BUFFER = 256
#: How long Cancel waits for a running job to stop before answering with its state then.
CANCEL_WAIT_S = 5.0
CANCELLED_BY_CLIENT = "cancelled by a client"
#: Longest request_id kept: an idempotency key, not a payload (every request's is stored).
MAX_REQUEST_ID = 256
SHUTTING_DOWN = "the server is shutting down"

_SEGMENT_TYPES = {pb.SEGMENT_TYPE_UNSPECIFIED: "fmp4", pb.FMP4: "fmp4", pb.MPEGTS: "mpegts"}
_JOB_STATES = {JobState.QUEUED: pb.QUEUED, JobState.RUNNING: pb.RUNNING, JobState.READY: pb.READY,
               JobState.COMPLETE: pb.COMPLETE, JobState.FAILED: pb.FAILED,
               JobState.CANCELLED: pb.CANCELLED}
# PUBLISHED comes only from a rung_published event: the engine marks a rung published just before
# it emits that event, so a progress tick in between would otherwise announce it early.
_RUNG_STATES = {"PENDING": pb.PENDING, "ENCODING": pb.ENCODING, "PUBLISHED": pb.ENCODING}


# -- how long a job may run ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Watchdog:
    """How long a job may run before it is stopped: ``base_s`` plus ``per_source_second`` for
    each second of its source, or exactly ``fixed_s`` when set.

    A job past its limit is cancelled and ends FAILED with code TIMED_OUT. One that has not
    stopped ``grace_s`` later (stuck inside FFmpeg, say) is abandoned: it ends FAILED all the
    same, and its worker thread is replaced, so a stuck job never holds a worker slot or a
    watcher forever. An abandoned job's thread may still write its output folder until it
    returns; its output is no longer reserved.
    """

    base_s: float = 300.0
    #: 10: x264 at the default ladder on two cores encodes well above a tenth of real time.
    per_source_second: float = 10.0
    fixed_s: float | None = None
    grace_s: float = 10.0

    def limit(self, source_seconds: float) -> float:
        if self.fixed_s is not None:
            return self.fixed_s
        return self.base_s + self.per_source_second * max(0.0, source_seconds)


# -- where sources and outputs may be ---------------------------------------------------------


class Roots:
    """The directories requests may read sources from and write outputs into."""

    def __init__(self, source_root: Path, output_root: Path) -> None:
        if not source_root.is_dir():
            raise InvalidRequestError(f"source root {str(source_root)!r} is not a directory")
        output_root.mkdir(parents=True, exist_ok=True)
        # Resolved once, so every check compares real paths with real paths.
        self.source = source_root.resolve()
        self.output = output_root.resolve()

    def source_file(self, given: str) -> Path:
        """The real path of the source ``given`` names; it must be a file inside the root."""
        path = _inside(self.source, given, "source")
        if not path.is_file():
            raise InvalidSourceError(f"source {given!r} does not exist or is not a file")
        return path

    def output_dir(self, given: str) -> Path:
        """The real path of the output directory ``given`` names, strictly inside the root."""
        path = _inside(self.output, given, "output")
        _check_folder_names(given)
        if path == self.output:
            # With overwrite, writing into the root itself would empty every other output.
            raise InvalidRequestError("output must name a directory inside the output root")
        return path

    def client_path(self, path: str | Path) -> str:
        """``path`` as clients name it: relative to its root (server paths are not shared)."""
        resolved = Path(path)
        for root in (self.output, self.source):
            if resolved.is_relative_to(root):
                return resolved.relative_to(root).as_posix()
        return resolved.name

    def client_message(self, message: str) -> str:
        """An engine message with the roots' server paths taken out."""
        for root in (self.output, self.source):
            message = message.replace(f"{root}/", "")
        return message


def _check_folder_names(given: str) -> None:
    """Refuse an output whose folder names hold a control character or start or end with
    a space: the service created a folder named with a line break, or a lone space, as asked,
    which no caller means and which breaks the listings, logs and scripts that name it."""
    for name in Path(given).parts:
        if any(ord(char) < 32 or ord(char) == 127 for char in name):
            raise InvalidRequestError(f"output {_shown(given)!r} contains a control character")
        if name != name.strip():
            raise InvalidRequestError(
                f"output {_shown(given)!r} has a folder name that starts or ends with a space")


def _shown(given: str) -> str:
    """``given`` as a message names it: messages stay one short line."""
    return given if len(given) <= 200 else f"{given[:200]}..."


def _inside(root: Path, given: str, what: str) -> Path:
    if not given:
        raise InvalidRequestError(f"{what} is empty")
    if "\0" in given:
        raise InvalidRequestError(f"{what} contains a NUL character")
    path = Path(given)
    shown = _shown(given)
    # Refused outright, even where it would resolve inside: a path names a place in the root.
    if ".." in path.parts:
        raise PathOutsideRootError(f"{what} {shown!r} contains '..'")
    try:
        resolved = (root / path).resolve()  # follows symlinks; root / absolute is absolute
        # Path.exists() and is_file() raise for a name the OS refuses (ENAMETOOLONG): ask once
        # here, so such a name is a refused request rather than an internal error later.
        resolved.exists()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidRequestError(f"{what} {shown!r} cannot be resolved: {reason}") from exc
    if not resolved.is_relative_to(root):
        raise PathOutsideRootError(f"{what} {shown!r} is outside the {what} root")
    return resolved


# -- one watcher's events ---------------------------------------------------------------------


class Subscription:
    """Live events of one job for one watcher, in a buffer the job's threads never wait on.

    When ``capacity`` events are waiting, the oldest waiting progress event is dropped (a later
    one says more). Every other event is kept: a job has only a handful per rung, so the buffer
    stays bounded by ``capacity`` plus those.
    """

    def __init__(self, capacity: int = WATCH_BUFFER) -> None:
        self._capacity = capacity
        self._events: collections.deque[pb.JobEvent] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        #: Progress events dropped for this watcher.
        self.dropped = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, event: pb.JobEvent) -> None:
        with self._cond:
            if self._closed:
                return
            if len(self._events) >= self._capacity:
                made_room = self._drop_oldest_progress()
                if not made_room and event.HasField("progress"):
                    self.dropped += 1  # nothing older to drop: this progress event goes
                    return
            self._events.append(event)
            self._cond.notify()

    def _drop_oldest_progress(self) -> bool:
        for index, waiting in enumerate(self._events):
            if waiting.HasField("progress"):
                del self._events[index]
                self.dropped += 1
                return True
        return False

    def get(self, timeout: float) -> pb.JobEvent | None:
        """The next event, or ``None`` after ``timeout`` seconds or once closed."""
        with self._cond:
            if not self._events and not self._closed:
                self._cond.wait(timeout)
            if self._closed or not self._events:
                return None
            return self._events.popleft()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._events.clear()
            self._cond.notify_all()


class EventStream:
    """One Watch: the stored history after ``after``, then live events, ending after the
    terminal event.

    Iterate from one thread; :meth:`close` may be called from any thread (a client hanging up)
    and ends the iteration at its next step.
    """

    def __init__(self, store: JobStore, job_id: str, after: int, upto: int | None = None,
                 live: _LiveJob | None = None, subscription: Subscription | None = None) -> None:
        self._store = store
        self._job_id = job_id
        self._after = after
        self._upto = upto
        self._live = live
        self._subscription = subscription
        self._closed = False

    def __iter__(self) -> Iterator[pb.JobEvent]:
        last = self._after
        try:
            for event in self._store.events(self._job_id, self._after, self._upto):
                if self._closed:
                    return
                yield event
                last = event.sequence
                if event.state in TERMINAL_STATES:
                    return
            subscription = self._subscription
            while subscription is not None and not subscription.closed:
                # The timeout only bounds how long a lost wake-up could go unnoticed.
                live = subscription.get(timeout=1.0)
                if live is None:
                    continue
                if live.sequence > last:
                    yield live
                    last = live.sequence
                # Even when not sent (asked for events after it): nothing comes after it.
                if live.state in TERMINAL_STATES:
                    return
        finally:
            self.close()

    def close(self) -> None:
        self._closed = True
        if self._subscription is not None:
            self._subscription.close()
            if self._live is not None:
                self._live.unsubscribe(self._subscription)


# -- one job of this process ------------------------------------------------------------------


class _LiveJob:
    """A job that has not ended: its engine job, its snapshot, its watchers.

    Every event, from the engine's threads or the service's, goes through :meth:`_append` under
    one lock: numbered, applied to the snapshot, stored, then handed to the watchers.
    """

    def __init__(self, snapshot: pb.Job, output_dir: Path, store: JobStore, roots: Roots,
                 on_end: Callable[[_LiveJob], None]) -> None:
        self.snapshot = snapshot
        self.output_dir = output_dir
        self.job: Job | None = None
        #: Taken off the queue by a worker (guarded by the manager's lock).
        self.started = False
        #: Set once the terminal event is stored and the manager has let the job go.
        self.ended = threading.Event()
        #: Set once the engine job has returned: its threads are stopped and its scratch space
        #: and unpublished files are removed (a moment after its terminal event).
        self.stopped = threading.Event()
        #: Said in the ``cancelled`` event; set before the job is cancelled.
        self.cancel_reason = CANCELLED_BY_CLIENT
        #: Seconds the job may run (its watchdog's limit); 0: no limit.
        self.time_limit_s = 0.0
        #: The watchdog cancelled the job: its ``cancelled`` event is told as FAILED TIMED_OUT.
        self.timed_out = False
        #: The watchdog gave up waiting for the job to stop; its worker has been replaced.
        self.abandoned = False
        self._store = store
        self._roots = roots
        self._on_end = on_end
        self._lock = threading.Lock()
        self._done = False
        self._subscriptions: list[Subscription] = []
        self._frames_total = 0

    @property
    def id(self) -> str:
        return self.snapshot.id

    def copy(self) -> pb.Job:
        with self._lock:
            job = pb.Job()
            job.CopyFrom(self.snapshot)
            return job

    def subscribe(self, subscription: Subscription) -> int | None:
        """Add a watcher; returns the last sequence it will not get live (``None``: ended)."""
        with self._lock:
            if self._done:
                return None
            self._subscriptions.append(subscription)
            return self.snapshot.last_sequence

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)

    def run(self, grace_s: float = 0.0,
            on_abandon: Callable[[_LiveJob], None] | None = None) -> None:
        """Run the engine job on this thread, under its watchdog; the job ends here whatever
        happens (or, if it never stops, the watchdog ends it: see :class:`Watchdog`)."""
        assert self.job is not None
        timer = None
        if self.time_limit_s > 0:
            timer = threading.Timer(self.time_limit_s, self._expire, (grace_s, on_abandon))
            timer.name, timer.daemon = f"watchdog-{self.id}", True
            timer.start()
        try:
            self.job.run()
        except Exception:  # Job.run reports failures as events; anything else is a bug
            log.exception("job %s raised", self.id)
        finally:
            if timer is not None:
                timer.cancel()
            self.stopped.set()
        # A terminal event lost in a listener would leave watchers waiting forever.
        self.end("failed", pb.FailedEvent(error=pb.Error(
            code="INTERNAL", message="the job ended without a final event")), pb.FAILED)

    def _expire(self, grace_s: float, on_abandon: Callable[[_LiveJob], None] | None) -> None:
        """The watchdog's timer: cancel the job; abandon it if it does not stop in time."""
        if self.ended.is_set():
            return
        assert self.job is not None
        log.warning("job %s ran past its limit of %.0f s; stopping it", self.id,
                    self.time_limit_s)
        self.timed_out = True
        self.job.cancel()
        if self.ended.wait(grace_s):
            return
        log.error("job %s did not stop %.0f s after it was cancelled; abandoning it", self.id,
                  grace_s)
        self.abandoned = True
        self.end("failed", pb.FailedEvent(error=pb.Error(
            code=TIMED_OUT, message=f"{self._time_limit_message()}, and did not stop when "
                                    "cancelled")), pb.FAILED)
        if on_abandon is not None:
            on_abandon(self)

    def _time_limit_message(self) -> str:
        return f"the job ran longer than its time limit of {self.time_limit_s:.0f} s"

    def on_engine_event(self, event: JobEvent) -> None:
        """The engine job's listener (its threads call it one at a time)."""
        state = _JOB_STATES[event.state]
        if self.timed_out and event.type == "cancelled":  # stopped by its watchdog
            error = pb.Error(code=TIMED_OUT, message=self._time_limit_message())
            self._emit("failed", pb.FailedEvent(error=error), pb.FAILED, event.elapsed_s,
                       self.job)
            return
        try:
            payload = self._payload(event)
        except Exception:
            log.exception("job %s: cannot convert %s event", self.id, event.type)
            payload = None
        if payload is None:
            if event.state.terminal:  # the end must be told, even if its details are lost
                payload = ("failed", pb.FailedEvent(error=pb.Error(
                    code="INTERNAL", message=f"unreadable {event.type} event")))
            else:
                return
        self._emit(*payload, state, event.elapsed_s, self.job)

    def end(self, kind: str, message: Message, state: pb.JobState) -> None:
        """End the job with an event of the service's own (no-op if it has ended)."""
        elapsed = (self.job.total_s or 0.0) if self.job is not None else 0.0
        self._emit(kind, message, state, elapsed, None)

    def _emit(self, kind: str, message: Message, state: pb.JobState, elapsed: float,
              job: Job | None) -> None:
        with self._lock:
            if self._done:
                return
            if job is not None:
                self._sync(job)
            terminal = self._append(kind, message, state, elapsed)
        if terminal:
            self._on_end(self)
            self.ended.set()

    def _append(self, kind: str, message: Message, state: pb.JobState, elapsed: float) -> bool:
        snapshot = self.snapshot
        event = pb.JobEvent(job_id=snapshot.id, sequence=snapshot.last_sequence + 1, state=state,
                            elapsed_seconds=elapsed)
        event.time.GetCurrentTime()
        getattr(event, kind).CopyFrom(message)
        snapshot.state = state
        snapshot.last_sequence = event.sequence
        self._apply(event)
        try:
            self._store.record_event(event, snapshot)
        except sqlite3.Error:  # the job goes on; only its stored history misses this event
            log.exception("job %s: cannot store event %d", snapshot.id, event.sequence)
        for subscription in self._subscriptions:
            subscription.put(event)
        self._done = state in TERMINAL_STATES
        return self._done

    def _apply(self, event: pb.JobEvent) -> None:
        """What ``event`` changes in the snapshot."""
        snapshot, kind = self.snapshot, event.WhichOneof("kind")
        if kind == "running":
            snapshot.started_at.CopyFrom(event.time)
        elif kind == "poster_ready":
            snapshot.poster = event.poster_ready.poster
        elif kind == "rung_published":
            published = event.rung_published
            rung = next((r for r in snapshot.rungs if r.name == published.rung), None)
            if rung is None:
                rung = snapshot.rungs.add(name=published.rung)
            rung.width, rung.height = published.width, published.height
            rung.state = pb.PUBLISHED
            rung.encoder = published.encoder
            rung.frames_done = rung.frames_total = published.frames
            rung.bandwidth = published.bandwidth
            rung.average_bandwidth = published.average_bandwidth
            rung.published_at.CopyFrom(event.time)
            snapshot.master_playlist = published.master_playlist
        elif kind == "ready":
            snapshot.ready_at.CopyFrom(event.time)
            snapshot.master_playlist = event.ready.master_playlist
        elif kind == "complete":
            snapshot.completed_at.CopyFrom(event.time)
            snapshot.frames_decoded = event.complete.frames_decoded
            snapshot.source_frames = event.complete.source_frames
            snapshot.notes[:] = event.complete.notes
            snapshot.subtitles.extend(event.complete.subtitles)
            snapshot.audio.extend(event.complete.audio)
            snapshot.closed_captions.extend(event.complete.closed_captions)
        elif kind == "failed":
            snapshot.error.CopyFrom(event.failed.error)
        if event.state in TERMINAL_STATES:
            snapshot.ended_at.CopyFrom(event.time)

    def _sync(self, job: Job) -> None:
        """Copy what the engine job knows now (rungs, progress, counts) into the snapshot."""
        snapshot = self.snapshot
        if not snapshot.rungs:
            for status in job.rungs:
                snapshot.rungs.add(name=status.rung.name, width=status.rung.width,
                                   height=status.rung.height, state=pb.PENDING)
        for status, rung in zip(job.rungs, snapshot.rungs, strict=False):
            if rung.state == pb.PUBLISHED:
                continue  # fixed by its rung_published event
            rung.state = _rung_state(status.state)
            rung.encoder = status.encoder
            rung.frames_done = _u32(status.progress.frames_done)
            rung.frames_total = _u32(self._frames_total)
        snapshot.source_frames = _u32(job.source_frames)
        snapshot.frames_decoded = _u32(job.decode_progress.frames_decoded)

    def _payload(self, event: JobEvent) -> tuple[str, Message] | None:
        """The ``rungs.v1`` message of an engine event, by its oneof field name."""
        data: Mapping[str, Any] = event.data
        path = self._roots.client_path
        if event.type == "queued":
            return "queued", pb.QueuedEvent()
        if event.type == "running":
            return "running", pb.RunningEvent(source=self.snapshot.source)
        if event.type == "poster_ready":
            return "poster_ready", pb.PosterReadyEvent(poster=path(data["path"]))
        if event.type == "progress":
            self._frames_total = max((r["frames_total"] for r in data["rungs"]), default=0)
            return "progress", pb.ProgressEvent(rungs=[
                pb.RungProgress(rung=r["rung"], frames_done=_u32(r["frames_done"]),
                                frames_total=_u32(r["frames_total"]), state=_rung_state(r["state"]))
                for r in data["rungs"]])
        if event.type == "rung_published":
            return "rung_published", pb.RungPublishedEvent(
                rung=data["rung"], width=data["width"], height=data["height"],
                encoder=data["encoder"], bandwidth=_u32(data["bandwidth"]),
                average_bandwidth=_u32(data["average_bandwidth"]), codecs=data["codecs"],
                frames=_u32(data["frames"]), encode_fps=data["encode_fps"],
                master_playlist=path(data["master"]))
        if event.type == "ready":
            return "ready", pb.ReadyEvent(master_playlist=path(data["master"]), rung=data["rung"],
                                          early_playback=bool(data.get("early_playback")))
        if event.type == "first_segment":
            return "first_segment", pb.FirstSegmentEvent(
                rung=data["rung"], master_playlist=path(data["master"]),
                segment_seconds=data["segment_seconds"])
        if event.type == "encoder_fallback":
            return "encoder_fallback", pb.EncoderFallbackEvent(
                rung=data["rung"], failed=data["failed"], encoder=data["encoder"],
                segment=_u32(data["segment"]), reason=data["reason"])
        if event.type == "complete":
            return "complete", pb.CompleteEvent(
                time_to_ready_seconds=data.get("time_to_ready_s") or 0.0,
                total_seconds=data.get("total_s") or 0.0,
                frames_decoded=_u32(data["frames_decoded"]),
                source_frames=_u32(data["source_frames"]), notes=data["notes"],
                subtitles=[pb.SubtitleTrack(
                    name=t["name"], language=t["language"] or "", default=t["default"],
                    forced=t["forced"], playlist=path(t["playlist"]))
                    for t in data["subtitles"]],
                audio=[pb.AudioTrack(
                    name=a["name"], language=a["language"] or "", channels=a["channels"],
                    playlist=path(a["playlist"]))
                    for a in data["audio"]],
                closed_captions=data["closed_captions"])
        if event.type == "failed":
            return "failed", pb.FailedEvent(error=pb.Error(
                code=data["code"], message=self._roots.client_message(data["message"])))
        if event.type == "cancelled":
            return "cancelled", pb.CancelledEvent(reason=self.cancel_reason)
        log.debug("job %s: no rungs.v1 event for engine event %r", self.id, event.type)
        return None


def _rung_state(engine_state: str) -> pb.RungState:
    return _RUNG_STATES.get(engine_state, pb.RUNG_STATE_UNSPECIFIED)


def _u32(value: int) -> int:
    return min(max(int(value), 0), 2**32 - 1)


# -- the manager ------------------------------------------------------------------------------


class JobManager:
    """Admits, queues, runs, cancels and answers for the jobs of one data directory.

    Call :meth:`start` to run jobs, :meth:`shutdown` to cancel what is left, :meth:`close` to
    release the store and the data directory.
    """

    def __init__(self, data_dir: Path, source_root: Path, output_root: Path, *,
                 max_jobs: int = 1, max_queue: int = 16, watchdog: Watchdog | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_duration_s: float = DEFAULT_MAX_DURATION_S) -> None:
        if max_jobs < 1 or max_queue < 0:
            raise InvalidRequestError("max jobs must be at least 1 and max queue at least 0")
        self.max_jobs, self.max_queue = max_jobs, max_queue
        self.watchdog = watchdog or Watchdog()
        #: Sources above these are refused (before their frames are allocated; see probe).
        self.max_pixels, self.max_duration_s = max_pixels, max_duration_s
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self._cond = threading.Condition()
        self._live: dict[str, _LiveJob] = {}
        self._queue: collections.deque[_LiveJob] = collections.deque()
        self._closing = False
        self._workers: list[threading.Thread] = []
        self._dir_lock = _lock_data_dir(data_dir)
        with contextlib.ExitStack() as on_failure:
            on_failure.callback(self._dir_lock.close)
            self.roots = Roots(source_root, output_root)
            # Spill files of jobs a crash interrupted: nothing else uses them now.
            self.scratch = data_dir / "scratch"
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch.mkdir()
            self.store = JobStore(data_dir / "jobs.sqlite3")
            on_failure.callback(self.store.close)
            for stored in self.store.unfinished():  # what a stopped or killed server left
                self._interrupt(stored)
            on_failure.pop_all()

    def start(self) -> None:
        # The first Transcode would otherwise pay for trying every hardware encoder.
        threading.Thread(target=_warm_encoder_probe, name="encoder-probe", daemon=True).start()
        for index in range(self.max_jobs):
            # Daemon: a process that exits without shutdown() must not hang on its workers.
            worker = threading.Thread(target=self._work, name=f"job-worker-{index}", daemon=True)
            self._workers.append(worker)
            worker.start()

    # -- requests -----------------------------------------------------------------------------

    def submit(self, request: pb.TranscodeRequest) -> pb.Job:
        """Check ``request``, queue its job and return it (or the job its request_id made)."""
        if len(request.request_id) > MAX_REQUEST_ID:
            raise InvalidRequestError(
                f"request_id is {len(request.request_id)} characters long; the most is "
                f"{MAX_REQUEST_ID}")
        wire = request.SerializeToString(deterministic=True)
        if request.request_id and (earlier := self._requested(request.request_id, wire)):
            return earlier
        self._check_open()
        self._check_capacity()  # early too: a full server should not probe what it will refuse
        source = self.roots.source_file(request.source)
        output = self.roots.output_dir(request.output)
        options, effective = self._options(request.options)
        self._check_output(source, output, options.overwrite)
        # A quick probe (the first frame), so a non-video is refused here, not by a FAILED job;
        # watched, so a decoder stuck on it does not keep this call for ever (engine.stall).
        watch = DecoderWatch()

        def probe() -> float:
            with open_source(source, max_pixels=options.max_pixels,
                             max_duration_s=options.max_duration_s, watch=watch) as opened:
                plan_ladder(opened.info, options.ladder)
                return self.watchdog.limit(opened.info.duration_s)

        time_limit = run_watched(probe, watch, source.name)
        with self._cond:
            self._check_open()
            # Checked again under the lock: a concurrent retry may have won the race.
            if request.request_id and (earlier := self._requested(request.request_id, wire)):
                return earlier
            # Before the queue: a conflicting request is refused for what it asks, not the load.
            self._check_output_free(source, output)
            self._check_capacity()
            snapshot = pb.Job(id=secrets.token_hex(8), state=pb.QUEUED,
                              source=self.roots.client_path(source),
                              output=self.roots.client_path(output), options=effective,
                              request_id=request.request_id)
            snapshot.created_at.GetCurrentTime()
            self.store.insert_job(snapshot, wire, source, output)
            live = _LiveJob(snapshot, output, self.store, self.roots, self._ended)
            live.time_limit_s = time_limit
            # The engine job emits its ``queued`` event (sequence 1) from its constructor.
            live.job = Job(source, output, options, on_event=live.on_engine_event)
            self._live[live.id] = live
            self._queue.append(live)
            self._cond.notify()
            log.info("job %s queued: %s -> %s", live.id, snapshot.source, snapshot.output)
            return live.copy()

    def status(self, job_id: str) -> pb.Job:
        live = self._find_live(job_id)
        if live is not None:
            return live.copy()
        job = self.store.get_job(job_id)
        if job is None:
            raise JobNotFoundError(f"no job {job_id!r}")
        return job

    def cancel(self, job_id: str, reason: str = CANCELLED_BY_CLIENT) -> pb.Job:
        """Cancel a queued or running job; a job that has ended is returned as it is."""
        with self._cond:
            live = self._live.get(job_id) if job_id else None
            queued = live is not None and not live.started
            if live is not None and queued:
                self._queue.remove(live)
        if live is None:
            return self.status(job_id)
        live.cancel_reason = reason
        if queued:
            live.end("cancelled", pb.CancelledEvent(reason=reason), pb.CANCELLED)
        else:
            assert live.job is not None
            live.job.cancel()
            # Stopped, not only ended: Cancel answers once the job's files are cleaned up too.
            live.stopped.wait(CANCEL_WAIT_S)
        return self.status(job_id)

    def watch(self, job_id: str, after: int = 0, buffer: int = WATCH_BUFFER) -> EventStream:
        """The job's events after ``after``: history first, then live, to the terminal one."""
        live = self._find_live(job_id)
        if live is not None:
            subscription = Subscription(buffer)
            last = live.subscribe(subscription)
            if last is not None:
                return EventStream(self.store, job_id, after, last, live, subscription)
        # Ended (perhaps a moment ago): every event is in the store.
        if self.store.get_job(job_id) is None:
            raise JobNotFoundError(f"no job {job_id!r}")
        return EventStream(self.store, job_id, after)

    def list_jobs(self, page_size: int, page_token: str,
                  states: list[int]) -> tuple[list[pb.Job], str]:
        """A page of jobs, newest first, and the token of the next page ('' on the last)."""
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        unknown = [s for s in states if s not in pb.JobState.values() or s == 0]
        if unknown:
            raise InvalidRequestError(f"unknown job states {unknown}")
        rows = self.store.list_jobs(states, _parse_page_token(page_token), size + 1)
        token = _page_token(rows[size - 1][0]) if len(rows) > size else ""
        return [job for _, job in rows[:size]], token

    # -- lifecycle ----------------------------------------------------------------------------

    def shutdown(self, timeout: float | None = None) -> None:
        """Take no more jobs, cancel queued and running ones, wait for them to end."""
        with self._cond:
            self._closing = True
            queued = list(self._queue)
            self._queue.clear()
            running = [live for live in self._live.values() if live.started]
            self._cond.notify_all()
        for live in queued:
            live.cancel_reason = SHUTTING_DOWN
            live.end("cancelled", pb.CancelledEvent(reason=SHUTTING_DOWN), pb.CANCELLED)
        for live in running:
            live.cancel_reason = SHUTTING_DOWN
            assert live.job is not None
            live.job.cancel()
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self._workers:
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Close the store and release the data directory (after :meth:`shutdown`)."""
        self.store.close()
        self._dir_lock.close()

    # -- internals ----------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                live = self._queue.popleft()
                live.started = True
            log.info("job %s started", live.id)
            live.run(self.watchdog.grace_s, self._replace_worker)
            if live.abandoned:
                return  # a replacement took this worker's place when the job was abandoned

    def _replace_worker(self, live: _LiveJob) -> None:
        """The watchdog abandoned ``live``, whose worker is stuck: start another in its place."""
        with self._cond:
            if self._closing:
                return
            worker = threading.Thread(target=self._work, name=f"job-worker-{len(self._workers)}",
                                      daemon=True)
            self._workers.append(worker)
        log.warning("job %s abandoned; started %s in place of its worker", live.id, worker.name)
        worker.start()

    def _ended(self, live: _LiveJob) -> None:
        with self._cond:
            self._live.pop(live.id, None)
        job = live.snapshot
        log.info("job %s ended %s%s", live.id, pb.JobState.Name(job.state),
                 f" ({job.error.code}: {job.error.message})" if job.HasField("error") else "")

    def _find_live(self, job_id: str) -> _LiveJob | None:
        if not job_id:
            raise InvalidRequestError("job_id is empty")
        with self._cond:
            return self._live.get(job_id)

    def _check_open(self) -> None:
        if self._closing:
            raise ShuttingDownError("the server is shutting down and takes no new jobs")

    def _check_capacity(self) -> None:
        with self._cond:
            if len(self._live) >= self.max_jobs + self.max_queue:
                raise QueueFullError(
                    f"the queue is full ({len(self._queue)} jobs waiting, --max-queue "
                    f"{self.max_queue}); try again later")

    def _requested(self, request_id: str, wire: bytes) -> pb.Job | None:
        """The job an earlier request with ``request_id`` made, if the requests are the same."""
        stored = self.store.find_request(request_id)
        if stored is None:
            return None
        if stored.request != wire:
            raise RequestIdReusedError(
                f"request_id {request_id!r} was used by a different request (job {stored.job.id})")
        return self.status(stored.job.id)

    def _options(self, options: pb.TranscodeOptions) -> tuple[TranscodeOptions,
                                                               pb.TranscodeOptions]:
        """Engine options for a request's, and the request's with every default filled in."""
        heights = tuple(options.ladder) or DEFAULT_HEIGHTS
        if len(set(heights)) > MAX_RUNGS:
            raise InvalidOptionsError(f"a ladder has at most {MAX_RUNGS} rungs, not {len(heights)}")
        segment_type = _SEGMENT_TYPES.get(options.segment_type)
        if segment_type is None:
            raise InvalidOptionsError(f"unknown segment type {options.segment_type}")
        encoder = options.encoder or "auto"
        choose_encoder(encoder)  # refuses an unknown encoder, or one that does not work here
        early = options.early_playback if options.HasField("early_playback") else True
        engine = TranscodeOptions(ladder=LadderOptions(heights=heights),
                                  segment_type=segment_type, encoder=encoder,
                                  overwrite=options.overwrite, scratch_dir=self.scratch,
                                  early_playback=early, max_pixels=self.max_pixels,
                                  max_duration_s=self.max_duration_s)
        if options.segment_seconds:  # 0 (unset) keeps the engine's default
            engine = dataclasses.replace(engine, segment_seconds=options.segment_seconds)
        engine.check()
        effective = pb.TranscodeOptions(
            ladder=sorted(set(heights)), encoder=encoder, segment_seconds=engine.segment_seconds,
            segment_type=pb.MPEGTS if segment_type == "mpegts" else pb.FMP4,
            overwrite=options.overwrite, early_playback=early)
        return engine, effective

    def _check_output(self, source: Path, output: Path, overwrite: bool) -> None:
        data = self.data_dir.resolve()
        if output.is_relative_to(data) or data.is_relative_to(output):
            # Overwriting it would delete the job store, its lock and the scratch files.
            raise InvalidRequestError(
                f"output {self.roots.client_path(output)!r} overlaps the server's data directory")
        try:
            check_output_dir(output, overwrite, keep=[source])
        except RungsError as exc:  # the same error, in the paths clients use
            raise type(exc)(self.roots.client_message(exc.message)) from None

    def _check_output_free(self, source: Path, output: Path) -> None:
        """Refuse an output that another queued or running job writes (or one inside or above
        it), or that holds its source; and a source inside another job's output."""
        for live in self._live.values():
            other = live.output_dir
            name = self.roots.client_path(output)
            if output.is_relative_to(other) or other.is_relative_to(output):
                raise OutputInUseError(
                    f"output {name!r} is in use by job {live.id} (output {live.snapshot.output!r})")
            if live.job is not None and live.job.source.is_relative_to(output):
                raise OutputInUseError(
                    f"output {name!r} holds the source of job {live.id} "
                    f"({live.snapshot.source!r})")
            if source.is_relative_to(other):
                raise OutputInUseError(
                    f"source {self.roots.client_path(source)!r} is inside the output of job "
                    f"{live.id} ({live.snapshot.output!r})")

    def _interrupt(self, stored: StoredJob) -> None:
        """Mark a job a previous process left unfinished as FAILED, code INTERRUPTED."""
        job = stored.job
        # A job that never started has not touched its output directory, which may hold an
        # earlier job's output that it was to replace.
        queued = job.state == pb.QUEUED
        listed = None if queued else _listed_rungs(stored.output_path)
        if listed is not None:
            for rung in job.rungs:
                bandwidths = listed.get(rung.name)
                if bandwidths is not None and rung.state != pb.PUBLISHED:
                    # Published, but the process died before it stored the event.
                    rung.state = pb.PUBLISHED
                    rung.bandwidth, rung.average_bandwidth = bandwidths
                if rung.state != pb.PUBLISHED:
                    _remove_unpublished(stored.output_path, rung.name)
            if not any(r.state == pb.PUBLISHED for r in job.rungs):
                _remove_unpublished(stored.output_path, AUDIO_FOLDER)
            _tidy_interrupted(stored.output_path, set(listed))
        live = _LiveJob(job, stored.output_path, self.store, self.roots, lambda _: None)
        message = ("the server stopped while the job was waiting to start" if queued else
                   "the server stopped while the job was running; rungs it had published "
                   "stay listed")
        live.end("failed", pb.FailedEvent(error=pb.Error(code=INTERRUPTED, message=message)),
                 pb.FAILED)
        log.warning("job %s was interrupted by a server stop; marked FAILED", job.id)


def _listed_rungs(output: Path) -> dict[str, tuple[int, int]] | None:
    """Rungs the master playlist lists, with (bandwidth, average bandwidth); ``None`` when it
    cannot be read (then nothing is removed: what is listed is unknown)."""
    master = output / MASTER
    if not master.exists():
        return {}
    try:
        playlist = m3u8.load(str(master))
        return {variant.uri.split("/")[0]: (_u32(variant.stream_info.bandwidth or 0),
                                            _u32(variant.stream_info.average_bandwidth or 0))
                for variant in playlist.playlists}
    except Exception:  # a damaged master: leave everything in place
        log.exception("cannot read %s", master)
        return None


def _remove_unpublished(output: Path, name: str) -> None:
    # Names come from the engine ("720p", "audio"); anything else is not ours to delete.
    if name and Path(name).name == name and name not in (".", ".."):
        shutil.rmtree(output / name, ignore_errors=True)


#: Folders a job writes into its output directory: rungs ("720p") and the audio ("audio2").
_JOB_FOLDER = re.compile(rf"\d+p|{AUDIO_FOLDERS.pattern}")


def _tidy_interrupted(output: Path, listed: set[str]) -> None:
    """What a killed job left half-done in ``output``, made whole: rung folders the master
    does not list are removed (even ones the stored job never heard of: it may have died
    before its first event), and every listed folder keeps only what its playlist lists, with
    the playlist ended (a rung listed early has a growing EVENT playlist that no one will
    finish). Temporary files go. Everything in ``output`` is the job's: it was empty, or
    emptied with overwrite, when the job started."""
    if not output.is_dir():
        return
    for child in output.iterdir():
        if child.is_symlink():
            continue
        if child.is_dir() and _JOB_FOLDER.fullmatch(child.name):
            if child.name in listed or (listed and AUDIO_FOLDERS.fullmatch(child.name)):
                _finish_listed(child)
            else:
                shutil.rmtree(child, ignore_errors=True)
        elif child.is_file() and child.name.startswith(".") and child.name.endswith(".tmp"):
            child.unlink(missing_ok=True)  # a playlist or poster being replaced


def _finish_listed(folder: Path) -> None:
    playlist_path = folder / MEDIA
    try:
        text = playlist_path.read_text()
        playlist = m3u8.loads(text)
    except (OSError, ValueError):
        log.exception("cannot read %s; leaving the folder as it is", playlist_path)
        return
    keep_listed(folder, playlist)
    if not playlist.is_endlist:
        # Its segments are complete (a segment is listed only once it is); end it there, so
        # players play it to the end instead of waiting for more forever.
        write_atomically(playlist_path, (text.rstrip("\n") + "\n#EXT-X-ENDLIST\n").encode())


def _lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold the data directory for this process (released by the OS even on kill -9)."""
    handle = (data_dir / "lock").open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DataDirInUseError(
            f"data directory {str(data_dir)!r} is in use by another rungs server") from None
    return handle


def _warm_encoder_probe() -> None:
    try:
        choose_encoder("auto")
    except RungsError:
        log.exception("encoder probe failed")


def _page_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"before:{seq}".encode()).decode()


def _parse_page_token(token: str) -> int | None:
    if not token:
        return None
    try:
        kind, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind == "before" and value.isdigit() and int(value) <= MAX_SEQUENCE:
            return int(value)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise InvalidRequestError("page_token is not one this server gave")


__all__ = [
    "INTERRUPTED",
    "TIMED_OUT",
    "DataDirInUseError",
    "EventStream",
    "InvalidRequestError",
    "JobManager",
    "JobNotFoundError",
    "OutputInUseError",
    "PathOutsideRootError",
    "QueueFullError",
    "RequestIdReusedError",
    "Roots",
    "ShuttingDownError",
    "Subscription",
    "Watchdog",
]
