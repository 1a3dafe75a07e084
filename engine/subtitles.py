"""The source's text subtitle tracks, read once, as WebVTT renditions.

Players load the master playlist once (hls.js never reads it again), so a subtitle rendition
must be listed in the first master playlist or never. That one is published while the source is
still being decoded, and a subtitle cue can sit anywhere in the file (an MP4 writer may put the
whole subtitle track after the video), so the cues are read in a pass of their own, on a thread
of its own, as soon as the job starts: the demuxer is told to skip every other stream (an MP4's
subtitle samples are read alone; a Matroska file is read through, which this project's machine
does at 1-2 GB/s), and nothing is decoded twice.

FFmpeg's text subtitle decoders (SubRip, ASS/SSA, MP4 timed text, WebVTT and the rest) all give
ASS dialogue lines; :func:`cue_text` turns one into WebVTT cue text. Picture-based subtitles
(DVD, Blu-ray, DVB) would need text recognition and are not kept (a note says so).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import av
import av.error
import av.subtitles.stream
from av.codec.codec import Properties

from engine.errors import InvalidSourceError, JobCancelledError
from engine.probe import CONTAINER_OPTIONS, language_tag, rendition_name
from engine.stall import DecoderWatch, run_watched

log = logging.getLogger(__name__)

#: The most subtitle tracks kept; a file with more (the fuzzer's, not a film's) keeps the first.
MAX_TRACKS = 16
#: The most cues kept over all tracks, and the most characters of one cue: a damaged or hostile
#: file must not fill the memory or the output folder with text.
MAX_CUES = 100_000
MAX_CUE_CHARS = 1_000
#: The most WebVTT files of a track, and the most text in them (see :func:`webvtt_segments`).
MAX_SEGMENTS = 2_000
MAX_TRACK_BYTES = 16 << 20
#: How long a cue whose end is not given shows, at most (until the next cue, if sooner).
OPEN_CUE_S = 5.0
#: WebVTT's X-TIMESTAMP-MAP: the media time (90 kHz) at which cue time 0 is shown. Rungs'
#: renditions start the first picture at engine.gop.TIMELINE_START (10 s): 900000.
_MPEGTS_HZ = 90_000

#: ASS override blocks (``{\i1}``), and the drawing mode switch among their tags.
_ASS_BLOCK = re.compile(r"(\{[^}]*\})")
_ASS_DRAWING = re.compile(r"\\p(\d+)")
#: ASS's italic, bold and underline switches, which WebVTT has as ``<i>``, ``<b>`` and ``<u>``
#: (``\i1`` on, ``\i0`` off, a bare ``\i`` back to the style's own, taken as off; bold may
#: be a weight, ``\b700``), and ``\r``, which resets them all. FFmpeg's SubRip and timed text
#: decoders give ``<i>`` and the like as these.
_ASS_STYLE = re.compile(r"\\(?:([ibu])(\d*)|r)(?![a-z])")
#: A WebVTT tag of those, to see whether a line shows anything.
_WEBVTT_TAG = re.compile(r"</?[ibu]>")
#: FFmpeg's AV_CODEC_PROP_TEXT_SUB (PyAV's ``Properties`` is not typed as flags).
_TEXT_SUB = cast(int, Properties.TEXT_SUB.value)


@dataclass(frozen=True)
class Cue:
    """One subtitle: seconds on the source's clock, and WebVTT cue text."""

    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class SubtitleTrack:
    """One text subtitle track of the source, read whole."""

    #: What players show in their subtitle menu (the track's title, else its language).
    name: str
    #: The source's language tag as a BCP 47 one (``eng`` is ``en``: see
    #: engine.probe.language_tag), None where it says none a registry knows.
    language: str | None
    #: The source flags it to be shown by default, or as forced (foreign dialogue only).
    default: bool
    forced: bool
    cues: tuple[Cue, ...]


