"""The ``rungs`` commands that talk to a ``rungs serve`` over gRPC.

``submit SOURCE OUT [--watch]``, ``status JOB``, ``watch JOB``, ``cancel JOB`` and ``jobs``, each
with ``--server HOST:PORT`` (default ``$RUNGS_SERVER`` or 127.0.0.1:50051) and ``--json`` (one
JSON object per line on stdout: a job, or an event shaped like ``rungs transcode --json``'s).

Exit codes are those of ``rungs transcode``: 0 done (for a watched job: COMPLETE), 2 for a
request the server refused as wrong (bad source or options, path outside a root, unknown job),
1 for any other failure (server unreachable, job FAILED), 130 for a CANCELLED job or Ctrl-C.
Ctrl-C only stops watching: the job goes on on the server (``rungs cancel JOB`` stops it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable
from datetime import UTC
from typing import Any, TextIO

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from engine.cli import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    USAGE_ERRORS,
    Parser,
    host_port,
)
from engine.errors import error_class
from engine.hwaccel import ENCODER_CHOICES
from engine.ladder import parse_heights
from engine.rpc import transcoder_pb2 as pb
from engine.rpc import transcoder_pb2_grpc
from engine.segment import SEGMENT_TYPES

DEFAULT_SERVER = "127.0.0.1:50051"
#: Seconds a unary call may take (Cancel waits up to 5 s for the job to stop).
RPC_TIMEOUT_S = 30.0
#: Statuses that mean the request itself was wrong: exit 2, like a bad ``rungs transcode``.
_USAGE_STATUSES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                   grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS)
_STATE_NAMES = [pb.JobState.Name(value) for value in pb.JobState.values() if value]
_SEGMENT_TYPE_VALUES = {"fmp4": pb.FMP4, "mpegts": pb.MPEGTS}


def add_client_commands(commands: argparse._SubParsersAction[Parser]) -> None:
    """Register submit, status, watch, cancel and jobs on the CLI's subcommands."""
    common = Parser(add_help=False)
    common.add_argument("--server", type=host_port, metavar="HOST:PORT",
                        default=os.environ.get("RUNGS_SERVER", DEFAULT_SERVER),
                        help="the rungs server (default $RUNGS_SERVER or %(default)s)")
    common.add_argument("--json", action="store_true",
                        help="one JSON object per line on stdout")

    submit = commands.add_parser(
        "submit", parents=[common], help="start a transcode on a rungs server")
    submit.add_argument("source", help="the video, relative to the server's --source-root")
    submit.add_argument("output", help="output directory, relative to the server's --output-root")
    submit.add_argument("--ladder", help="short sides, e.g. 720,1080 (default: the server's)")
    submit.add_argument("--segment-seconds", type=float, default=0.0,
                        help="segment length (default: the server's, 4)")
    submit.add_argument("--segment-type", choices=SEGMENT_TYPES)
    submit.add_argument("--encoder", choices=ENCODER_CHOICES)
    submit.add_argument("--overwrite", action="store_true",
                        help="replace the contents of a non-empty output directory")
    submit.add_argument("--request-id", default="",
                        help="idempotency key: resubmitting with it returns the same job")
    submit.add_argument("--watch", action="store_true",
                        help="then follow the job's events until it ends")
    submit.set_defaults(run=submit_command)

    status = commands.add_parser("status", parents=[common], help="show a job")
    status.add_argument("job_id", metavar="JOB")
    status.set_defaults(run=status_command)

    watch = commands.add_parser("watch", parents=[common],
                                help="follow a job's events until it ends")
    watch.add_argument("job_id", metavar="JOB")
    watch.add_argument("--after", type=int, default=0, metavar="SEQUENCE",
                       help="only events after this sequence number (default: all)")
    watch.set_defaults(run=watch_command)

    cancel = commands.add_parser("cancel", parents=[common], help="cancel a job")
    cancel.add_argument("job_id", metavar="JOB")
    cancel.set_defaults(run=cancel_command)

    jobs = commands.add_parser("jobs", parents=[common], help="list jobs, newest first")
    jobs.add_argument("--state", action="append", choices=_STATE_NAMES, default=[],
                      help="only jobs in this state (repeatable)")
    jobs.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    jobs.set_defaults(run=jobs_command)


# -- commands ---------------------------------------------------------------------------------


