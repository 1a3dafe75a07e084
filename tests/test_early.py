"""Early playback: the first rung is listed, and the job READY, once its first segment closes."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import m3u8
import pytest

import engine.publish
from engine import Job, JobState, LadderOptions
from engine.playlist import START_OFFSET
from tests import hostile, media
from tests.conftest import LADDER, SEGMENT_SECONDS, assert_iframe_playlists, options, run_job
from tests.polling import Poller


@dataclass
class View:
    """Every playlist the master lists, read at one instant, and what was wrong then."""

    variants: list[str]
    types: dict[str, str | None]
    ended: dict[str, bool]
    starts_at_zero: dict[str, bool]
    segments: dict[str, int]
    problems: list[str]
    #: Each variant's CLOSED-CAPTIONS attribute (None: not written).
    closed_captions: list[str | None]
    #: The I-frame playlists listed, with their BANDWIDTH.
    iframes: dict[str, int]


def read_view(out: Path) -> View | None:
    try:
        master = m3u8.loads((out / "master.m3u8").read_text())
    except FileNotFoundError:
        return None
    view = View([p.uri for p in master.playlists], {}, {}, {}, {}, [],
                [p.stream_info.closed_captions for p in master.playlists],
                {p.uri: p.iframe_stream_info.bandwidth for p in master.iframe_playlists})
    for uri in [*view.variants, *(m.uri for m in master.media if m.uri), *view.iframes]:
        text = (out / uri).read_text()
        playlist = m3u8.loads(text)
        view.types[uri] = playlist.playlist_type
        view.ended[uri] = playlist.is_endlist
        view.starts_at_zero[uri] = f"#EXT-X-START:TIME-OFFSET={START_OFFSET}" in text
        view.segments[uri] = len(playlist.segments)
        folder = (out / uri).parent
        if not playlist.segments:
            view.problems.append(f"{uri} lists no segment")
        needed = [s.uri for s in playlist.segments] + [m.uri for m in playlist.segment_map]
        view.problems += [f"{uri}: {n} missing" for n in needed if not (folder / n).is_file()]
    return view


class Watcher(Poller):
    """Reads the output from a thread, as a player polling it would, and keeps each view."""

    interval_s = 0.003

    def __init__(self, out: Path) -> None:
        self.out = out
        self.views: list[View] = []

    def poll(self) -> None:
        view = read_view(self.out)
        if view is not None and (not self.views or view != self.views[-1]):
            self.views.append(view)


#: 3 s of sound that starts 5 s in.
LATE = (48000, 2, 3.0, 5 * 48000)


@pytest.fixture(scope="module")
def early_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return media.make_video(tmp_path_factory.mktemp("early") / "in.mp4", width=640, height=360,
                            seconds=7.0)


def test_first_rung_is_listed_at_its_first_segment(early_source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with Watcher(out) as watcher:
        run = run_job(early_source, out, options(early_playback=True))
    assert run.state == JobState.COMPLETE, run.job.error
    types = [e.type for e in run.events if e.type != "progress"]
    # READY comes with the first segment, before the first rung is complete.
    assert types.index("first_segment") < types.index("rung_published")
    first = next(e for e in run.events if e.type == "first_segment")
    ready = next(e for e in run.events if e.type == "ready")
    assert ready.state == JobState.READY and ready.data["early_playback"] is True
    assert first.data["ready"] is True and first.data["rung"] == "180p"
    published = next(e for e in run.events if e.type == "rung_published")
    assert run.job.time_to_ready_s == pytest.approx(first.elapsed_s, abs=0.05)
    assert first.elapsed_s <= published.elapsed_s

    assert all(view.problems == [] for view in watcher.views), [
        v.problems for v in watcher.views if v.problems]
    lead = "180p/index.m3u8"
    growing = [v for v in watcher.views if v.variants == [lead] and not v.ended[lead]]
    assert growing, "the first rung was never seen listed while it encoded"
    for view in growing:
        assert view.types[lead] == "event" and view.starts_at_zero[lead]
        assert view.types["audio/index.m3u8"] == "event"
        # Whether the source has captions is known only once a rung is complete: never NONE
        # (which makes hls.js ignore captions) before.
        assert view.closed_captions == [None]
    counts = [v.segments[lead] for v in growing]
    assert counts == sorted(counts) and counts[0] >= 1  # segments only ever appended
    # A player that starts now reads this master only: it scrubs with the rung's I-frames,
    # which grow with the rung (read a moment after its media playlist, a segment apart).
    trick = "180p/iframes.m3u8"
    for view in growing:
        assert list(view.iframes) == [trick] and view.types[trick] == "event"
        assert view.segments[trick] >= 1 and abs(view.segments[trick] - view.segments[lead]) <= 1
    assert [v.segments[trick] for v in growing] == sorted(v.segments[trick] for v in growing)
    assert any(not v.ended[trick] for v in growing)
    # An EVENT playlist is only appended to and ended, never turned VOD (it was once a second
    # rung was listed); the rungs listed after it are complete EVENT playlists too.
    for view in watcher.views:
        assert set(view.types.values()) <= {"event"}, view.types
        if len(view.variants) > 1:
            assert all(view.ended.values())
    final = read_view(out)
    assert final is not None
    assert final.variants == [f"{h}p/index.m3u8" for h in LADDER]
    assert set(final.types.values()) == {"event"} and all(final.ended.values())
    assert all(final.starts_at_zero.values())
    assert final.closed_captions == ["NONE"] * len(LADDER)  # the source has no captions
    assert_iframe_playlists(out)


@pytest.mark.parametrize("segment_type", ["fmp4", "mpegts"])
def test_iframe_bandwidth_listed_early_holds_the_iframes_to_come(tmp_path: Path,
                                                                 segment_type: str) -> None:
    """Declared before the I-frames to come are known, it holds every one of them (but the last
    segment's, which can be as short as a frame): here the first segment's is black, a fraction
    of the pictures' after it."""
    source = media.make_video(tmp_path / "black_first.mp4", width=640, height=360,
                              seconds=3 * SEGMENT_SECONDS + 1, black_seconds=SEGMENT_SECONDS)
    out = tmp_path / "out"
    with Watcher(out) as watcher:
        run = run_job(source, out, options(early_playback=True, segment_type=segment_type,
                                           ladder=LadderOptions(heights=(180,))))
    assert run.state == JobState.COMPLETE, run.job.error
    trick = "180p/iframes.m3u8"
    early = next(v for v in watcher.views if not v.ended["180p/index.m3u8"])
    segments = m3u8.loads((out / trick).read_text()).segments
    rates = [8 * int(s.byterange.split("@")[0]) / s.duration for s in segments]
    assert len(rates) >= 3 and rates[0] < max(rates[1:-1]) / 4, rates
    assert max(rates[:-1]) <= early.iframes[trick]
    assert_iframe_playlists(out)  # the master written then declares the measured peak


def test_an_iframe_not_found_after_the_early_listing_ends_the_iframe_playlist_there(
        early_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The I-frames a player may have read stay as listed, ended; the masters written after
    list none for the rung (its I-frame playlist is not complete)."""
    real = engine.publish.locate
    monkeypatch.setattr(engine.publish, "locate",
                        lambda path: None if path.name == "seg_00001.m4s" else real(path))
    out = tmp_path / "out"
    with Watcher(out) as watcher:
        run = run_job(early_source, out, options(early_playback=True,
                                                 ladder=LadderOptions(heights=(180,))))
    assert run.state == JobState.COMPLETE, run.job.error
    assert any("180p/iframes.m3u8" in v.iframes for v in watcher.views)
    assert m3u8.loads((out / "master.m3u8").read_text()).iframe_playlists == []
    trick = m3u8.loads((out / "180p" / "iframes.m3u8").read_text())
    assert trick.is_endlist and [s.uri for s in trick.segments] == ["seg_00000.m4s"]


def test_a_single_rung_ends_as_a_complete_event_playlist(early_source: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = run_job(early_source, out, options(early_playback=True,
                                             ladder=LadderOptions(heights=(180,))))
    assert run.state == JobState.COMPLETE, run.job.error
    view = read_view(out)
    assert view is not None and view.problems == []
    assert view.types["180p/index.m3u8"] == "event" and view.ended["180p/index.m3u8"]
    assert view.types["audio/index.m3u8"] == "event" and view.ended["audio/index.m3u8"]


@pytest.mark.parametrize("tracks", [[LATE], [(48000, 2, 8.0, 0), LATE]],
                         ids=["late", "second late"])
def test_a_rung_is_not_listed_before_its_audio_has_a_segment(
        tmp_path: Path, tracks: list[tuple[int, int, float, int]]) -> None:
    # Audio that starts 5 s in (a recording whose sound came on late) closes its first
    # segment long after the video's first: listed then, the master named an audio playlist
    # with nothing in it, which a cancel at that moment left for good. So does a second track.
    source = hostile.write_streams(tmp_path / "late_audio.mkv", video_pts=list(range(240)),
                                   time_base=Fraction(1, 30), audio=tracks)
    out = tmp_path / "out"
    with Watcher(out) as watcher:
        run = run_job(source, out, options(early_playback=True,
                                           ladder=LadderOptions(heights=(180,))))
    assert run.state == JobState.COMPLETE, run.job.error
    views = [*watcher.views, read_view(out)]
    assert all(view is not None and view.problems == [] for view in views), [
        v.problems for v in views if v is not None and v.problems]
    assert any(e.type == "ready" for e in run.events)


def test_sound_that_starts_late_is_led_in_before_the_decoder_reaches_it(tmp_path: Path) -> None:
    """An MP4 whose sound starts 9 s in (its index says so before a packet is read): the
    silence up to it is encoded at once, so the rung is listed at its first segment. The
    audio's first segment used to close only once the decoder reached the sound, with the
    rung 5 segments on here (1080p with its sound 20 s in: READY at 5.2 s, against 1.5 s)."""
    source = media.make_video(tmp_path / "late.mp4", width=320, height=180, seconds=12.0,
                              audio_delay=9.0)
    out = tmp_path / "out"
    with Watcher(out) as watcher:
        run = run_job(source, out, options(early_playback=True,
                                           ladder=LadderOptions(heights=(180,))))
    assert run.state == JobState.COMPLETE, run.job.error
    lead = "180p/index.m3u8"
    listed = [view for view in watcher.views if view.variants == [lead]]
    assert listed and listed[0].problems == []
    assert listed[0].segments[lead] <= 2 < 9 // SEGMENT_SECONDS, listed[0].segments
    assert run.job.notes == []
    hostile.sound_begins_at(9.0)(hostile.read_ladder(out))


@pytest.mark.parametrize("tracks", [1, 2], ids=["one audio track", "two"])
def test_cancel_after_the_first_segment_leaves_a_playable_ended_rung(
        early_source: Path, tmp_path: Path, tracks: int) -> None:
    """The rung listed early and every audio track are ended where they are, with what their
    playlists list and nothing else; unlisted rungs are gone."""
    source = early_source if tracks == 1 else hostile.write_streams(
        tmp_path / "two_tracks.mkv", video_pts=list(range(210)), time_base=Fraction(1, 30),
        audio=[(48000, 2, 7.0, 0), (44100, 1, 7.0, 0)])
    audio = ["audio", "audio2"][:tracks]
    out = tmp_path / "out"
    listed = threading.Event()
    job = Job(source, out, options(early_playback=True),
              on_event=lambda event: listed.set() if event.type == "first_segment" else None)
    job.start()
    assert listed.wait(60)
    job.cancel()
    assert job.wait(10)
    assert job.state == JobState.CANCELLED
    view = read_view(out)
    assert view is not None and view.problems == []
    assert view.variants == ["180p/index.m3u8"]
    assert all(view.ended[f"{folder}/index.m3u8"] for folder in ["180p", *audio])
    for folder in ["180p", *audio]:
        playlist = m3u8.loads((out / folder / "index.m3u8").read_text())
        needed = {"index.m3u8", *(s.uri for s in playlist.segments),
                  *(m.uri for m in playlist.segment_map)}
        if folder == "180p":  # its I-frames, ended where its segments end
            needed.add("iframes.m3u8")
            assert view.ended["180p/iframes.m3u8"]
            assert [s.uri for s in m3u8.loads((out / folder / "iframes.m3u8").read_text())
                    .segments] == [s.uri for s in playlist.segments]
        assert {p.name for p in (out / folder).iterdir()} == needed, folder
    assert sorted(p.name for p in out.iterdir()) == ["180p", *audio, "master.m3u8",
                                                     "poster.jpg"]