@dataclass
class SubtitleScan:
    """What the subtitle pass found: the tracks kept, and what of the subtitles it left out."""

    tracks: list[SubtitleTrack] = field(default_factory=list)
    #: Tracks not in text (pictures, or a codec FFmpeg cannot decode here); text tracks beyond
    #: MAX_TRACKS; text tracks with no cue.
    picture_tracks: int = 0
    tracks_over: int = 0
    empty_tracks: list[str] = field(default_factory=list)
    #: Cues that did not decode, cues beyond MAX_CUES, and cues left out of the WebVTT files
    #: for size (see :func:`webvtt_segments`; counted once they are written).
    damaged_cues: int = 0
    cues_over: int = 0
    cues_too_large: int = 0
    #: Why the pass failed (its tracks are then not kept); None when it did not.
    failure: str | None = None


def cue_text(ass: bytes) -> str:
    """WebVTT cue text from one of FFmpeg's ASS dialogue lines
    (``ReadOrder,Layer,Style,Name,MarginL,MarginR,MarginV,Effect,Text``): italic, bold and
    underline as WebVTT's tags, the other override tags and drawings left out, ASS line breaks
    as lines, ``&``, ``<`` and ``>`` escaped (a cue's text must not hold ``-->``) and no line
    that shows nothing (an empty one would end the cue)."""
    fields = ass.decode("utf-8", "replace").split(",", 8)
    text = fields[8] if len(fields) == 9 else fields[-1]
    kept: list[str] = []
    styles: list[str] = []
    drawing = False
    for part in _ASS_BLOCK.split(text):
        if part.startswith("{") and part.endswith("}"):
            for scale in _ASS_DRAWING.findall(part):
                drawing = int(scale) > 0
            for switch in _ASS_STYLE.finditer(part):
                kept.append(_restyle(styles, _switched(set(styles), *switch.groups())))
        elif not drawing:
            kept.append(part.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))
    kept.append(_restyle(styles, set()))
    text = "".join(kept).replace("\\N", "\n").replace("\\n", "\n").replace("\\h", "\u00a0")
    lines: list[str] = []
    tags = ""  # of lines that show nothing, carried to the next that does
    for line in text.replace("\r", "\n").split("\n"):
        line = tags + line.strip()
        if _WEBVTT_TAG.sub("", line).strip():
            lines.append(line)
            tags = ""
        else:
            tags = line
    if not lines:
        return ""
    text = "\n".join(lines) + tags
    if len(text) > MAX_CUE_CHARS:
        text = text[:MAX_CUE_CHARS]
        # Not half a tag (players close the tags still open at the cue's end).
        if text.rfind("<") > text.rfind(">"):
            text = text[:text.rfind("<")]
    return text


def _switched(styles: set[str], name: str | None, value: str | None) -> set[str]:
    """``styles`` after one ASS switch (see :data:`_ASS_STYLE`; ``name`` None for ``\r``)."""
    if name is None:
        return set()
    on = bool(value) and (int(value or 0) == 1 or (name == "b" and int(value or 0) >= 700))
    return styles | {name} if on else styles - {name}


def _restyle(open_tags: list[str], wanted: set[str]) -> str:
    """WebVTT markup that takes the tags open (``open_tags``, innermost last; updated) to
    ``wanted``. Tags close innermost first (WebVTT ignores an end tag that is not the
    innermost's), so a tag still wanted that had to close to let one outside it close opens
    again."""
    keep = 0
    while keep < len(open_tags) and open_tags[keep] in wanted:
        keep += 1
    markup = "".join(f"</{tag}>" for tag in reversed(open_tags[keep:]))
    del open_tags[keep:]
    for tag in sorted(wanted - set(open_tags)):
        open_tags.append(tag)
        markup += f"<{tag}>"
    return markup


@dataclass(frozen=True)
class WebVTTTrack:
    """One track's WebVTT files, as :func:`webvtt_segments` cut them."""

    #: Each file's text and the seconds it covers: the job's segment length (the last one's
    #: may be shorter), or longer for a track that would need more than ``MAX_SEGMENTS`` files.
    files: list[tuple[str, float]]
    #: Cues left out because the track's files reached ``MAX_TRACK_BYTES``.
    cues_over: int = 0


