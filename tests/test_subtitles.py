"""Text subtitle tracks as WebVTT renditions: the cue text, the segments, and whole jobs on
Matroska and MP4 sources made here (PyAV encodes the subtitles)."""

from __future__ import annotations

import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import m3u8
import pytest

import engine.job
import engine.subtitles
from engine.errors import OutputWriteError
from engine.job import JobState
from engine.ladder import LadderOptions
from engine.publish import Publisher
from engine.subtitles import Cue, cue_text, webvtt_segments
from tests import hostile, media
from tests.conftest import JobRun, options, run_job
from tests.hostile import read_webvtt

SMALL = LadderOptions(heights=(144,))

ENGLISH = media.SubtitleSpec([(0.5, 1.5, "Hello {\\i1}world{\\i0}\\Nline two"),
                              (2.25, 3.5, "a < b && c > d")],
                             codec="ass", language="eng", title="English", default=True)
FRENCH = media.SubtitleSpec([(1.0, 2.0, "Bonjour")], language="fre", forced=True)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return media.make_video(tmp_path_factory.mktemp("subtitles") / "plain.mp4", width=256,
                            height=144, seconds=4)


def test_cue_text_leaves_out_ass_markup_and_escapes_what_webvtt_reserves() -> None:
    assert cue_text(b"0,0,Default,,0,0,0,,{\\an8\\fs20}Hi {\\c&H00FF00&}there\\Nnext\\hline") == \
        "Hi there\nnext\u00a0line"
    # A drawing (vector shapes in ASS) is not text; the words after it are.
    assert cue_text(b"0,0,Default,,0,0,0,,{\\p1}m 0 0 l 10 0 10 10{\\p0}Sign") == "Sign"
    # Commas in the text stay; a line with nothing on it would end the cue.
    assert cue_text(b"0,0,Default,,0,0,0,,one, two\\N\\N  \\Nthree") == "one, two\nthree"
    assert cue_text(b"0,0,Default,,0,0,0,,x --> y & <b>") == "x --&gt; y &amp; &lt;b&gt;"
    assert cue_text(b"0,0,Default,,0,0,0,,caf\xe9") == "caf\ufffd"
    assert len(cue_text(b"0,0,Default,,0,0,0,," + b"w" * 5000)) == engine.subtitles.MAX_CUE_CHARS


def test_cue_text_keeps_italic_bold_and_underline_as_webvtt_tags() -> None:
    """Italics carry meaning in subtitles (a voice off screen, a song): FFmpeg's SubRip and
    timed text decoders give ``<i>`` as ASS's ``{\\i1}``, which became plain text before."""
    def text(ass: str) -> str:
        return cue_text(b"0,0,Default,,0,0,0,," + ass.encode())
    assert text("Hi {\\i1}there{\\i0}, you") == "Hi <i>there</i>, you"
    # Bold as a weight, underline, and a bare switch back to the style's own (plain).
    assert text("{\\b700}x{\\b400}y{\\u1}z{\\u}w") == "<b>x</b>y<u>z</u>w"
    # Tags nest in WebVTT: an outer one closes the inner ones first and reopens them; \r
    # resets them all; a tag still open at the end is closed.
    assert text("{\\i1}a{\\b1}b{\\i0}c{\\r}d{\\u1}e") == "<i>a<b>b</b></i><b>c</b>d<u>e</u>"
    # Tags whose names only begin with i, b, u or r change nothing.
    assert text("{\\i1}a{\\bord2\\blur3\\be1\\iclip(0,0,9,9)\\rnd}b") == "<i>ab</i>"
    # A line that shows nothing is no line, its tags going with the next; only tags: no text.
    assert text("{\\i1}\\NSong{\\i0}\\N") == "<i>Song</i>"
    assert text("{\\i1}{\\i0}") == ""
    # Cut to the cue limit, never inside a tag.
    assert text("{\\i1}w{\\i0}" * 1000).endswith(("</i>", "<i>w"))
    assert len(text("{\\i1}w{\\i0}" * 1000)) <= engine.subtitles.MAX_CUE_CHARS