def submit_command(args: argparse.Namespace) -> int:
    options = pb.TranscodeOptions(segment_seconds=args.segment_seconds,
                                  encoder=args.encoder or "", overwrite=args.overwrite)
    if args.ladder:
        options.ladder.extend(parse_heights(args.ladder))
    if args.segment_type:
        options.segment_type = _SEGMENT_TYPE_VALUES[args.segment_type]
    request = pb.TranscodeRequest(source=args.source, output=args.output, options=options,
                                  request_id=args.request_id)

    def call(stub: Any) -> int:
        job: pb.Job = stub.Transcode(request, timeout=RPC_TIMEOUT_S)
        if args.json:
            _print_json(job_json(job))
        else:
            print(f"job {job.id} {pb.JobState.Name(job.state)}: {job.source} -> {job.output}")
        if not args.watch:
            return EXIT_OK
        return _follow(stub, job.id, 0, args.json)

    return _with_stub(args, call)


def status_command(args: argparse.Namespace) -> int:
    def call(stub: Any) -> int:
        job: pb.Job = stub.Status(pb.StatusRequest(job_id=args.job_id), timeout=RPC_TIMEOUT_S)
        _show_job(job, args.json)
        return EXIT_OK

    return _with_stub(args, call)


def watch_command(args: argparse.Namespace) -> int:
    return _with_stub(args, lambda stub: _follow(stub, args.job_id, args.after, args.json))


def cancel_command(args: argparse.Namespace) -> int:
    def call(stub: Any) -> int:
        job: pb.Job = stub.Cancel(pb.CancelRequest(job_id=args.job_id), timeout=RPC_TIMEOUT_S)
        _show_job(job, args.json)
        return EXIT_OK

    return _with_stub(args, call)


def jobs_command(args: argparse.Namespace) -> int:
    def call(stub: Any) -> int:
        token, shown = "", 0
        if not args.json:
            print(f"{'ID':<16}  {'STATE':<9}  {'CREATED':<19}  SOURCE -> OUTPUT")
        while shown < args.limit:
            page: pb.ListJobsResponse = stub.ListJobs(pb.ListJobsRequest(
                page_size=min(args.limit - shown, 1000), page_token=token, states=args.state),
                timeout=RPC_TIMEOUT_S)
            for job in page.jobs:
                if args.json:
                    _print_json(job_json(job))
                else:
                    print(f"{job.id:<16}  {pb.JobState.Name(job.state):<9}  "
                          f"{_local_time(job, 'created_at'):<19}  {job.source} -> {job.output}")
            shown += len(page.jobs)
            token = page.next_page_token
            if not token:
                break
        return EXIT_OK

    return _with_stub(args, call)


# -- shared -----------------------------------------------------------------------------------


def _with_stub(args: argparse.Namespace, call: Callable[[Any], int]) -> int:
    """Run ``call`` with a stub for ``--server``; RPC errors become one line and an exit code."""
    try:
        with grpc.insecure_channel(args.server) as channel:
            return call(transcoder_pb2_grpc.TranscoderStub(channel))
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()  # every RpcError a stub raises is a Call
        if code == grpc.StatusCode.UNAVAILABLE:
            print(f"rungs: cannot reach a rungs server at {args.server}: {details}",
                  file=sys.stderr)
        else:
            print(f"rungs: {details} ({code.name})", file=sys.stderr)
        return EXIT_USAGE if code in _USAGE_STATUSES else EXIT_FAILED
    except KeyboardInterrupt:
        print("rungs: stopped watching; the job goes on on the server", file=sys.stderr)
        return EXIT_CANCELLED


def _follow(stub: Any, job_id: str, after: int, as_json: bool) -> int:
    """Print a job's events until its terminal one; the exit code its end deserves."""
    lines = None if as_json else EventLines(sys.stdout)
    last: pb.JobEvent | None = None
    events: Iterable[pb.JobEvent] = stub.Watch(pb.WatchRequest(job_id=job_id,
                                                               after_sequence=after))
    for event in events:
        last = event
        if lines is None:
            _print_json(event_json(event))
        else:
            lines(event)
    if lines is not None:
        lines.close()
    if last is None:  # nothing after ``after``: the job had already ended
        last_state = stub.Status(pb.StatusRequest(job_id=job_id), timeout=RPC_TIMEOUT_S).state
    else:
        last_state = last.state
        if last.HasField("failed"):
            error = last.failed.error
            print(f"rungs: job {job_id} failed: {error.message} ({error.code})", file=sys.stderr)
            return EXIT_USAGE if issubclass(error_class(error.code), USAGE_ERRORS) else EXIT_FAILED
    if last_state == pb.COMPLETE:
        return EXIT_OK
    return EXIT_CANCELLED if last_state == pb.CANCELLED else EXIT_FAILED