def webvtt_segments(cues: tuple[Cue, ...], origin_s: float, segment_s: float,
                    timeline_start_s: float, end_s: float) -> WebVTTTrack:
    """The WebVTT files of one track, from the first picture (source time ``origin_s``) to the
    end of the last cue; a cue is repeated in every segment it overlaps (players drop the
    repeats). Only what shows within ``end_s`` of the first picture (the video's length) is
    kept: one cue stamped hours on would otherwise make a file for every segment up to it.
    No file when no cue shows in that time.

    Bounded whatever the cues: at most ``MAX_SEGMENTS`` files (longer ones for a longer track:
    a header can declare six hours) and ``MAX_TRACK_BYTES`` of text (100,000 cues each
    lasting the whole video would be repeated in every file)."""
    shown = sorted(
        (start, stop, text) for start, stop, text in (
            (round(1000 * (c.start_s - origin_s)), round(1000 * (min(c.end_s - origin_s, end_s))),
             c.text) for c in cues)
        if stop > max(0, start))
    if not shown:
        return WebVTTTrack([])
    last = max(stop for _, stop, _ in shown)
    length = max(round(1000 * segment_s), math.ceil(last / MAX_SEGMENTS))
    header = (f"WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:{round(timeline_start_s * _MPEGTS_HZ)},"
              "LOCAL:00:00:00.000\n")
    files: list[tuple[str, float]] = []
    budget = MAX_TRACK_BYTES
    active: list[tuple[int, int, str]] = []  # started, not yet ended, in start order
    following = cues_over = 0
    for begin in range(0, last, length):
        finish = begin + length
        blocks = []
        if budget >= 0:
            while following < len(shown) and shown[following][0] < finish:
                active.append(shown[following])
                following += 1
            active = [cue for cue in active if cue[1] > begin]
            for written, (start, stop, text) in enumerate(active):
                block = f"\n{_timestamp(max(0, start))} --> {_timestamp(stop)}\n{text}\n"
                budget -= len(block)
                if budget < 0:
                    # Full: no more cues, here or after. Left out: the cues not written here,
                    # those cut short, and those not started.
                    cues_over = (len(active) - written
                                 + sum(1 for cue in active[:written] if cue[1] > finish)
                                 + len(shown) - following)
                    break
                blocks.append(block)
        files.append((header + "".join(blocks), min(length, last - begin) / 1000))
    return WebVTTTrack(files, cues_over)


def _timestamp(millis: int) -> str:
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    return f"{hours:02d}:{minutes:02d}:{millis // 1000:02d}.{millis % 1000:03d}"


