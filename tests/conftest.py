"""Shared fixtures: small synthetic sources, and one 3-rung job that many tests inspect.

Everything is generated at run time with :mod:`tests.media` and kept small (640x360, a few
seconds, 2 s segments, a 180/270/360 ladder) so the whole suite stays fast on two cores.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import m3u8
import pytest

from engine import Job, JobEvent, JobState, LadderOptions, RungSettings, TranscodeOptions
from tests import media
from tests.polling import Poller

#: The ladder most tests use, lowest first.
LADDER = (180, 270, 360)
SEGMENT_SECONDS = 2.0
#: Length of the main test source (three segments: 2 s, 2 s, 1 s).
SOURCE_SECONDS = 5.0


#: The top test rung uses a slower x264 preset, as the default ladder's higher rungs do, so
#: rungs made with different encoder settings (B-frame decisions, lookahead) are compared.
LADDER_SETTINGS = {LADDER[-1]: RungSettings(preset="fast")}


def options(**overrides: Any) -> TranscodeOptions:
    """Small, fast options: the test ladder and 2 s segments unless overridden."""
    # Early playback off: these tests pin the mode where a rung is listed only once complete
    # (tests/test_early.py covers early playback).
    values: dict[str, Any] = {"ladder": LadderOptions(heights=LADDER, settings=LADDER_SETTINGS),
                              "segment_seconds": SEGMENT_SECONDS, "early_playback": False}
    values.update(overrides)
    return TranscodeOptions(**values)


@dataclass
class Snapshot:
    """What master.m3u8 said at one instant while the job ran, checked at that instant."""

    text: str
    #: URIs of the variants listed, in order.
    uris: list[str]
    #: Everything wrong with the published state at that instant (empty when all is well).
    problems: list[str]


@dataclass
class JobRun:
    """A finished job and everything observed while it ran."""

    job: Job
    source: Path
    out: Path
    state: JobState
    events: list[JobEvent]
    #: Files (not in-memory buffers) ``av.open`` was asked to read while the job ran.
    opened_for_reading: list[str] = field(default_factory=list)
    #: Master snapshots taken in the ``rung_published`` callback (one per publication).
    published_snapshots: list[Snapshot] = field(default_factory=list)
    #: Master snapshots taken by a thread polling the output while the job ran.
    polled_snapshots: list[Snapshot] = field(default_factory=list)

    def of_type(self, event_type: str) -> list[JobEvent]:
        return [e for e in self.events if e.type == event_type]


def check_published(out: Path) -> Snapshot | None:
    """Read master.m3u8 now and check that everything it lists is complete on disk.

    Returns ``None`` when there is no master yet.
    """
    master_path = out / "master.m3u8"
    try:
        text = master_path.read_text()
    except FileNotFoundError:
        return None
    problems: list[str] = []
    master = m3u8.loads(text)
    if not master.is_variant:
        problems.append("master is not a variant playlist")
    uris = [p.uri for p in master.playlists]
    media_uris = [m.uri for m in master.media if m.uri]
    for uri in [*media_uris, *uris]:
        playlist_path = out / uri
        try:
            playlist = m3u8.loads(playlist_path.read_text())
        except FileNotFoundError:  # also when a failed job takes it down after the master read
            problems.append(f"{uri} is listed but missing")
            continue
        if not playlist.is_endlist:
            problems.append(f"{uri} has no EXT-X-ENDLIST")
        if not playlist.segments:
            problems.append(f"{uri} lists no segments")
        folder = playlist_path.parent
        files = [s.uri for s in playlist.segments]
        if playlist.segment_map:
            files += [m.uri for m in playlist.segment_map]
        problems += [f"{uri}: {name} missing" for name in files if not (folder / name).is_file()]
    return Snapshot(text, uris, problems)


class _MasterPoller(Poller):
    """Polls the output's master playlist from a thread and checks every new version."""

    interval_s = 0.002

    def __init__(self, out: Path) -> None:
        self.out = out
        self.snapshots: list[Snapshot] = []

    def poll(self) -> None:
        snapshot = check_published(self.out)
        if snapshot is not None and (not self.snapshots
                                     or snapshot.text != self.snapshots[-1].text):
            self.snapshots.append(snapshot)


def run_job(source: Path, out: Path, transcode: TranscodeOptions | None = None,
            on_event: Callable[[JobEvent], None] | None = None) -> JobRun:
    """Run a job to the end in this thread, recording events and master snapshots."""
    events: list[JobEvent] = []
    published: list[Snapshot] = []

    def listener(event: JobEvent) -> None:
        events.append(event)
        if event.type == "rung_published":
            # The job swallows listener errors, so a missing master shows as a missing snapshot.
            snapshot = check_published(out)
            if snapshot is not None:
                published.append(snapshot)
        if on_event is not None:
            on_event(event)

    job = Job(source, out, transcode or options(), on_event=listener)
    with _MasterPoller(out) as poller:
        state = job.run()
    return JobRun(job=job, source=source, out=out, state=state, events=events,
                  published_snapshots=published, polled_snapshots=poller.snapshots)


def count_frames(path: Path) -> int:
    """Video frames in ``path``, counted by decoding it with PyAV (independently of Rungs)."""
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


# -- session fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def source_video(media_dir: Path) -> Path:
    """640x360, 30 fps, 5 s, with a stereo tone."""
    return media.make_video(media_dir / "source.mp4", seconds=SOURCE_SECONDS)


@pytest.fixture(scope="session")
def source_frames(source_video: Path) -> int:
    return count_frames(source_video)


@pytest.fixture(scope="session")
def shared_run(source_video: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobRun]:
    """The main 3-rung job, run once, with every read ``av.open`` recorded."""
    out = tmp_path_factory.mktemp("shared") / "out"
    opened: list[str] = []
    real_open = av.open

    def spy_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        # Files only: the hardware-decode probe opens a clip it generates in memory.
        if "w" not in mode and isinstance(file, str | os.PathLike):
            opened.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(av, "open", spy_open)
        started = time.monotonic()
        run = run_job(source_video, out)
        run.opened_for_reading = opened
    assert run.state == JobState.COMPLETE, (run.job.error, time.monotonic() - started)
    yield run
