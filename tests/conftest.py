"""Shared fixtures: small synthetic sources, and one 3-rung job that many tests inspect.

Everything is generated at run time with :mod:`tests.media` and kept small (640x360, a few
seconds, 2 s segments, a 180/270/360 ladder) so the whole suite stays fast on two cores.
"""

from __future__ import annotations

import io
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


def _decoded(data: bytes, mpegts: bool) -> list[tuple[int, bool]]:
    """(pts, keyframe) of every frame ``data`` (a segment, with its init segment for fMP4)
    decodes to."""
    with av.open(io.BytesIO(data), format="mpegts" if mpegts else None) as container:
        return [(f.pts, f.key_frame) for f in container.decode(container.streams.video[0])]


def assert_iframe_playlists(out: Path) -> None:
    """The master lists an I-frame playlist for each rung (Apple's players scrub with them):
    one byte range per segment, which alone (after the init segment its segment needs)
    decodes to one picture, the keyframe that opens the segment; the playlist's discontinuities
    are the media playlist's; BANDWIDTH the peak of those ranges."""
    master = m3u8.loads((out / "master.m3u8").read_text())
    assert [p.uri for p in master.iframe_playlists] == [
        p.uri.replace("index.m3u8", "iframes.m3u8") for p in master.playlists]
    for variant, trick in zip(master.playlists, master.iframe_playlists, strict=True):
        info = trick.iframe_stream_info
        assert info.resolution == variant.stream_info.resolution
        assert info.codecs == variant.stream_info.codecs.split(",")[0]
        folder = (out / trick.uri).parent
        playlist = m3u8.loads((out / trick.uri).read_text())
        media_playlist = m3u8.loads((out / variant.uri).read_text())
        assert playlist.is_i_frames_only and playlist.is_endlist
        assert [(s.uri, s.duration, s.discontinuity) for s in playlist.segments] == [
            (s.uri, s.duration, s.discontinuity) for s in media_playlist.segments]
        rates = []
        for segment in playlist.segments:
            length, offset = map(int, segment.byterange.split("@"))
            whole = (folder / segment.uri).read_bytes()
            init = (folder / segment.init_section.uri).read_bytes() if segment.init_section \
                else b""
            rates.append(8 * length / segment.duration)
            alone = _decoded(init + whole[offset:offset + length], not init)
            assert len(alone) == 1 and alone[0][1], (trick.uri, segment.uri)
            assert alone[0] == _decoded(init + whole, not init)[0], (trick.uri, segment.uri)
        assert max(rates) <= info.bandwidth <= 1.001 * max(rates) + 1, trick.uri
