"""The ``rungs`` command: a thin client of the engine API."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from engine.doctor import report as doctor_report
from engine.errors import (
    InvalidOptionsError,
    InvalidSourceError,
    OutputExistsError,
    RungsError,
)
from engine.hwaccel import DECODER_CHOICES, ENCODER_CHOICES
from engine.job import Job, JobEvent, JobState, TranscodeOptions
from engine.ladder import DEFAULT_HEIGHTS, LadderOptions, RungSettings, parse_heights
from engine.segment import SEGMENT_TYPES

#: Exit codes, the one place errors become them.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130
#: A job that ends with one of these failed on its input, not on its own: exit 2.
USAGE_ERRORS = (InvalidSourceError, InvalidOptionsError, OutputExistsError)
#: A command whose stdout's reader went away (``rungs watch ID | head``) ends as a tool that
#: SIGPIPE killed does, in silence: 128 + SIGPIPE.
EXIT_READER_GONE = 128 + signal.SIGPIPE


def exit_code(error: RungsError | None, state: JobState) -> int:
    """The process exit code for a job's end: 2 for bad input or options, 1 for a failure."""
    if state == JobState.COMPLETE:
        return EXIT_OK
    if state == JobState.CANCELLED:
        return EXIT_CANCELLED
    if isinstance(error, USAGE_ERRORS):
        return EXIT_USAGE
    return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rungs`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result: int = args.run(args)
    except RungsError as exc:
        print(f"rungs: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # a traceback from status, watch and jobs (transcode goes on)
        _stdout_to_devnull()
        return EXIT_READER_GONE
    return result


class Parser(argparse.ArgumentParser):
    """An argument parser that refuses a bad command line in one line, as every other refusal
    is made (argparse's own printed the whole usage first: 11 lines in all for ``rungs
    transcode --encoder x``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rungs", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    transcode = commands.add_parser(
        "transcode", help="turn a video into an HLS ladder, lowest rung first")
    transcode.add_argument("source", type=Path)
    transcode.add_argument("out_dir", type=Path)
    add_transcode_options(transcode)
    transcode.add_argument("--json", action="store_true",
                           help="one JSON object per event per line on stdout")
    transcode.set_defaults(run=_transcode)
    doctor = commands.add_parser(
        "doctor", help="versions, cores, and which hardware codecs really work here")
    doctor.set_defaults(run=_doctor)
    # The gRPC service (serve) and its client commands; imported here, not at the top, because
    # engine.client imports this module for its exit codes.
    from engine.client import add_client_commands
    from engine.server import add_serve_command

    add_serve_command(commands)
    add_client_commands(commands)
    return parser


def add_transcode_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that starts a transcode."""
    parser.add_argument("--ladder", default=",".join(map(str, DEFAULT_HEIGHTS)),
                        help="short sides of the rungs, e.g. 720,1080 (default %(default)s)")
    parser.add_argument("--rung", action="append", default=[], metavar="H:KEY=VALUE,...",
                        help="per-rung settings, e.g. 1080:preset=veryfast,crf=24,maxrate=6000")
    parser.add_argument("--segment-seconds", type=float, default=4.0)
    parser.add_argument("--segment-type", choices=SEGMENT_TYPES, default="fmp4")
    parser.add_argument("--encoder", choices=ENCODER_CHOICES, default="auto")
    parser.add_argument("--hwaccel", choices=DECODER_CHOICES, default="auto",
                        help="decode on a hardware device (auto: only if it really works here)")
    parser.add_argument("--early-playback", action=argparse.BooleanOptionalAction, default=True,
                        help="list the first rung (and be READY) once its first segment closes")
    parser.add_argument("--rungs-at-once", action="store_true",
                        help="encode the slower rungs at the same time once decoding is done: "
                             "sooner in total, but every rung's encoder in memory at once")
    parser.add_argument("--cache-mb", type=int, default=64,
                        help="memory for frames waiting for slower rungs, used when the whole "
                             "source fits in it (default %(default)s)")
    parser.add_argument("--spill-mb", type=int, default=None,
                        help="disk for frames that do not fit in --cache-mb (default: half the "
                             "free space of the scratch directory)")
    parser.add_argument("--scratch-dir", type=Path, default=None)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the contents of a non-empty output directory")


def options_from_args(args: argparse.Namespace) -> TranscodeOptions:
    """Turn parsed command-line options into :class:`TranscodeOptions`."""
    return TranscodeOptions(
        ladder=LadderOptions(heights=parse_heights(args.ladder),
                             settings=dict(map(_rung_settings, args.rung))),
        segment_seconds=args.segment_seconds,
        segment_type=args.segment_type,
        encoder=args.encoder,
        hwaccel=args.hwaccel,
        early_playback=args.early_playback,
        rungs_at_once=args.rungs_at_once,
        cache_bytes=args.cache_mb << 20,
        spill_bytes=None if args.spill_mb is None else args.spill_mb << 20,
        scratch_dir=args.scratch_dir,
        overwrite=args.overwrite,
    )


def _rung_settings(text: str) -> tuple[int, RungSettings]:
    height, _, pairs = text.partition(":")
    fields: dict[str, Any] = {}
    names = {"preset": ("preset", str), "crf": ("crf", int),
             "maxrate": ("maxrate_kbps", int), "bufsize": ("bufsize_kbps", int),
             "lookahead": ("lookahead", int)}
    try:
        for pair in filter(None, pairs.split(",")):
            key, _, value = pair.partition("=")
            name, kind = names[key.strip()]
            fields[name] = kind(value.strip())
        return parse_heights(height)[0], RungSettings(**fields)
    except (KeyError, ValueError) as exc:
        raise InvalidOptionsError(
            f"--rung {text!r} is not H:KEY=VALUE,... with keys {', '.join(names)}") from exc


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number (0 to 65535), not {value}")
    return value


def host_port(text: str) -> str:
    """An argparse type: a gRPC ``HOST:PORT`` address. gRPC itself takes a port above 65535
    modulo 65536 (``--listen 127.0.0.1:99999`` listened on 34463) and a bare host too."""
    host, colon, port = text.rpartition(":")
    if not host or not colon:
        raise argparse.ArgumentTypeError(f"must be HOST:PORT, not {text!r}")
    port_number(port)
    return text


def _transcode(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    render: EventRenderer = JsonRenderer(sys.stdout) if args.json else TimelineRenderer()
    job = Job(args.source, args.out_dir, options, on_event=render)
    with CancelOnInterrupt(job):
        state = job.run()
    render.close(job)
    if job.error is not None:
        print(f"rungs: {job.error.message}", file=sys.stderr)
    return exit_code(job.error, state)


def _doctor(args: argparse.Namespace) -> int:
    print("\n".join(doctor_report()))
    return EXIT_OK


#: The signals that end a job or a server cleanly: Ctrl-C, SIGTERM, and SIGHUP (its terminal
#: closed, an SSH session dropped), whose default killed the process mid-write: the first
#: rung, listed early, kept an EVENT playlist that never ends, which players poll for ever.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class CancelOnInterrupt:
    """Turn :data:`STOP_SIGNALS` into a clean job cancel while the block runs."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.job.cancel()


class EventRenderer:
    """Shows a job's events to a person or a program."""

    def __call__(self, event: JobEvent) -> None:
        raise NotImplementedError

    def close(self, job: Job) -> None:
        """Called once after the job ends."""


def _stdout_to_devnull() -> None:
    """Send what is still written to stdout nowhere: its reader has gone (``rungs transcode ...
    | head``). The job goes on, since its output is the files, and the interpreter's last
    flush of stdout at exit does not fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


class JsonRenderer(EventRenderer):
    """Exactly one JSON object per event per line, then a ``summary`` event."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._reader_gone = False

    def __call__(self, event: JobEvent) -> None:
        self._write(event.to_dict())

    def close(self, job: Job) -> None:
        self._write({"type": "summary", "state": job.state.value, **job.summary()})

    def _write(self, line: dict[str, Any]) -> None:
        if self._reader_gone:
            return
        try:
            self.out.write(json.dumps(line) + "\n")
            self.out.flush()
        except BrokenPipeError:  # it used to end in a traceback, the job done
            self._reader_gone = True
            _stdout_to_devnull()


class _Console(Console):
    """Rich's console, which on a closed stdout goes quiet instead of exiting: rich raised
    SystemExit from the job's event, which ended the job, deleted its output and exited 1
    without a word."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _stdout_to_devnull()


class TimelineRenderer(EventRenderer):
    """A progress bar per rung and a line per milestone, with seconds since the start."""

    def __init__(self, console: Console | None = None) -> None:
        # Stdout: stderr is kept for the one line that says what went wrong.
        self.console = console or _Console()
        self.progress = Progress(TextColumn("{task.description:>6}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[state]}"),
                                 console=self.console, transient=True)
        self.tasks: dict[str, TaskID] = {}
        self._lines: dict[str, Callable[[JobEvent], str]] = {
            "running": lambda e: f"transcoding {e.data['source']}",
            "poster_ready": lambda e: f"poster     {e.data['path']}",
            "rung_published": lambda e: (
                f"published  {e.data['rung']:>6} {e.data['width']}x{e.data['height']} "
                f"{e.data['bandwidth'] / 1e6:.2f} Mbit/s peak, {e.data['encoder']}, "
                f"{e.data['encode_fps']} fps"),
            "first_segment": lambda e: (
                f"listed     {e.data['rung']:>6} at its first segment (plays while it encodes)"),
            "encoder_fallback": lambda e: (
                f"fallback   {e.data['rung']:>6} {e.data['failed']} failed, "
                f"{e.data['encoder']} from segment {e.data['segment']}"),
            "ready": lambda e: f"READY      playable: {e.data['master']}",
            "complete": lambda e: "COMPLETE   every rung published",
            "cancelled": lambda e: "CANCELLED",
        }

    def __call__(self, event: JobEvent) -> None:
        if event.type == "progress":
            self._progress(event)
            return
        line = self._lines.get(event.type)
        if line is not None:
            self.console.print(f"[{event.elapsed_s:6.2f}s] {line(event)}", highlight=False)

    def _progress(self, event: JobEvent) -> None:
        if not self.tasks:
            self.progress.start()
        for rung in event.data["rungs"]:
            task = self.tasks.get(rung["rung"])
            if task is None:
                task = self.progress.add_task(rung["rung"], total=rung["frames_total"] or None,
                                              state="")
                self.tasks[rung["rung"]] = task
            self.progress.update(task, completed=rung["frames_done"],
                                 total=rung["frames_total"] or None, state=rung["state"].lower())

    def close(self, job: Job) -> None:
        self.progress.stop()
        summary = job.summary()
        if job.state == JobState.COMPLETE:
            self.console.print(
                f"time to ready {summary['time_to_ready_s']} s, total {summary['total_s']} s, "
                f"frames decoded {summary['frames_decoded']} / source {summary['source_frames']}",
                highlight=False)
            if summary["subtitles"]:
                names = (track["name"] for track in summary["subtitles"])
                self.console.print(f"subtitles: {', '.join(names)}",
                                   highlight=False, soft_wrap=True)
            if summary["closed_captions"]:
                self.console.print(f"closed captions: {', '.join(summary['closed_captions'])}",
                                   highlight=False, soft_wrap=True)
            for note in summary["notes"]:
                self.console.print(f"note: {note}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