class SubtitleReader:
    """Reads the text subtitle tracks of ``path`` on a thread of its own (see the module's
    docstring). A decoder or demuxer that stops returning is left behind after
    engine.stall.STALL_S, as the video's is; the thread itself always ends, and is joined by
    :meth:`result`."""

    def __init__(self, path: str | Path, cancel: threading.Event) -> None:
        self._path = Path(path)
        self._cancel = cancel
        self._scan: SubtitleScan | None = None
        self.thread = threading.Thread(target=self._run, name="subtitles", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def done(self) -> bool:
        """Whether the pass is over (its result is ready)."""
        return self._scan is not None

    def result(self) -> SubtitleScan:
        """Wait for the pass; what it found (a cancelled job's: nothing)."""
        self.thread.join()
        assert self._scan is not None, "the thread always leaves a result"
        return self._scan

    def _run(self) -> None:
        watch = DecoderWatch()
        try:
            scan = run_watched(lambda: read_subtitles(self._path, self._cancel, watch), watch,
                               self._path.name)
        except JobCancelledError:
            scan = SubtitleScan()
        except InvalidSourceError as exc:  # the watch: a stuck demuxer or decoder
            scan = SubtitleScan(failure=exc.message)
        except Exception as exc:  # subtitles are an extra: never the end of the job
            log.warning("reading the subtitles of %s failed: %s", self._path.name, exc)
            scan = SubtitleScan(failure=str(exc))
        self._scan = scan


def read_subtitles(path: Path, cancel: threading.Event, watch: DecoderWatch) -> SubtitleScan:
    """Every cue of the text subtitle tracks of ``path`` (see :class:`SubtitleReader`)."""
    scan = SubtitleScan()
    with watch.call():
        opened = av.open(str(path.absolute()), container_options=CONTAINER_OPTIONS,
                         metadata_errors="replace")
    with opened as container:
        streams = list(container.streams.subtitles)
        text = [s for s in streams if _is_text(s)]
        scan.picture_tracks = len(streams) - len(text)
        scan.tracks_over = max(0, len(text) - MAX_TRACKS)
        text = text[:MAX_TRACKS]
        if not text:
            return scan
        cues: dict[int, list[tuple[float, float | None, str]]] = {s.index: [] for s in text}
        total = 0
        for packet in _packets(container, text, watch):
            if cancel.is_set():
                raise JobCancelledError("cancelled while reading subtitles")
            if packet.pts is None or packet.time_base is None or not packet.size:
                continue
            try:
                with watch.call():
                    subtitle = packet.stream.codec_context.decode2(packet)
            except (av.error.FFmpegError, ValueError) as exc:
                scan.damaged_cues += 1
                log.debug("a subtitle packet does not decode: %s", exc)
                continue
            if subtitle is None:
                continue  # MP4 timed text's empty samples: the gaps between cues
            lines = [cue_text(rect.ass) for rect in subtitle.rects
                     if isinstance(rect, av.subtitles.subtitle.AssSubtitle)]
            words = "\n".join(line for line in lines if line)
            if not words:
                continue
            if total >= MAX_CUES:
                scan.cues_over += 1
                continue
            total += 1
            start = float(packet.pts * packet.time_base)
            shown = subtitle.end_display_time
            end: float | None = None
            if 0 < shown < 0xFFFFFFFF and shown > subtitle.start_display_time:
                end = start + shown / 1000
            elif packet.duration:
                end = start + float(packet.duration * packet.time_base)
            start += subtitle.start_display_time / 1000
            cues[packet.stream.index].append((start, end, words))
        names: set[str] = set()
        for stream in text:
            track = _track(stream, cues[stream.index], names, len(scan.tracks) + 1)
            if track.cues:
                scan.tracks.append(track)
            else:
                scan.empty_tracks.append(track.name)
    return scan


def _packets(container: av.container.InputContainer,
             streams: list[av.subtitles.stream.SubtitleStream],
             watch: DecoderWatch) -> Iterator[av.Packet[Any]]:
    packets = container.demux(streams)
    while True:
        try:
            with watch.call():
                packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as exc:  # a damaged file: keep what was read before it
            log.debug("the subtitle pass stopped early: %s", exc)
            return
        yield packet


def _is_text(stream: av.subtitles.stream.SubtitleStream) -> bool:
    with contextlib.suppress(Exception):  # a codec FFmpeg does not know at all
        return bool(stream.codec_context.codec.properties & _TEXT_SUB)
    return False


def _track(stream: av.subtitles.stream.SubtitleStream,
           read: list[tuple[float, float | None, str]], names: set[str],
           number: int) -> SubtitleTrack:
    read.sort(key=lambda cue: cue[0])
    cues = []
    for index, (start, end, text) in enumerate(read):
        following = read[index + 1][0] if index + 1 < len(read) else math.inf
        if end is None or not end > start:
            end = min(start + OPEN_CUE_S, max(following, start + 0.5))
        cues.append(Cue(start, end, text))
    name = rendition_name(stream, f"Subtitles {number}", names)
    flags = stream.disposition
    return SubtitleTrack(name, language_tag(stream), bool(flags & av.stream.Disposition.default),
                         bool(flags & av.stream.Disposition.forced), tuple(cues))

