"""The gRPC service's job store: jobs and their events in SQLite, in the server's data directory.

Each job is one row holding its latest ``rungs.v1.Job`` snapshot and the request that created it;
each event is one row keyed by (job, sequence). An event and the snapshot it produces are written
in one transaction, so after a restart Status, Watch history and ListJobs answer exactly as they
did before it. WAL mode lets a commit cost a write to the log, not an fsync per event, and still
survive the process being killed (only a power cut can lose the last commits).

One connection, shared by every thread behind a lock: statements are short single-row writes
and indexed reads, so the lock is held for microseconds and the simplicity is worth it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engine.rpc import transcoder_pb2 as pb

#: Bumped when the tables change; a store written by a newer Rungs is refused, not misread.
SCHEMA_VERSION = 1
#: Events read per query while streaming a long history, so the lock is never held long.
EVENT_PAGE = 500
#: The largest number SQLite's INTEGER holds: sequences and paging keys are below it, and a
#: larger one asked for (a uint64 ``after_sequence``) is taken as this.
MAX_SEQUENCE = 2**63 - 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    -- Submission order: ListJobs pages by it, newest first.
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    -- NULL when the request had none (so UNIQUE allows any number of those).
    request_id TEXT UNIQUE,
    -- The TranscodeRequest, serialised deterministically, to tell a retry from a reuse.
    request BLOB NOT NULL,
    -- Duplicated from the snapshot so ListJobs can filter on it.
    state INTEGER NOT NULL,
    -- Resolved paths on this machine (never sent to clients): recovery cleans the output.
    source_path TEXT NOT NULL,
    output_path TEXT NOT NULL,
    -- The latest rungs.v1.Job.
    job BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    sequence INTEGER NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (job_id, sequence)
) WITHOUT ROWID;
"""

TERMINAL_STATES = (pb.COMPLETE, pb.FAILED, pb.CANCELLED)


class StoreError(RuntimeError):
    """The job database cannot be used: a newer Rungs wrote it, or it is not a database."""


@dataclass(frozen=True)
class StoredJob:
    """A job row: the snapshot clients see and what only the server needs."""

    job: pb.Job
    #: The serialised TranscodeRequest that created the job.
    request: bytes
    source_path: Path
    output_path: Path


class JobStore:
    """Jobs and events in ``path`` (created when missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        # check_same_thread=False: the lock, not the creating thread, guards the connection.
        # isolation_level=None: transactions are opened explicitly, see _transaction.
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:  # a directory, or a folder it cannot create files in
            raise StoreError(f"cannot open {path} as Rungs' job database: {exc}") from exc
        try:
            self._open(path)
        except sqlite3.DatabaseError as exc:  # not a database, or a damaged one
            self._db.close()
            raise StoreError(f"{path} cannot be read as Rungs' job database ({exc}): move it "
                             f"away, or choose another data directory") from exc
        except BaseException:
            self._db.close()
            raise

    def _open(self, path: Path) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path} has schema version {version}; this Rungs reads up to {SCHEMA_VERSION}")
        # Every statement is idempotent (IF NOT EXISTS), so a crash half way is finished next time.
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and one write transaction; roll back if the block raises."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- writes -------------------------------------------------------------------------------

    def insert_job(self, job: pb.Job, request: bytes, source_path: Path,
                   output_path: Path) -> None:
        """Add a new job (its events come through :meth:`record_event`)."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO jobs (id, request_id, request, state, source_path, output_path, job)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.request_id or None, request, job.state, str(source_path),
                 str(output_path), job.SerializeToString()))

    def record_event(self, event: pb.JobEvent, job: pb.Job) -> None:
        """Append ``event`` and replace the job's snapshot with ``job``, atomically."""
        with self._transaction() as db:
            db.execute("INSERT INTO events (job_id, sequence, event) VALUES (?, ?, ?)",
                       (event.job_id, event.sequence, event.SerializeToString()))
            db.execute("UPDATE jobs SET state = ?, job = ? WHERE id = ?",
                       (job.state, job.SerializeToString(), job.id))

    # -- reads --------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> pb.Job | None:
        with self._lock:
            row = self._db.execute("SELECT job FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else pb.Job.FromString(row[0])

    def find_request(self, request_id: str) -> StoredJob | None:
        """The job created by the request with ``request_id``, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT job, request, source_path, output_path FROM jobs WHERE request_id = ?",
                (request_id,)).fetchone()
        return None if row is None else _stored(row)

    def unfinished(self) -> list[StoredJob]:
        """Jobs not in a terminal state, oldest first (after a crash: the interrupted ones)."""
        marks = ",".join("?" * len(TERMINAL_STATES))
        with self._lock:
            rows = self._db.execute(
                "SELECT job, request, source_path, output_path FROM jobs"
                f" WHERE state NOT IN ({marks}) ORDER BY seq", TERMINAL_STATES).fetchall()
        return [_stored(row) for row in rows]

    def events(self, job_id: str, after: int = 0, upto: int | None = None) -> Iterator[pb.JobEvent]:
        """The job's events with ``after < sequence <= upto``, in order, read page by page."""
        last = min(after, MAX_SEQUENCE)
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT sequence, event FROM events WHERE job_id = ? AND sequence > ?"
                    " AND sequence <= ? ORDER BY sequence LIMIT ?",
                    (job_id, last, upto if upto is not None else MAX_SEQUENCE,
                     EVENT_PAGE)).fetchall()
            for sequence, blob in rows:
                last = sequence
                yield pb.JobEvent.FromString(blob)
            if len(rows) < EVENT_PAGE:
                return

    def list_jobs(self, states: Sequence[int], before: int | None,
                  limit: int) -> list[tuple[int, pb.Job]]:
        """Up to ``limit`` jobs newest first, with their ``seq`` (the paging key).

        ``before``: only jobs older than this ``seq``; ``states``: only these (empty: all).
        """
        where, params = ["seq < ?"], [before if before is not None else MAX_SEQUENCE]
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            params += states
        with self._lock:
            rows = self._db.execute(
                f"SELECT seq, job FROM jobs WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?",
                (*params, limit)).fetchall()
        return [(seq, pb.Job.FromString(blob)) for seq, blob in rows]


def _stored(row: tuple[bytes, bytes, str, str]) -> StoredJob:
    job, request, source_path, output_path = row
    return StoredJob(pb.Job.FromString(job), request, Path(source_path), Path(output_path))