def test_webvtt_segments_time_cues_from_the_first_picture() -> None:
    cues = (Cue(9.0, 10.5, "before and during"), Cue(11.5, 13.0, "across"),
            Cue(3.0, 4.0, "long before"), Cue(20.0, 21.0, "after the end"),
            Cue(9.0, 10.0004, "ends with the first picture, to the millisecond"))
    vtt = webvtt_segments(cues, origin_s=10.0, segment_s=2.0, timeline_start_s=10.0,
                          end_s=8.0)
    assert [duration for _, duration in vtt.files] == [2.0, 1.0]
    assert vtt.cues_over == 0
    header = "WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:900000,LOCAL:00:00:00.000\n"
    assert vtt.files[0][0] == (header + "\n00:00:00.000 --> 00:00:00.500\nbefore and during\n"
                               "\n00:00:01.500 --> 00:00:03.000\nacross\n")
    # The cue across the boundary is in both segments, with the same times.
    assert vtt.files[1][0] == header + "\n00:00:01.500 --> 00:00:03.000\nacross\n"
    assert webvtt_segments(cues[2:3], 10.0, 2.0, 10.0, 8.0).files == []


def test_webvtt_segments_are_bounded_whatever_the_cues(monkeypatch: pytest.MonkeyPatch) -> None:
    """A header declaring six hours, a cue at its end, and 20,000 cues that each last all of
    it: at most MAX_SEGMENTS files, longer ones, and MAX_TRACK_BYTES of text."""
    six_hours = 6 * 3600.0
    late = webvtt_segments((Cue(six_hours - 10, six_hours - 9, "late"),), 0.0, 4.0, 10.0,
                           six_hours)
    assert len(late.files) == engine.subtitles.MAX_SEGMENTS
    assert [d for _, d in late.files[:-1]] == [pytest.approx(10.796)] * 1999
    assert "late" in late.files[-1][0] and all("late" not in t for t, _ in late.files[:-1])
    monkeypatch.setattr(engine.subtitles, "MAX_TRACK_BYTES", 1 << 20)
    crowd = webvtt_segments(tuple(Cue(i / 1000, six_hours, f"cue {i}") for i in range(20_000)),
                            0.0, 4.0, 10.0, six_hours)
    assert len(crowd.files) == engine.subtitles.MAX_SEGMENTS
    assert sum(len(text) for text, _ in crowd.files) <= (1 << 20) + 2000 * 60
    # The first files take the budget; every cue runs on past them, so all are cut short.
    written = [text.count("-->") for text, _ in crowd.files]
    assert written[0] > 0 and written[-1] == 0 and crowd.cues_over == 20_000


@pytest.mark.parametrize("early", [False, True], ids=["complete", "early"])
@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_text_tracks_become_webvtt_renditions(plain: Path, tmp_path: Path, suffix: str,
                                              early: bool) -> None:
    tracks = [ENGLISH, FRENCH] if suffix == ".mkv" else [
        media.SubtitleSpec(t.cues, "mov_text", t.language, t.title, t.default, t.forced)
        for t in (ENGLISH, FRENCH)]
    source = media.make_subtitled(plain, tmp_path / f"subtitled{suffix}", tracks)
    run = run_job(source, tmp_path / "out", options(ladder=SMALL, early_playback=early))
    assert run.state == JobState.COMPLETE, run.job.error
    assert run.job.notes == []
    # Named by title, or by language where there is none (MP4 keeps no track title).
    subtitles = run.job.summary()["subtitles"]
    assert [(t["name"], t["language"]) for t in subtitles] == [("English", "en"),
                                                               ("Français", "fr")]
    master = m3u8.load(str(run.out / "master.m3u8"))
    texts = [m for m in master.media if m.type == "SUBTITLES"]
    assert [(m.name, m.language, m.default, m.autoselect, m.forced) for m in texts] == [
        ("English", "en", "YES", "YES", "NO"), ("Français", "fr", "NO", "YES", "YES")]
    assert [t["playlist"] for t in subtitles] == [str(run.out / m.uri) for m in texts]
    assert all(p.stream_info.subtitles == "subtitles" for p in master.playlists)
    # Of the type every playlist of the master has: EVENT once a rung was listed early.
    kinds = {m3u8.load(str(run.out / uri)).playlist_type
             for uri in [*(m.uri for m in master.media), *(p.uri for p in master.playlists)]}
    assert kinds == {"event" if early else "vod"}
    assert read_webvtt(run.out / texts[0].uri) == [
        (0.5, 1.5, "Hello <i>world</i>\nline two"), (2.25, 3.5, "a &lt; b &amp;&amp; c &gt; d")]
    assert read_webvtt(run.out / texts[1].uri) == [(1.0, 2.0, "Bonjour")]
    # Every master playlist ever published listed them (players read the first one only).
    snapshots = run.polled_snapshots + run.published_snapshots
    assert snapshots and all("TYPE=SUBTITLES" in s.text for s in snapshots)
    if not early:  # (an early-listed playlist grows: it has no end tag yet)
        assert not [s.problems for s in snapshots if s.problems]