class EventLines:
    """Prints job events: a line per milestone; on a terminal, a progress line that rewrites
    itself."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._tty = out.isatty()
        self._progress_shown = False

    def __call__(self, event: pb.JobEvent) -> None:
        kind = event.WhichOneof("kind")
        if kind == "progress":
            if self._tty:
                rungs = "  ".join(f"{r.rung} {r.frames_done}/{r.frames_total}"
                                  for r in event.progress.rungs)
                self.out.write(f"\r{'':>22}{rungs}\x1b[K")
                self.out.flush()
                self._progress_shown = True
            return
        self.close()
        state = pb.JobState.Name(event.state)
        self.out.write(f"#{event.sequence:<4} {event.elapsed_seconds:7.2f}s  {state:<9}  "
                       f"{_describe(event)}\n")
        self.out.flush()

    def close(self) -> None:
        if self._progress_shown:
            self.out.write("\r\x1b[K")
            self._progress_shown = False


def _describe(event: pb.JobEvent) -> str:
    kind = event.WhichOneof("kind")
    if kind == "running":
        return f"transcoding {event.running.source}"
    if kind == "poster_ready":
        return f"poster {event.poster_ready.poster}"
    if kind == "rung_published":
        p = event.rung_published
        return (f"published {p.rung} {p.width}x{p.height} {p.bandwidth / 1e6:.2f} Mbit/s peak, "
                f"{p.encoder}, {p.encode_fps:.1f} fps")
    if kind == "ready":
        return f"playable: {event.ready.master_playlist}"
    if kind == "complete":
        c = event.complete
        return (f"every rung published; time to ready {c.time_to_ready_seconds:.2f} s, "
                f"total {c.total_seconds:.2f} s, frames {c.frames_decoded}/{c.source_frames}"
                + (f"; subtitles: {', '.join(t.name for t in c.subtitles)}" if c.subtitles else "")
                + (f"; closed captions: {', '.join(c.closed_captions)}"
                   if c.closed_captions else "")
                + "".join(f"; note: {note}" for note in c.notes))
    if kind == "failed":
        return f"{event.failed.error.code}: {event.failed.error.message}"
    if kind == "cancelled":
        return event.cancelled.reason
    return kind or ""


def _show_job(job: pb.Job, as_json: bool) -> None:
    if as_json:
        _print_json(job_json(job))
    else:
        _print_job(job)


def _print_job(job: pb.Job) -> None:
    print(f"job {job.id}  {pb.JobState.Name(job.state)}")
    print(f"  source   {job.source}")
    print(f"  output   {job.output}")
    if job.master_playlist:
        print(f"  master   {job.master_playlist}")
    if job.poster:
        print(f"  poster   {job.poster}")
    created = job.created_at.ToDatetime()
    marks = [f"created {_local_time(job, 'created_at')}"]
    for label, field in (("started", "started_at"), ("ready", "ready_at"),
                         ("ended", "ended_at")):
        if job.HasField(field):
            seconds = (getattr(job, field).ToDatetime() - created).total_seconds()
            marks.append(f"{label} +{seconds:.2f} s")
    print(f"  times    {', '.join(marks)}")
    if job.source_frames or job.frames_decoded:
        print(f"  frames   {job.frames_decoded} decoded / {job.source_frames} in the source")
    for rung in job.rungs:
        size = f"{rung.width}x{rung.height}"
        line = (f"  {rung.name:<7}  {size:<10} {pb.RungState.Name(rung.state):<9} "
                f"{rung.frames_done}/{rung.frames_total} frames  {rung.encoder}")
        if rung.state == pb.PUBLISHED:
            line += f"  {rung.bandwidth / 1e6:.2f} Mbit/s peak"
        print(line)
    for sound in job.audio:
        print(f"  audio    {sound.name} ({sound.language or 'und'}, {sound.channels} channels)  "
              f"{sound.playlist}")
    for track in job.subtitles:
        language = f" ({track.language})" if track.language else ""
        print(f"  subtitle {track.name}{language}  {track.playlist}")
    if job.closed_captions:
        print(f"  captions {', '.join(job.closed_captions)} (CEA-608, in the video)")
    for note in job.notes:
        print(f"  note     {note}")
    if job.HasField("error"):
        print(f"  error    {job.error.code}: {job.error.message}")


def _local_time(job: pb.Job, field: str) -> str:
    """A timestamp field of ``job`` in this machine's time zone ('' when unset)."""
    if not job.HasField(field):
        return ""
    stamp: Timestamp = getattr(job, field)
    return stamp.ToDatetime(tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _message_json(message: Message) -> dict[str, Any]:
    # Every field, defaults included, so scripts always find the same keys.
    return MessageToDict(message, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)


def job_json(job: pb.Job) -> dict[str, Any]:
    """The job as ``rungs status --json`` prints it (and the HTTP status JSON)."""
    return {"type": "job", **_message_json(job)}


def event_json(event: pb.JobEvent) -> dict[str, Any]:
    """The event flattened like ``rungs transcode --json``'s: ``type`` then the fields."""
    body = _message_json(event)
    kind = event.WhichOneof("kind") or ""
    payload = body.pop(kind, {})
    return {"type": kind, **body, **payload}


def _print_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