def test_languages_are_listed_as_the_shortest_registered_tags(plain: Path,
                                                               tmp_path: Path) -> None:
    """RFC 8216 wants LANGUAGE as an RFC 5646 tag, and players match it against the viewer's
    languages: ISO 639-2 codes (German's bibliographic ``ger``) are listed by their shortest
    form, a region is kept, and a code no registry has is "und" (the name falls back; Apple
    asks for a LANGUAGE on every rendition, 8.10: it was left out). A track with no title is
    named in its own language (RFC 8216: "Deutsch", not "de"), or by its tag where no name is
    known (``qaa``, reserved for local use)."""
    languages = ["ger", "pt-BR", "xyz", "qaa"]
    source = media.make_subtitled(plain, tmp_path / "languages.mkv", [
        media.SubtitleSpec([(0.5, 1.0, f"Track {n}")], language=tag)
        for n, tag in enumerate(languages)])
    run = run_job(source, tmp_path / "out", options(ladder=SMALL))
    assert run.state == JobState.COMPLETE, run.job.error
    master = m3u8.load(str(run.out / "master.m3u8"))
    assert [(m.name, m.language) for m in master.media if m.type == "SUBTITLES"] == [
        ("Deutsch", "de"), ("Português (Brasil)", "pt-BR"), ("Subtitles 3", "und"), ("qaa", "qaa")]


def test_cues_are_timed_from_the_first_picture(plain: Path, tmp_path: Path) -> None:
    """The picture starts 3 s into the file's clock: a cue at 3.5 s shows 0.5 s in."""
    source = media.make_subtitled(plain, tmp_path / "late_picture.mkv", [media.SubtitleSpec(
        [(2.0, 3.25, "Cut to the picture"), (3.5, 4.0, "Half a second in")])], shift_s=3.0)
    run = run_job(source, tmp_path / "out", options(ladder=SMALL))
    assert run.state == JobState.COMPLETE, run.job.error
    assert read_webvtt(run.out / "subtitles1" / "index.m3u8") == [
        (0.0, 0.25, "Cut to the picture"), (0.5, 1.0, "Half a second in")]


def test_cues_before_and_after_a_late_first_picture_are_timed_from_the_sound(
        tmp_path: Path) -> None:
    """Sound from 0 s and a picture from 1 s to 3 s: the picture is shown from 0 s, where the
    sound starts (engine.decode.sound_lead), and so are the cues timed, the last one too,
    which ends past the video's own 2 s."""
    late = hostile.write_streams(tmp_path / "late_picture.mp4", time_base=Fraction(1, 30),
                                 video_pts=list(range(30, 90)), audio=[(48000, 2, 3.0, 0)])
    source = media.make_subtitled(late, tmp_path / "subtitled.mkv", [media.SubtitleSpec(
        [(0.25, 0.75, "Before the picture"), (2.5, 2.9, "Near the end")])])
    run = run_job(source, tmp_path / "out", options(ladder=SMALL))
    assert run.state == JobState.COMPLETE, run.job.error
    cues = read_webvtt(run.out / "subtitles1" / "index.m3u8")
    assert [text for _, _, text in cues] == ["Before the picture", "Near the end"]
    # (Give or take the AAC encoder's priming, 21 ms, which the sound's packets start with.)
    assert [times for *times, _ in cues] == [pytest.approx([0.25, 0.75], abs=0.03),
                                             pytest.approx([2.5, 2.9], abs=0.03)]


def _slow_pass(monkeypatch: pytest.MonkeyPatch, seconds: float) -> threading.Event:
    """Make the subtitle pass take ``seconds`` longer; the event is set when it starts."""
    started = threading.Event()
    read = engine.subtitles.read_subtitles

    def slow(*args: Any) -> engine.subtitles.SubtitleScan:
        started.set()
        time.sleep(seconds)
        return read(*args)
    monkeypatch.setattr(engine.subtitles, "read_subtitles", slow)
    return started


def _early_job(plain: Path, tmp_path: Path) -> tuple[JobRun, list[str]]:
    """An early-playback job on a subtitled source, complete, and its master at READY."""
    source = media.make_subtitled(plain, tmp_path / "s.mkv", [ENGLISH])
    masters = []

    def on_event(event: engine.job.JobEvent) -> None:
        if event.type == "ready":
            masters.append((tmp_path / "out" / "master.m3u8").read_text())
    run = run_job(source, tmp_path / "out", options(ladder=SMALL, early_playback=True,
                                                    segment_seconds=1), on_event)
    assert run.state == JobState.COMPLETE, run.job.error
    return run, masters


def test_early_playback_waits_for_the_subtitles(plain: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The first rung's segments close before the subtitle pass is over: READY waits for it,
    and the master that makes the job READY lists the subtitles."""
    _slow_pass(monkeypatch, 2.0)
    run, masters = _early_job(plain, tmp_path)
    assert len(masters) == 1 and "TYPE=SUBTITLES" in masters[0], masters
    assert run.job.time_to_ready_s is not None and run.job.time_to_ready_s >= 2.0


def test_early_playback_waits_for_the_subtitles_a_while_only(
        plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass longer than the wait: READY without them, and the master lists them (EVENT
    playlists, as the rungs' are) once the pass is over, from the rung's completion on."""
    _slow_pass(monkeypatch, 3.0)
    monkeypatch.setattr(engine.job, "SUBTITLE_WAIT_S", 0.0)
    run, masters = _early_job(plain, tmp_path)
    assert len(masters) == 1 and "SUBTITLES" not in masters[0], masters
    assert run.job.time_to_ready_s is not None and run.job.time_to_ready_s < 3.0
    # (The poller may not see the last version before the job returns: the file is read too.)
    texts = [s.text for s in run.polled_snapshots] + [(run.out / "master.m3u8").read_text()]
    first = next(i for i, text in enumerate(texts) if "TYPE=SUBTITLES" in text)
    assert first > 0 and all("TYPE=SUBTITLES" in text for text in texts[first:])
    assert m3u8.load(str(run.out / "subtitles1" / "index.m3u8")).playlist_type == "event"
    assert read_webvtt(run.out / "subtitles1" / "index.m3u8")[0] == (
        0.5, 1.5, "Hello <i>world</i>\nline two")
    assert run.job.notes == []


def test_a_job_cancelled_during_the_subtitle_pass_leaves_nothing(
        plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = _slow_pass(monkeypatch, 1.0)
    source = media.make_subtitled(plain, tmp_path / "s.mkv", [ENGLISH])
    job = engine.job.Job(source, tmp_path / "out", options(ladder=SMALL, early_playback=True))
    job.start()
    assert started.wait(30)
    job.cancel()
    assert job.wait(60) and job.state == JobState.CANCELLED
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_failed_subtitle_pass_does_not_fail_the_job(plain: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> engine.subtitles.SubtitleScan:
        raise RuntimeError("no luck")
    monkeypatch.setattr(engine.subtitles, "read_subtitles", broken)
    source = media.make_subtitled(plain, tmp_path / "s.mkv", [ENGLISH])
    run = run_job(source, tmp_path / "out", options(ladder=SMALL))
    assert run.state == JobState.COMPLETE, run.job.error
    assert run.job.notes == ["the source's subtitle tracks could not be read (no luck): none "
                             "is kept"]
    assert "SUBTITLES" not in (run.out / "master.m3u8").read_text()
    assert not list(run.out.glob("subtitles*"))


def test_cues_and_tracks_beyond_the_limits_are_left_out_and_said(
        plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (engine.subtitles, engine.job):
        monkeypatch.setattr(module, "MAX_CUES", 2)
        monkeypatch.setattr(module, "MAX_TRACKS", 1)
    source = media.make_subtitled(plain, tmp_path / "s.mkv", [
        media.SubtitleSpec([(0.5, 1.0, "one"), (1.5, 2.0, "two"), (2.5, 3.0, "three")],
                           language="eng"), FRENCH])
    run = run_job(source, tmp_path / "out", options(ladder=SMALL))
    assert run.state == JobState.COMPLETE, run.job.error
    assert run.job.notes == ["1 subtitle track beyond the first 1 not kept",
                             "1 subtitle cue beyond the first 2 left out"]
    assert read_webvtt(run.out / "subtitles1" / "index.m3u8") == [
        (0.5, 1.0, "one"), (1.5, 2.0, "two")]
    assert not (run.out / "subtitles2").exists()


def test_a_job_that_fails_after_writing_the_subtitles_removes_them(
        plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(*args: Any) -> None:
        raise OutputWriteError("cannot write master.m3u8: No space left on device")
    monkeypatch.setattr(Publisher, "publish", full_disk)
    source = media.make_subtitled(plain, tmp_path / "s.mkv", [ENGLISH])
    run = run_job(source, tmp_path / "out", options(ladder=SMALL))
    assert run.state == JobState.FAILED
    assert not run.out.exists(), list(run.out.rglob("*"))


def test_a_track_with_long_segments_is_listed_with_its_own_target_duration(
        plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine.subtitles, "MAX_SEGMENTS", 1)
    source = media.make_subtitled(plain, tmp_path / "s.mkv", [ENGLISH])
    run = run_job(source, tmp_path / "out", options(ladder=SMALL, early_playback=True,
                                                    segment_seconds=1))
    assert run.state == JobState.COMPLETE, run.job.error
    playlist = m3u8.load(str(run.out / "subtitles1" / "index.m3u8"))
    assert [s.duration for s in playlist.segments] == [3.5]
    assert playlist.target_duration == 4
    assert m3u8.load(str(run.out / "144p" / "index.m3u8")).target_duration == 1


def test_subtitles_written_but_never_listed_are_removed(
        plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first rung is listed early without them (the pass was late), they are written once
    decoding is done, and the rung's completion fails: the early-listed rung stays playable,
    and nothing is left that no playlist lists."""
    def full_disk(*args: Any) -> None:
        raise OutputWriteError("cannot write master.m3u8: No space left on device")
    monkeypatch.setattr(Publisher, "publish", full_disk)
    _slow_pass(monkeypatch, 1.0)
    monkeypatch.setattr(engine.job, "SUBTITLE_WAIT_S", 0.0)
    source = media.make_subtitled(plain, tmp_path / "s.mkv", [ENGLISH])
    run = run_job(source, tmp_path / "out", options(ladder=SMALL, early_playback=True,
                                                    segment_seconds=1))
    assert run.state == JobState.FAILED
    assert "SUBTITLES" not in (run.out / "master.m3u8").read_text()
    assert sorted(p.name for p in run.out.iterdir()) == [
        "144p", "audio", "master.m3u8", "poster.jpg"]
