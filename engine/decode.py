"""The one decode pass over the source: video frames and audio frames out, each exactly once.

Frames leave this stage progressive (see engine.deinterlace), as 8-bit 4:2:0 (``yuv420p``) at
the source's coded size, with ``pts`` relative to the first video frame and the segment they
open or belong to. Converting 10-bit, 4:2:2 or hardware (nv12) frames here, once, means every
rung downstream reads one format. An HDR source's frames leave as 10-bit 4:2:0
(``yuv420p10le``) instead: each rung maps them to SDR at its own size (see engine.tonemap);
where the frame cache has no room for them in 10 bits, this stage maps them (``map_to_sdr``).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.audio.frame
import av.audio.stream
import av.error
import av.stream
import av.video.codeccontext
import av.video.format
import av.video.frame
import av.video.stream
import numpy as np
from av.video.reformatter import VideoReformatter

from engine.captions import CaptionCarry, frame_captions
from engine.deinterlace import Deinterlacer
from engine.errors import (
    DecodeError,
    InvalidSourceError,
    JobCancelledError,
    UnsupportedSourceError,
)
from engine.gop import FrameRateMeter, FrameTime, KeyframeSchedule
from engine.ladder import MAX_FRAME_RATE
from engine.probe import (
    MP4_DEMUXER,
    UNSPECIFIED,
    Colour,
    OpenSource,
    clock_may_jump,
    failure_reason,
    sample_aspect,
    tag_seconds,
)
from engine.stall import DecoderWatch
from engine.tonemap import ToneMapper

log = logging.getLogger(__name__)

#: The pixel format every stage after decode works in.
PIXEL_FORMAT = "yuv420p"
#: An HDR source's instead: 8 bits are too few for PQ or HLG before they are mapped to SDR.
HDR_PIXEL_FORMAT = "yuv420p10le"
#: Black and grey chroma in 8 bits (video range; full range's black is 0).
_VIDEO_RANGE_BLACK = 16
_NEUTRAL_CHROMA = 128
#: The matrices (AVColorSpace) FFmpeg's scaler takes. It refuses to convert a frame tagged
#: with another, such as a damaged header's value or BT.2020's constant-luminance matrix, and
#: the job failed. The conversions here are YUV to YUV (the matrix plays no part) or RGB to
#: YUV (BT.601, as for untagged RGB), so such a tag is cleared for them; the rungs' tags come
#: from the probe (Colour.of).
_SCALER_MATRICES = frozenset((0, 1, 2, 4, 5, 6, 7, 9))
#: Give up on a source when more than this share of its video packets fail to decode (and more
#: than 10: a few bad packets at the start are no share yet).
MAX_BAD_PACKET_SHARE = 0.2
#: A demuxer that stops with more than this share of the file unread (and more than two of its
#: largest packets) stopped at damage it could not read past: a file cut short is read to
#: within its last, partial packet (98.0-99.7% of six cut Matroska and WebM files here), one with a
#: stretch of zeros in the middle stopped 34% in.
UNREAD_SHARE = 0.1
#: How far the sound may run ahead of the furthest picture read before its timestamps are
#: taken for damaged ones (muxers keep the two within a second or so).
MAX_AUDIO_LEAD_S = 60
#: Sound the container says starts this much or more after the first picture is led in with
#: silence before decoding (see ``decode_source``); sooner, the decoder reaches it at once.
SOUND_LEAD_IN_MIN_S = 1.0
#: Sound that starts this much before the first picture (as read with it, or as the
#: container declares) moves the time origin back to where it starts, the first picture
#: shown from there (see :func:`sound_lead`).
#: Less is cut, as a codec's priming or a muxer's rounding is; more is taken for a damaged
#: timestamp rather than a picture to hold that long.
SOUND_BEFORE_PICTURE_S = (Fraction(1, 10), Fraction(10))
#: Longest interval between frames taken as the frame rate; longer ones are gaps.
MAX_FRAME_INTERVAL_S = Fraction(1, 2)
#: How much longer than the segment length a segment may get in a gap before the last frame
#: is repeated at its end (see ``_VideoState._fill_gap``).
GAP_TOLERANCE_S = Fraction(1, 4)
#: A frame the source says lasts this many times longer than the time to the next frame (and
#: more than a second) shows that its durations are not to be believed.
DURATION_LIE_FACTOR = 10
#: A picture whose shape differs from the first one's by no more than this is stretched to
#: it, not fitted inside with bars (a coded 1920x1088, a few rows cropped).
ASPECT_TOLERANCE = Fraction(3, 100)


@dataclass(frozen=True)
class DecodeStats:
    """What the decode pass did."""

    #: Video frames the decoder produced (before any frame-rate cap).
    frames_decoded: int
    #: Video frames passed on to the rungs.
    frames_kept: int
    #: Video packets in the source (one per frame for every codec Rungs accepts).
    video_packets: int
    #: Video packets the container marks to be decoded but never shown: the frames an edit
    #: list cuts off (a clip trimmed on a phone without re-encoding keeps the frames it
    #: starts with from its keyframe on, and may keep frames after its end).
    hidden_packets: int
    #: Packets that failed to decode and were skipped.
    bad_packets: int
    #: Decoded frames the frame-rate cap left out (a 240 fps slow-motion capture's).
    frames_over_cap: int
    #: The highest rate the kept frames keep up for a second (see :class:`FrameRateMeter`), at
    #: most the cap; None for a single frame.
    peak_frame_rate: Fraction | None
    #: Where the last kept frame stops being shown, in seconds from the first one: the
    #: video's length as the rungs play it.
    end_s: Fraction = Fraction(0)
    #: How long the last frame is shown past its own end, for sound that goes on (see
    #: ``_VideoState.hold_last_until``).
    held_for_sound_s: Fraction = Fraction(0)


@dataclass
class DecodeProgress:
    """What the decode pass has done so far, kept up to date while it runs (for status)."""

    #: Video frames the decoder has produced.
    frames_decoded: int = 0
    #: Where the output's time 0 is on the source's clock (seconds): the first picture placed,
    #: or the sound that starts before it (see :func:`sound_lead`). None until it is placed.
    origin_s: float | None = None


VideoSink = Callable[[av.video.frame.VideoFrame, FrameTime], None]
AudioSink = Callable[[av.audio.frame.AudioFrame, float], None]
"""Called with a decoded audio frame and its start in seconds relative to the first video frame."""
SoundStartSink = Callable[[float], None]
"""Called, before any audio frame, with where the container says the sound starts (seconds
after the first video frame) when that is well after it."""


def decode_source(source: OpenSource, schedule: KeyframeSchedule, on_video: VideoSink,
                  on_audio: Sequence[AudioSink], cancel: threading.Event,
                  max_seconds: float = math.inf,
                  on_sound_start: Sequence[SoundStartSink] = (),
                  progress: DecodeProgress | None = None,
                  map_to_sdr: bool = False,
                  sound_end: Callable[[], float] | None = None) -> DecodeStats:
    """Demux and decode ``source`` once, calling the sinks in presentation order per stream.

    An HDR source's frames are passed on in 10 bits, to be mapped to SDR by each rung; with
    ``map_to_sdr``, they are mapped here, at the source's size, and passed on in 8 bits (see
    engine.tonemap).

    ``on_audio`` holds a sink for each of ``source.audio_streams``, in their order (tracks
    without one are not decoded), ``on_sound_start`` likewise. Each sound-start sink hears
    where its track's late sound starts as soon as the first picture is placed: early playback
    waits for the audio's first segment, which the decoder would otherwise close only on
    reaching the sound (1080p with its sound 20 s in: READY at 5.2 s, against 1.5 s with sound
    from the start).

    Raises :class:`UnsupportedSourceError` once the video runs past ``max_seconds``: the probe
    refuses a source that declares a longer duration, but some declare none (a WebM recorded in
    a browser, a live Matroska capture) and a header can understate it.

    ``progress``, if given, counts the frames decoded as they come (a cancelled or failed
    decode still says how far it got).

    ``sound_end``, if given, says where the sound passed on ends (seconds from the first
    frame) once all of it is: where that is past the picture's end, the last frame is held
    until then (see ``_VideoState.hold_last_until``), and a last frame after a gap is judged
    against it (see ``_VideoState._place_held``; without it, the sound counts as ending with
    the first frame). It is asked of the sinks rather than taken from the sound's timestamps,
    since those may be damaged: sound stamped past the video's declared length is closed up,
    not played after a pause (engine.audio)."""
    video = source.video_stream
    time_base = video_time_base(source)
    timeline = schedule.timeline_time_base(time_base)
    state = _VideoState(schedule, timeline, on_video, video.codec_context,
                        source.info.frame_rate, Fraction(source.info.duration_s),
                        limit=_Limit(Path(source.info.path).name, max_seconds),
                        source_ticks=int(time_base / timeline),
                        timestamps=_TimestampGuess(
                            decode_order=source.info.container in DECODE_ORDER_PTS),
                        progress=progress, pixel_format=frame_format(source.info.colour),
                        tone_map=source.info.colour if map_to_sdr else None)
    splices = _Splices(clock_may_jump(source.container))
    video_packets = source.video_packets_read
    hidden_packets = source.hidden_packets_read
    reach = _VideoReach(state, time_base)
    # A placer per track decoded, by stream index, each judging its sound by the one reach.
    tracks = list(zip(source.audio_streams, on_audio, strict=False))
    placers = {stream.index: _SoundPlacer(state, reach, sink, _declared_sound_end(source, stream))
               for stream, sink in tracks}
    bad = 0
    read = _FileReach()

    # Video first: the first video frame sets the time origin the audio is placed against.
    state.lead_by(sound_lead(source))
    for item in source.pending:
        if isinstance(item, av.video.frame.VideoFrame):
            if item.pts is not None:
                splices.note(video.index,
                             reach.reached(item.pts, item.dts, item.duration) * time_base)
            state.push(item)
    for item in source.pending:
        if isinstance(item, av.Packet) and item.stream.index in placers:
            splices.join(item)
            for frame in _decode_quietly(item, source.watch):
                placers[item.stream.index].add(frame)
    # Once the first picture is placed, audio read so far has been passed on (placer.end).
    for (stream, _), on_start in zip(tracks, on_sound_start, strict=False):
        lead = _declared_sound_start(source, stream)
        if placers[stream.index].end is None and state.has_origin() and lead is not None:
            lead -= state.origin_seconds()
            if SOUND_LEAD_IN_MIN_S <= lead <= MAX_AUDIO_LEAD_S:
                on_start(lead)
    for packet in _packets(source, state):
        if cancel.is_set():
            raise JobCancelledError("cancelled while decoding")
        splices.join(packet)
        read.note(packet)
        is_video = packet.stream.index == video.index
        if is_video and packet.size:
            video_packets += 1
            hidden_packets += packet.is_discard
            if packet.pts is not None:
                reach.reached(packet.pts, packet.dts, packet.duration)
        elif not is_video and packet.stream.index not in placers:
            continue  # a track with no sink
        try:
            with source.watch.call():
                frames = packet.decode()
        except av.error.FFmpegError as exc:
            if not is_video:
                continue
            bad += 1
            log.warning("skipping a video packet that does not decode: %s", exc)
            if bad > 10 and bad > MAX_BAD_PACKET_SHARE * video_packets:
                raise DecodeError(
                    f"source {Path(source.info.path).name!r} is too damaged to transcode: "
                    f"{bad} of its first {video_packets} video packets do not decode"
                ) from exc
            continue
        for decoded in frames:
            if isinstance(decoded, av.video.frame.VideoFrame):
                state.push(decoded)
            elif isinstance(decoded, av.audio.frame.AudioFrame):
                placers[packet.stream.index].add(decoded)
    state.finish(sound_end() if sound_end is not None else 0.0)
    for placer in placers.values():
        placer.finish()
    if sound_end is not None:
        state.hold_last_until(sound_end())
    if state.decoded == 0:
        raise DecodeError(
            f"source {Path(source.info.path).name!r} has no decodable video frame")
    _check_complete(source, video, video_packets,
                    0 if reach.video_end is None else reach.video_end, read)
    return DecodeStats(state.decoded, state.kept, max(video_packets, state.decoded),
                       hidden_packets, bad, state.over_cap, state.peak_frame_rate(), state.end_s,
                       state.held_for_sound_s)


class _VideoReach:
    """How far the video read so far reaches, which sound far past is taken for damaged
    timestamps; one for every audio track."""

    def __init__(self, state: _VideoState, time_base: Fraction) -> None:
        self._state = state
        self._time_base = time_base
        #: The furthest point of the source's video clock any packet reached (``time_base``).
        self.video_end: int | None = None
        # How far the video read so far reaches, in seconds from the time origin; None until a
        # packet has a timestamp. Not 0: a damaged fragment's times can all be negative (a base
        # time of -2^33 ticks), and measured from 0, sound at 0 lay within the video read so far
        # although it came 155 hours after the first picture, so that much silence led up to
        # it. Each packet counts against the origin in force when it is read: the origin moves
        # when the picture's clock goes back, and the furthest packet of the source's clock,
        # measured from the moved origin, took a clock gone 10 hours back for 10 hours of video
        # read, so sound still on the old clock had 10 hours of silence led up to it. And each
        # counts on the clock the pictures are placed by: where their presentation times are
        # not believed (see _TimestampGuess), a fragmented MP4's packets said 38.8 hours in,
        # its pictures were placed a frame apart by their decode times, and sound 24.8 hours
        # in lay within the video read.
        self._reach: float | None = None
        # The furthest packet end read since the last count (``time_base``): before the first
        # picture is placed there is no origin to count it against.
        self._uncounted: int | None = None

    def reached(self, pts: int, dts: int | None, duration: int | None) -> int:
        """Count a video packet or frame; returns where it ends on its presentation clock
        (``time_base`` units)."""
        length = max(0, duration or 0)
        end = pts + length
        self.video_end = end if self.video_end is None else max(self.video_end, end)
        believed = self._state.believed_time(pts, dts)
        placed = (pts if believed is None else believed) + length
        self._uncounted = placed if self._uncounted is None else max(self._uncounted, placed)
        if self._state.has_origin():
            self._count()
        return end

    def seconds(self) -> float:
        """How far the video reaches, in seconds from the time origin (placed by now)."""
        self._count()
        return 0.0 if self._reach is None else self._reach

    def _count(self) -> None:
        if self._uncounted is None:
            return
        at = float(self._uncounted * self._time_base) - self._state.origin_seconds()
        self._uncounted = None
        if self._reach is not None and self._state.jumps_past_end(
                round(at / self._state.time_base), round(self._reach / self._state.time_base)):
            # Not where the video reaches: its picture goes on from the one before (see
            # _VideoState._relative_pts), and sound stamped as far on is damaged too.
            return
        self._reach = at if self._reach is None else max(self._reach, at)


class _SoundPlacer:
    """Passes one track's decoded sound on in seconds from the time origin, which the first
    picture fixes.

    Sound decoded before that picture is placed (the deinterlacer holds pictures back) is held
    until it is: placed against none, it lands at its absolute time.
    """

    def __init__(self, state: _VideoState, reach: _VideoReach, on_audio: AudioSink,
                 declared_end: float | None = None) -> None:
        self._state = state
        self._reach = reach
        self._on_audio = on_audio
        #: Where the container says the track's sound ends (seconds, on the packets' clock).
        self._declared_end = declared_end
        self._held: list[tuple[av.audio.frame.AudioFrame, float]] = []
        #: Where the sound passed on so far ends, in seconds from the time origin.
        self.end: float | None = None

    def add(self, frame: av.audio.frame.AudioFrame) -> None:
        """Pass a decoded audio frame on, or hold it until the first picture is placed."""
        if frame.pts is None or frame.time_base is None:
            return
        self._held.append((frame, float(frame.pts * frame.time_base)))
        if self._state.has_origin():
            self._release()

    def finish(self) -> None:
        """Pass on what is still held, once the decoder is drained."""
        if self._held and self._state.has_origin():
            self._release()

    def _release(self) -> None:
        origin = self._state.origin_seconds()
        reach = self._reach.seconds()
        for held, seconds in self._held:
            if self._declared_end is not None:
                held = _cut_after(held, seconds, self._declared_end)
            at = seconds - origin
            before = self.end if self.end is not None else 0.0
            if at > max(reach, before) + MAX_AUDIO_LEAD_S:
                # Sound far past the furthest picture read is a damaged timestamp, not a pause
                # (a pause in a recording is one in the picture too): it goes on after the
                # sound before it, or starts with the picture. A source that declares no
                # duration (a browser's WebM) had silence encoded up to it, for ever with a
                # timestamp 2^32 ticks ahead.
                at = before
            self.end = at + (held.samples / held.sample_rate if held.sample_rate else 0)
            self._on_audio(held, at)
        self._held.clear()


def sound_lead(source: OpenSource) -> Fraction:
    """How long before the first picture the sound starts (seconds), as the sound read along
    with that picture tells, or where none was, as the container declares; where that is
    within ``SOUND_BEFORE_PICTURE_S``, else 0.

    The decode puts the time origin that much before the first picture, which is shown from
    the origin on: an MPEG-TS recording starts mid-GOP, so its sound comes before its first
    keyframe (1.8 s of it in one cut 30% in, its keyframes 2 s apart), and a recorder may
    start the picture late. Counted from the first picture, that sound was left out."""
    tracks = {stream.index for stream in source.audio_streams}
    sound = min((Fraction(item.pts * item.time_base) for item in source.pending
                 if isinstance(item, av.Packet) and item.stream.index in tracks
                 and item.pts is not None and item.time_base is not None
                 and not item.is_discard), default=None)
    if sound is None:
        # None read yet: a file may store its sound after its pictures (an MP4 not
        # interleaved, whose demuxer reads by position within 1 s), but its index says where
        # the sound starts.
        sound = min((Fraction(start) for stream in source.audio_streams
                     if (start := _declared_sound_start(source, stream)) is not None),
                    default=None)
    picture = next((item.pts for item in source.pending
                    if isinstance(item, av.video.frame.VideoFrame)), None)
    if sound is None or picture is None:
        return Fraction(0)
    lead = picture * video_time_base(source) - sound
    low, high = SOUND_BEFORE_PICTURE_S
    return lead if low <= lead <= high else Fraction(0)


def video_time_base(source: OpenSource) -> Fraction:
    """The time base of the source's video packets (MPEG's 1/90000 should a stream name none)."""
    return Fraction(source.video_stream.time_base or Fraction(1, 90000))


def _declared_sound_end(source: OpenSource, stream: av.audio.stream.AudioStream) -> float | None:
    """Where an MP4's audio track ends as its index says (seconds, on the packets' clock), or
    None: the index ends the sound where the encoder's padding starts (an edit list), and FFmpeg
    leaves out the packets past that but decodes the last one whole, so the padding played after
    the sound: 72 ms of silence after 3 s of 8 kHz AAC, the rendition longer than the picture.
    A fragmented MP4's duration is only as far as its fragments were read, so none there."""
    if (source.container.format.name != MP4_DEMUXER or not stream.frames
            or not stream.duration or stream.start_time is None or stream.time_base is None):
        return None
    return float((stream.start_time + stream.duration) * stream.time_base)


def _cut_after(frame: av.audio.frame.AudioFrame, start: float,
               end: float) -> av.audio.frame.AudioFrame:
    """``frame``, which starts at ``start`` (seconds), without its samples after ``end``; as it
    is where it ends before ``end`` or starts after it (not padding: kept).

    Mono and stereo only: PyAV 18 counts nine planes in an eight-channel planar frame and
    crashed reading them (a 7.1 AAC track); more channels keep their padding, as before."""
    keep = round((end - start) * frame.sample_rate) if frame.sample_rate else 0
    channels = frame.layout.nb_channels
    planes = channels if frame.format.is_planar else 1
    if not 0 < keep < frame.samples or channels > 2 or len(frame.planes) != planes:
        return frame
    size = keep * frame.format.bytes * (channels // planes)
    try:
        cut = av.AudioFrame(format=frame.format.name, layout=frame.layout, samples=keep)
        for source, target in zip(frame.planes, cut.planes, strict=True):
            target.update(bytes(memoryview(source)[:size]))
    except (ValueError, TypeError):  # a layout or format PyAV makes no frame of: as it is
        return frame
    cut.sample_rate, cut.pts, cut.time_base = frame.sample_rate, frame.pts, frame.time_base
    return cut


def _declared_sound_start(source: OpenSource, stream: av.audio.stream.AudioStream) -> float | None:
    """Where an audio stream starts (seconds, on the packets' clock) as its container says:
    an MP4's index tells before any audio packet is read. None where the container does not
    say, or where its clock may jump (the packets' times are then spliced, see _Splices)."""
    if (stream.start_time is None or stream.time_base is None
            or clock_may_jump(source.container)):
        return None
    return float(stream.start_time * stream.time_base)


def _check_complete(source: OpenSource, video: av.video.stream.VideoStream, packets: int,
                    end: int, read: _FileReach) -> None:
    """Raise :class:`InvalidSourceError` for a source that holds less video than it declares
    (``read``: how far into the file its packets came from, which tells a file cut short from
    one whose demuxer stopped at damage; see :func:`_short_of`).

    An MP4 whose index comes first (faststart) still opens when its end was cut off, and the
    demuxer just stops early: without this check a cut-off upload "completes" as a shorter
    video. Fewer frames than declared is not enough to tell: a 1% allowance covers headers
    that count a frame or two more than the file holds, and an AVI counts the empty chunks it
    writes for dropped frames (capture cards, cameras, the ffmpeg CLI's AVI muxer) although
    they hold no picture, so a file whose packets reach the end of its declared duration is
    whole however many it holds. A fragmented MP4's count is of frames with data only, so that
    allowance is not needed there, and with B-frames a cut can take frames off while the
    packets left still reach the end (3 of 48 listed frames).
    """
    declared = source.info.declared_frames
    listed = 0 if declared else _fragment_frames(source, video, packets)
    if not declared and not listed:
        _check_tagged_duration(source, video, packets, end, read)
        return
    declared = declared or listed
    if packets >= declared - declared // 100:
        return
    if not listed and video.duration and packets:
        start = video.start_time or 0
        span = video.duration
        if source.info.container in FRAME_TICK_CLOCKS:
            # FFmpeg gives an AVI whose index never arrived the duration its size suggests,
            # which the packets of a file cut at 90% reached (54 of 60 ticks, 54 frames): it
            # completed as a shorter video. Its header's count is the duration it declares.
            span = max(span, declared)
        frame = span / declared
        if end + max(2 * frame, span / 100) >= start + span:
            return
    raise InvalidSourceError(_short_of(
        source, read, f"it declares {declared} video frames but holds only {packets}",
        f"it declares {declared} video frames but FFmpeg could read only {packets}"))


@dataclass
class _FileReach:
    """How far into the file the packets read came from."""

    #: The furthest byte a packet came from (0: the demuxer does not say).
    read_to: int = 0
    largest: int = 0

    def note(self, packet: av.Packet[Any]) -> None:
        if packet.pos is not None and packet.pos >= 0:
            self.read_to = max(self.read_to, packet.pos + packet.size)
            self.largest = max(self.largest, packet.size)

    def stopped_early(self, size: int) -> bool:
        """Whether the demuxer stopped well before the end of a file of ``size`` bytes: more
        unread than the partial packet a cut leaves (the largest packet, a 4K keyframe, can be
        a good share of a short file) and than ``UNREAD_SHARE`` of it."""
        unread = size - self.read_to
        return self.read_to > 0 and unread > max(2 * self.largest, UNREAD_SHARE * size)


def _short_of(source: OpenSource, read: _FileReach, truncated: str, damaged: str) -> str:
    """The message for a source with less video than it declares: ``truncated`` where its
    packets were read to about the end of the file, ``damaged`` where the demuxer stopped well
    before it (a Matroska file with 4 KiB of zeros a third of the way in stopped there, and was
    called truncated; a new upload of it would not help)."""
    name = Path(source.info.path).name
    try:
        size = Path(source.info.path).stat().st_size
    except OSError:
        size = 0
    if read.stopped_early(size):
        return (f"source {name!r} is damaged: {damaged}, the demuxer stopping "
                f"{round(100 * read.read_to / size)}% of the way into the file")
    return f"source {name!r} is truncated: {truncated}"


def _fragment_frames(source: OpenSource, video: av.video.stream.VideoStream, packets: int) -> int:
    """The frames a fragmented MP4's fragments list, once the demuxer has read them all; 0 for
    other containers.

    Its index up front lists none, each fragment lists its own. Cut inside a fragment, the
    demuxer stops at the cut while that fragment still lists the frames cut off (a 4 s
    recording cut 2.7 s in: the fragments read list 90 frames, 81 arrived), and the job
    completed as a shorter video.
    """
    if source.info.container != MP4_DEMUXER:
        return 0
    listed = len(video.index_entries)
    if listed <= packets:
        return listed
    # Only frames with data count, as only packets with data do.
    return sum(1 for entry in video.index_entries if entry.size)


def _check_tagged_duration(source: OpenSource, video: av.video.stream.VideoStream, packets: int,
                           end: int, read: _FileReach) -> None:
    """The same for a container that counts no frames but tags each stream with its duration
    (Matroska as FFmpeg and mkvmerge write it, in the header): a cut-off upload completed as a
    shorter video (2.5 s of a 5 s file, exit 0) where a cut-off MP4 is refused."""
    tagged = tag_seconds(video)
    if not tagged or not packets or video.time_base is None:
        return
    # FFmpeg tags where the track ends, mkvmerge how long it lasts: the packets must reach the
    # tag either way (so a file whose timestamps start late is never taken for a cut one).
    reached = float(end * video.time_base)
    frame = 1 / float(source.info.frame_rate or 30)
    if reached + max(2 * frame, tagged / 100) >= tagged:
        return
    raise InvalidSourceError(_short_of(
        source, read,
        f"its video is tagged to last {tagged:.2f} s but ends at {max(0.0, reached):.2f} s",
        f"its video is tagged to last {tagged:.2f} s but could be read only to "
        f"{max(0.0, reached):.2f} s"))


def _packets(source: OpenSource, state: _VideoState) -> Iterator[av.Packet[Any]]:
    """The rest of the one demux pass. A demuxer that fails part way (damaged data it cannot
    skip, an allocation a damaged size field asked for) is a clear InvalidSourceError."""
    packets = iter(source.packets)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as exc:
            raise InvalidSourceError(
                f"source {Path(source.info.path).name!r} could not be read after "
                f"{state.decoded} frames ({failure_reason(exc)})") from exc
        except IndexError:
            # PyAV's demuxer raises this for a packet of a stream that appeared part way (an
            # MPEG-TS program table that changes), and its generator is over. The new stream is
            # not one of ours: demux on from where it stopped, with the same streams.
            packets = source.container.demux([source.video_stream, *source.audio_streams])
            continue
        yield packet


def _decode_quietly(packet: av.Packet[Any],
                    watch: DecoderWatch) -> list[av.audio.frame.AudioFrame]:
    try:
        with watch.call():
            return packet.decode()  # type: ignore[return-value]
    except av.error.FFmpegError:
        return []


#: Demuxers whose packet timestamps number the packets in the order they are stored (decode
#: order), not the order they are shown in.
DECODE_ORDER_PTS = ("avi",)
#: Demuxers whose clock ticks once for every frame stored, a dropped frame's empty chunk too,
#: so the frames a header counts are also its duration in ticks.
FRAME_TICK_CLOCKS = ("avi",)
#: A jump by more than this in a format whose clock may jump (:func:`clock_may_jump`) is a
#: splice, not time that passed (the ffmpeg CLI's ``-dts_delta_threshold``).
SPLICE_JUMP_S = 10


class _Splices:
    """Joins the pieces of a source whose clock jumps where recordings were joined end to end
    or a broadcast capture crosses a splice, as the ffmpeg CLI does.

    Taken as they came, 6 s of MPEG-TS whose second half was stamped an hour later made an
    hour of one still picture between 3 s of video at each end, and a jump back of 100 s, which
    FFmpeg's demuxer reads as a clock wrap 26 hours ahead, made a 6 s file "last 95347 s" (and
    be refused). Only in formats whose clock may jump (:func:`engine.probe.clock_may_jump`): an
    MP4's or a Matroska file's timeline is real (a screen recording can hold one picture for a
    minute). A packet more than ``SPLICE_JUMP_S`` away both from where its stream's last
    packet ended and from where the last packet of any other stream did moves, with every
    later packet of every stream, to go on from there, so sound and picture stay together.
    Either alone is not a splice: a gap in the sound while the picture goes on is kept, a muxer
    that held the sound back while a gap in it lasted (the ffmpeg CLI's MPEG-TS muxer, up to
    10 s) stores it 13 s after the picture around it, and a stream's first packet damaged to
    16 hours on is no reference for the next one (measured against it, the sound after it was
    a splice back, and every later packet of the 1 s file moved 16 hours on).
    """

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        #: Seconds added to every packet from the last splice on.
        self._offset = Fraction(0)
        #: Where the last packet of each stream ended (seconds, joined), in the order they
        #: ended (the latest last).
        self._ends: dict[int, Fraction] = {}

    def note(self, stream: int, end: Fraction) -> None:
        """Count a packet of ``stream`` that ended at ``end`` seconds and was read before
        joining began (the first pictures, decoded to describe the source)."""
        self._ends.pop(stream, None)
        self._ends[stream] = end

    def join(self, packet: av.Packet[Any]) -> None:
        """Move ``packet``'s timestamps onto the joined timeline."""
        stamp = packet.dts if packet.dts is not None else packet.pts
        if not self._enabled or stamp is None or packet.time_base is None:
            return
        time_base = Fraction(packet.time_base)
        if packet.pts is not None and (stamp - packet.pts) * time_base > SPLICE_JUMP_S:
            # A packet is decoded before it is shown, never hours after: this decode time is
            # damaged (one MPEG-TS packet's said 7.4 hours past its presentation time), and
            # taken for a splice it moved that packet's picture 7.4 hours back, which then
            # rebased every later frame 7.4 hours on.
            stamp = packet.pts
        at = stamp * time_base + self._offset
        index = packet.stream.index
        stream_end = self._ends.get(index)
        # Where the stream that ended last, other than this one, ended (this one's own end when
        # no other has a packet yet).
        others_end = next((e for i, e in reversed(self._ends.items()) if i != index), stream_end)
        if (stream_end is not None and others_end is not None
                and abs(at - stream_end) > SPLICE_JUMP_S and abs(at - others_end) > SPLICE_JUMP_S):
            log.warning("joining a splice: the source's clock jumps by %.1f s",
                        float(at - others_end))
            self._offset += others_end - at
            at = others_end
        if shift := round(self._offset / time_base):
            if packet.dts is not None:
                packet.dts += shift
            if packet.pts is not None:
                packet.pts += shift
        self.note(index, at + max(0, packet.duration or 0) * time_base)


@dataclass(frozen=True)
class _Limit:
    """The longest video a job takes, and the source's name for the error past it."""

    name: str
    seconds: float


#: Frame times are 64-bit.
_INT64 = 2**63


@dataclass(frozen=True)
class _Held:
    """A frame held back until the next one shows where it goes (see ``_VideoState._place``)."""

    frame: av.video.frame.VideoFrame
    #: Its time as stamped, and the last frame's before it (time_base units from the origin).
    pts: int
    before: int
    #: The frame interval before it.
    step: int
    #: Stamped like the last frame or a little before it (see ``_VideoState._relative_pts``).
    alike: bool = False


class _VideoState:
    """Turns decoded frames into normalised, scheduled frames for the sink."""

    def __init__(self, schedule: KeyframeSchedule, time_base: Fraction, sink: VideoSink,
                 codec: av.video.codeccontext.VideoCodecContext,
                 frame_rate: Fraction = Fraction(30), declared_seconds: Fraction = Fraction(0),
                 *, limit: _Limit,
                 timestamps: _TimestampGuess, source_ticks: int = 1,
                 progress: DecodeProgress | None = None,
                 pixel_format: str = PIXEL_FORMAT, tone_map: Colour | None = None) -> None:
        """``time_base`` is the timeline's (see ``KeyframeSchedule.timeline_time_base``), in
        which the source's ticks are ``source_ticks`` long; frames are passed on in
        ``pixel_format`` (see :func:`frame_format`), or, given an HDR ``tone_map`` (the
        source's colour), mapped to SDR in 8 bits."""
        self.schedule = schedule
        self._limit = limit
        self.time_base = time_base
        self.sink = sink
        self.progress = progress if progress is not None else DecodeProgress()
        self.kept = 0
        self.over_cap = 0
        self._first_pts: int | None = None
        # How far before the first picture the origin goes (time_base units; see lead_by).
        self._lead = 0
        self._last_pts = -1
        #: The last frame's timestamp stood still or went back (see :meth:`_relative_pts`).
        self._behind = False
        #: The last frame, stamped like the one before it, went halfway to this one: the
        #: interval from it is no frame interval (half of one for 60 fps stamped in pairs,
        #: of two for 30 fps whose frames were stamped alike a tick apart).
        self._halved = False
        # One frame interval in time_base units: what a frame with no usable timestamp adds.
        self._step = max(1, round(1 / (max(frame_rate, Fraction(1)) * time_base)))
        # A frame this soon after the last is shown for too short a time to be seen (the
        # frame-rate cap's least interval, see KeyframeSchedule._within_cap).
        self._too_close = max(1, math.ceil(1 / (4 * MAX_FRAME_RATE) / time_base))
        # Intervals longer than this are gaps, not the frame rate.
        self._max_step = max(self._step, round(MAX_FRAME_INTERVAL_S / time_base))
        self._timestamps = timestamps
        self._source_ticks = source_ticks
        self._converter = VideoReformatter()
        self._format = pixel_format
        self._sample = sample_type(pixel_format)
        # 16 and 128 in 8 bits, 64 and 512 in 10.
        self._depth_shift = av.video.format.VideoFormat(pixel_format).components[0].bits - 8
        self._tone_map = tone_map if tone_map is not None and tone_map.hdr else None
        self._tone_mapper: ToneMapper | None = None
        self._deinterlacer = Deinterlacer(time_base, codec.field_order)
        self._codec = codec
        # The first frame's size and shape as shown, and its black (see _normalise).
        self._size: tuple[int, int] | None = None
        self._shape = Fraction(1)
        self._black = _VIDEO_RANGE_BLACK
        # The last frame kept, and where it was placed.
        self._last_frame: av.video.frame.VideoFrame | None = None
        self._last_placed: FrameTime | None = None
        #: How long the last frame is held past its own end for the sound (hold_last_until).
        self.held_for_sound_s = Fraction(0)
        # How long the source shows the last placed frame (time_base units, 0: unknown).
        self._last_duration = 0
        # The video's declared length in time_base units; None when the container declares none.
        self._declared_end: int | None = None
        if declared_seconds > 0:
            self._declared_end = math.floor(declared_seconds / time_base)
        self._rate = FrameRateMeter(time_base)
        # The last frame's start and the duration the source gives it (time_base units), and
        # whether a frame lasted far longer than it was shown: then no such duration is believed.
        self._previous: tuple[int, int] | None = None
        self._durations_lie = False
        # A frame that came after a gap or late (see _place), held until the next frame tells.
        self._held: _Held | None = None
        self._captions = CaptionCarry()

    def peak_frame_rate(self) -> Fraction | None:
        peak = self._rate.peak()
        return None if peak is None else min(MAX_FRAME_RATE, peak)

    def believed_time(self, pts: int | None, dts: int | None) -> int | None:
        """Which of a packet's timestamps its picture will be placed by, as things stand."""
        return self._timestamps.believed(pts, dts)

    def has_origin(self) -> bool:
        """Whether the first picture has been placed, fixing the time origin."""
        return self._first_pts is not None

    def origin_seconds(self) -> float:
        return float((self._first_pts or 0) * self.time_base)

    def lead_by(self, seconds: Fraction) -> None:
        """Put the time origin ``seconds`` before the first picture (see :func:`sound_lead`);
        before any frame is pushed."""
        self._lead = round(seconds / self.time_base)

    @property
    def decoded(self) -> int:
        return self.progress.frames_decoded

    def push(self, frame: av.video.frame.VideoFrame) -> None:
        self.progress.frames_decoded += 1
        pts = self._timestamps.best_effort(frame.pts, frame.dts)
        if pts is not None:
            pts *= self._source_ticks
        # A damaged time too far out to count in the timeline's finer ticks is no time at all.
        frame.pts = pts if pts is not None and -_INT64 <= pts < _INT64 else None
        if self._source_ticks != 1:
            duration = (frame.duration or 0) * self._source_ticks
            frame.duration = duration if 0 <= duration < _INT64 else 0
            frame.time_base = self.time_base
        for ready in self._deinterlacer.push(frame):
            self._place(ready)

    def finish(self, sound_end_s: float = 0.0) -> None:
        """Pass on the frames still held back (by the deinterlacer, or after a gap), then fill
        the time the last frame is held, as a gap before a frame would be. ``sound_end_s``
        (where the sound ends, seconds from the first frame) judges a last frame that came
        after a gap (see :meth:`_place_held`)."""
        for ready in self._deinterlacer.flush():
            self._place(ready)
        self._place_held(None, sound_end_s)
        if self._last_placed is not None and self._last_duration > 0:
            # A slideshow or a screen recording that ends on a still holds its last frame for
            # seconds.
            self._fill_gap(self._last_placed.pts + self._last_duration)

    @property
    def end_s(self) -> Fraction:
        """Where the last kept frame stops being shown, in seconds from the first one. A frame
        the source gives no duration is shown for a frame interval, as the rungs show it
        (engine.rung._PacketDurations)."""
        last = self._last_placed
        if last is None:
            return Fraction(0)
        return last.seconds + (last.duration or self._step) * self.time_base

    def hold_last_until(self, seconds: float) -> None:
        """Show the last frame until ``seconds`` (from the first frame, at most the duration
        limit) where the sound goes on for longer than a gap past the picture.

        A browser plays only where picture and sound are both buffered: hls.js stalled for
        good at the end of 2 s of picture whose sound went on to 12 s, once its buffer ahead
        (30 s by default, 3 s in that test) held no more of the sound than of the picture
        (hls.js issue 7543). The last frame is repeated at each segment start, as in a gap, or
        once where it ends if no segment starts before ``seconds``."""
        if self._last_placed is None:
            return
        until = Fraction(min(seconds, self._limit.seconds))
        if until - self.end_s <= MAX_FRAME_INTERVAL_S:
            return
        own_end = self.end_s
        end = math.ceil(until / self.time_base)
        self._fill_gap(end)
        if self.end_s < until:
            self._repeat_last(self.end_s, end)
        self.held_for_sound_s = self.end_s - own_end

    def _place(self, frame: av.video.frame.VideoFrame) -> None:
        self._place_held(frame)
        before, step = self._last_pts, self._step
        pts, alike = self._relative_pts(frame)
        if alike:
            # The next frame tells how much room there is after the last one; until then the
            # next frame's time is measured from the last one, as stamped.
            self._held = _Held(frame, pts, before, step, alike=True)
            self._last_pts = before
            return
        if before >= 0 and pts - before > min(self._max_step, step * 3 // 2):
            # A pause, or one damaged time far ahead (a frame of a 4 s WebM that declares no
            # length, stamped 5 hours on, made the video 5 hours long: 4 s of frames after it,
            # on time again, went on from it); or, within the longest frame interval, a frame
            # stamped late or a dropped frame. The next frame tells.
            self._held = _Held(frame, pts, before, step)
            return
        self._place_at(frame, pts)

    def _place_held(self, following: av.video.frame.VideoFrame | None,
                    sound_end_s: float = 0.0) -> None:
        """Place the frame held after a gap or a long interval, now that ``following`` (None:
        no more frames) shows which it was.

        Stamped like the last frame or a little before it: where the next frame comes about a
        frame interval or more after the last one, it goes halfway between them; otherwise a frame
        interval after the last one (see :meth:`_relative_pts`). Put a frame interval on where
        the next frame was stamped at that very time (a WebM recording on a millisecond clock
        stamped 0.100, 0.100, 0.133), it made that frame a clock reset: every later frame
        moved a frame interval on, and 3 s of such a recording ended 0.37 s after its sound.

        After a gap: where the next frame comes back to just after the frames before the gap
        (within the longest frame interval), its time was damaged and it goes a frame interval
        after them. A next frame stamped a little before it (jitter after a pause) leaves the
        pause as it is.

        After a long interval: where the next frame comes less than half a frame interval
        after it (or at or before it) and at most two intervals after the frames before it,
        it was stamped late (a recorder that wrote a frame a frame late, then the next one on
        time) and goes halfway between its neighbours. Left where it was stamped, it took the
        next frame's place: the next frame went one of these long intervals after it, and the
        one after that, on time again and so behind, counted as a clock reset. 4 s of 30 fps
        with every tenth frame stamped a frame late lost 4 frames to the frame-rate cap and
        ended 0.8 s after its sound.

        The last frame, after a gap, with no next frame to tell: in a file that declares no
        length, where it comes more than ``MAX_AUDIO_LEAD_S`` past both the frames before it
        and the end of the sound (``sound_end_s``), its time was damaged, as sound that far past
        the picture is taken to be, and it goes a frame interval after them. A 2 s live
        Matroska file whose last frame was stamped an hour on came out an hour long, and with
        its sound now filled to the picture's end (engine.audio), took 23 s instead of 9 s."""
        if self._held is None:
            return
        held, self._held = self._held, None
        pts = held.pts
        raw = None if following is None else (
            following.pts if following.pts is not None else following.dts)
        gap = held.pts - held.before > self._max_step
        if following is None:
            reached = max(held.before, math.ceil(sound_end_s / self.time_base))
            if (gap and self._declared_end is None
                    and held.pts - reached > MAX_AUDIO_LEAD_S / self.time_base):
                pts = held.before + held.step
        elif held.alike:
            after = held.before if raw is None else raw - (self._first_pts or 0)
            # (Give or take a quarter: on a millisecond clock 30 fps comes 33 or 34 ms apart.)
            if 4 * (after - held.before) >= 3 * held.step:
                pts = (held.before + after) // 2
                self._halved = True
        elif raw is not None:
            after = raw - (self._first_pts or 0)
            if gap and held.before < after <= held.before + self._max_step:
                pts = held.before + held.step
            elif (not gap and after < held.pts + held.step // 2
                  and after <= held.before + 2 * held.step + held.step // 4):
                pts = (held.before + after) // 2 if after > held.before + 1 else (
                    held.before + held.step)
                self._step = held.step
        if pts != held.pts or held.alike:
            self._last_pts = pts
        self._place_at(held.frame, pts)

    def _place_at(self, frame: av.video.frame.VideoFrame, pts: int) -> None:
        if pts * self.time_base > self._limit.seconds:  # before a gap up to it is filled
            raise UnsupportedSourceError(
                f"source {self._limit.name!r} lasts more than the limit of "
                f"{self._limit.seconds:.0f} s")
        if self._last_placed is None and pts > 0:
            self._show_from_origin(frame, pts)
        self._fill_gap(pts)
        claimed = max(0, frame.duration or 0)
        if self._previous is not None:
            before, lasted = self._previous
            if lasted > max(DURATION_LIE_FACTOR * (pts - before), round(1 / self.time_base)):
                self._durations_lie = True
        self._previous = (pts, claimed)
        duration = self._shown_for(claimed, pts)
        placed = self.schedule.place(pts, self.time_base, duration)
        captions = frame_captions(frame)
        if placed is None:
            self.over_cap += 1
            self._captions.drop(captions)
            return
        self._last_duration = duration
        self._rate.add(placed.pts)
        carried = self._captions.keep(captions)
        self._keep(self._map(self._normalise(frame)),
                   replace(placed, captions=carried) if carried else placed)

    def _show_from_origin(self, first: av.video.frame.VideoFrame, pts: int) -> None:
        """Show the first picture, placed at ``pts`` after sound that starts before it (see
        :func:`sound_lead`), from the time origin up to there: every rendition starts at the
        origin (browsers play only where picture and sound are both buffered)."""
        placed = self.schedule.place(0, self.time_base, pts)
        if placed is not None:
            self._keep(_copy(self._map(self._normalise(first))), placed)

    def _keep(self, frame: av.video.frame.VideoFrame, placed: FrameTime) -> None:
        frame.pts = placed.pts
        frame.time_base = self.time_base
        self._last_placed = placed
        self._last_frame = frame
        self.kept += 1
        self.sink(frame, placed)

    def _map(self, frame: av.video.frame.VideoFrame) -> av.video.frame.VideoFrame:
        """``frame`` (normalised) mapped to SDR, if this decoder maps."""
        if self._tone_map is None:
            return frame
        if self._tone_mapper is None:
            self._tone_mapper = ToneMapper(self._tone_map, frame.width, frame.height)
        return self._tone_mapper.map(frame)

    def _normalise(self, frame: av.video.frame.VideoFrame) -> av.video.frame.VideoFrame:
        """4:2:0 in the decoder's format, at the first frame's size: a stream whose picture size
        changes part way (spliced recordings) has its later frames fitted into that size, so
        every stage after this one sees one size (the frame cache and the rungs' scalers are
        sized once)."""
        if frame.colorspace not in _SCALER_MATRICES:
            frame.colorspace = UNSPECIFIED
        if self._size is None:
            self._size = (frame.width, frame.height)
            self._shape = self._display_aspect(frame)
            self._black = (0 if Colour.of(frame).full_range
                           else _VIDEO_RANGE_BLACK << self._depth_shift)
        width, height = self._size
        if (frame.width, frame.height) != self._size:
            return self._fitted(frame, width, height)
        if frame.format.name != self._format:
            frame = self._converter.reformat(frame, format=self._format)
        return frame

    def _display_aspect(self, frame: av.video.frame.VideoFrame) -> Fraction:
        # PyAV's frames do not carry their sample aspect ratio; the decoder holds the latest.
        return Fraction(frame.width, frame.height) * sample_aspect(self._codec.sample_aspect_ratio)

    def _fitted(self, frame: av.video.frame.VideoFrame, width: int,
                height: int) -> av.video.frame.VideoFrame:
        """``frame`` scaled into ``width`` x ``height``, its shape as shown kept, centred on
        black: a portrait clip spliced after a landscape one is pillarboxed, as a player would
        show it, not stretched into the landscape shape."""
        wider = self._display_aspect(frame) / self._shape
        inner_width, inner_height = width, height
        # Even sizes and offsets keep 4:2:0's chroma with its luma (a frame 1 pixel high
        # cannot have bars above and below it).
        if wider > 1 + ASPECT_TOLERANCE:
            inner_height = min(height, max(2, 2 * round(height / wider / 2)))
        elif wider < 1 - ASPECT_TOLERANCE:
            inner_width = min(width, max(2, 2 * round(width * wider / 2)))
        inner = self._converter.reformat(frame, width=inner_width, height=inner_height,
                                         format=self._format)
        if (inner_width, inner_height) == (width, height):
            return inner
        out = av.video.frame.VideoFrame(width, height, self._format)
        left, top = (width - inner_width) // 4 * 2, (height - inner_height) // 4 * 2
        for index, (source, target) in enumerate(zip(inner.planes, out.planes, strict=True)):
            shift = 0 if index == 0 else 1
            pixels = plane_array(target, self._sample)
            pixels[:] = self._black if index == 0 else _NEUTRAL_CHROMA << self._depth_shift
            pixels[top >> shift:(top >> shift) + source.height,
                   left >> shift:(left >> shift) + source.width] = plane_array(source,
                                                                               self._sample)
        return out

    def _shown_for(self, duration: int, pts: int) -> int:
        """How long the frame at ``pts`` is shown, of the ``duration`` the source gives it, as
        far as that is trusted. It only counts for the last
        frame (the next frame's start ends the others), and a bogus duration on the last
        packet would make the last segment hours long, or fill it with hours of copies (see
        finish): no frame lasts past the video's declared length (give or take a frame: some
        containers round it, some leave the last frame out), or longer than a gap between
        frames when no length is declared, or than a frame interval once a frame has lasted
        far longer than the time to the next one."""
        if self._durations_lie:
            # A Matroska file whose default duration says 1000 s while its frames come every
            # 33 ms held its last frame for 1000 s (both its length and the frames' durations
            # come from that default).
            return min(duration, self._step)
        if self._declared_end is None:
            return min(duration, self._max_step)
        return max(0, min(duration, self._declared_end + self._step - pts))

    def _fill_gap(self, pts: int) -> None:
        """Repeat the last frame at each segment start inside a long gap before ``pts``.

        A segment lasts until the first frame at or after the next segment start, so a source
        that stops showing new frames for a while (a paused camera, a still screen recording)
        would make one segment as long as the gap. Players and growing playlists need every
        segment close to the segment length (EXT-X-TARGETDURATION cannot grow), so each segment
        start in the gap gets a copy of the last frame, which becomes its keyframe.
        """
        if self._last_placed is None:
            return
        segment = self.schedule.segment_seconds
        now = pts * self.time_base
        start = (self._last_placed.pts * self.time_base // segment + 1) * segment
        while start + GAP_TOLERANCE_S < now:
            # Until the frame after the gap, which is what the last copy lasts.
            self._repeat_last(start, pts)
            start += segment

    def _repeat_last(self, at: Fraction, until: int) -> None:
        """Keep a copy of the last frame at ``at`` (seconds from the first frame), shown until
        ``until`` (time_base units): never closer to the last frame than the frame-rate cap
        allows, or the schedule would drop it."""
        assert self._last_placed is not None and self._last_frame is not None
        at = max(at, self._last_placed.pts * self.time_base + 1 / MAX_FRAME_RATE)
        repeat_pts = math.ceil(at / self.time_base)
        placed = self.schedule.place(repeat_pts, self.time_base, until - repeat_pts)
        if placed is not None:
            self._keep(_copy(self._last_frame), placed)

    def jumps_past_end(self, pts: int, last: int) -> bool:
        """Whether video at ``pts`` after video up to ``last`` (time_base units from the time
        origin) comes after a gap and past the end the source declares (give or take the
        longest frame interval): a damaged timestamp, not a pause."""
        return (self._declared_end is not None and last >= 0
                and pts - last > self._max_step
                and pts > self._declared_end + self._max_step)

    def _relative_pts(self, frame: av.video.frame.VideoFrame) -> tuple[int, bool]:
        """The frame's time (time_base units from the first frame), and whether it was stamped
        like the last frame or a little before it, so that where it goes waits for the next
        frame (see :meth:`_place_held`)."""
        # Real uploads have missing, repeated and backwards timestamps: keep them increasing so
        # every muxer downstream accepts them, and keep gaps (they are real time).
        raw = frame.pts if frame.pts is not None else frame.dts
        if self._first_pts is None:
            lead = self._lead if raw is not None else 0
            self._first_pts = (raw or 0) - lead
            if self._declared_end is not None:
                self._declared_end += lead
            self.progress.origin_s = self.origin_seconds()
        behind, self._behind = self._behind, False
        halved, self._halved = self._halved, False
        alike = False
        if raw is None:
            # The first frame starts the timeline at 0, wherever its timestamp went (a
            # Matroska file whose first frames are before its start has none on them).
            pts = self._last_pts + self._step if self._last_pts >= 0 else 0
        else:
            pts = raw - self._first_pts
            if self._last_pts >= 0 and pts < self._last_pts + self._too_close:
                # Time stood still, went back, or moved on by too little for the frame to be
                # seen (the ffmpeg CLI passing a variable rate into MP4 set frames stamped alike
                # a tick apart: 40 of 180 frames fell to the frame-rate cap): the frame goes one
                # frame interval after the last. By more than the longest frame interval, or for
                # a second frame running, the clock was reset (recordings joined end to end, a
                # broken muxer) or the last frame was stamped late (damage): the following
                # timestamps count from there, so they keep their own spacing (adding a single
                # tick instead squeezed every later frame into the frame-rate cap, which dropped
                # them). By less, for one frame, it was stamped alike or a little early (a muxer
                # that wrote two frames at one time, a recorder's jitter): the frames after it
                # keep their times, and the next one tells where it goes (:meth:`_place_held`).
                # Counted from it, each such frame had put every later one a frame interval
                # later: 4 s of 60 fps stamped in pairs played for 8 s, a frame interval behind
                # its sound more with each pair.
                back = self._last_pts - pts
                pts = self._last_pts + self._step
                if back > self._max_step or behind:
                    self._first_pts = raw - pts
                else:
                    alike = True
                self._behind = True
            elif self.jumps_past_end(pts, self._last_pts):
                # A damaged timestamp, not a pause: the gap up to it would be filled with the
                # last picture (a 2 s FLV whose one frame was stamped an hour on came out an
                # hour long). It goes a frame interval after the last frame, and the origin
                # stays, so the frames after it, on time again, keep their places, and so
                # does the sound (an origin moved an hour on put the sound read meanwhile an
                # hour before the first picture).
                pts = self._last_pts + self._step
            elif (self._last_pts >= 0 and pts - self._last_pts <= self._max_step
                  and not halved):
                self._step = pts - self._last_pts
        self._last_pts = pts
        return pts, alike


class _TimestampGuess:
    """Which of a decoded frame's timestamps to believe: FFmpeg's own guess (libavcodec's
    best-effort timestamp, which the ffmpeg CLI uses and PyAV does not expose). The
    presentation timestamp, unless it has gone backwards more often than the decode timestamp.

    An AVI with "packed B-frames" (DivX 5, Xvid) stores a B-frame with the P-frame before it
    and an empty placeholder in its own place, so the frames come out of the decoder in the
    right order with their presentation timestamps swapped in pairs (4, 5, 7, 6, 8, 10, 9 ...),
    while their decode timestamps count up. Taken as they are, every pair went back in time
    and the video played at half speed.

    With ``decode_order`` (AVI, see :data:`DECODE_ORDER_PTS`) the decode timestamp is always
    believed: the container has no presentation time, and FFmpeg numbers its chunks in the
    order they are stored, so H.264 with B-frames came out as 1, 4, 3, 5, 2, 8, 7, 9, 6 ...
    Believed until the guess above turned (a few frames in) and again for the last frames
    (the decoder's flush, which have no decode timestamp), those made 2 s of video last
    2.23 s, every step back being a frame interval added. A decode timestamp runs the
    decoder's delay behind, which the first frame (a keyframe, first in either order) tells;
    it is taken off, so the sound stays in time.

    A frame with no decode timestamp, once those are believed, comes one decode interval after
    the last: the frames the decoder gives back when it is flushed."""

    def __init__(self, decode_order: bool = False) -> None:
        self._decode_order = decode_order
        self._faulty_pts = 0
        self._faulty_dts = 0
        self._last_pts: int | None = None
        self._last_dts: int | None = None
        self._dts_step = 1
        self._delay: int | None = None

    def best_effort(self, pts: int | None, dts: int | None) -> int | None:
        use_dts = self._decode_order or self._faulty_pts > self._faulty_dts
        if dts is None and use_dts and self._last_dts is not None:
            dts = self._last_dts + self._dts_step
        if dts is not None:
            self._faulty_dts += self._last_dts is not None and dts <= self._last_dts
            if self._last_dts is not None and dts > self._last_dts:
                self._dts_step = dts - self._last_dts
            self._last_dts = dts
        elif pts is not None:
            self._last_dts = pts
        if pts is not None:
            self._faulty_pts += self._last_pts is not None and pts <= self._last_pts
            self._last_pts = pts
        elif dts is not None:
            self._last_pts = dts
        if self._decode_order and dts is not None and self._delay is None:
            self._delay = max(0, dts - pts) if pts is not None else 0
        return self.believed(pts, dts)

    def believed(self, pts: int | None, dts: int | None) -> int | None:
        """The timestamp believed of those given, as things stand: what :meth:`best_effort`
        returns for a frame once it has counted it, without counting (for a packet)."""
        if not self._decode_order:
            if pts is not None and (dts is None or self._faulty_pts <= self._faulty_dts):
                return pts
            return dts
        if dts is None:
            return pts
        return dts - (self._delay or 0)


def _copy(frame: av.video.frame.VideoFrame) -> av.video.frame.VideoFrame:
    """A new frame with the same pictures (its own pts; the sinks may still hold the original)."""
    out = av.video.frame.VideoFrame(frame.width, frame.height, frame.format.name)
    sample = sample_type(frame.format.name)
    for source, target in zip(frame.planes, out.planes, strict=True):
        plane_array(target, sample)[:] = plane_array(source, sample)
    return out


def frame_format(colour: Colour) -> str:
    """The pixel format the decoder passes a ``colour`` source's frames on in."""
    return HDR_PIXEL_FORMAT if colour.hdr else PIXEL_FORMAT


def sample_type(pixel_format: str) -> type[np.unsignedinteger[Any]]:
    """The numpy type of one sample of a planar ``pixel_format`` (8 bits or more)."""
    bits = av.video.format.VideoFormat(pixel_format).components[0].bits
    return np.uint8 if bits <= 8 else np.uint16


def plane_array(plane: av.video.plane.VideoPlane,
                sample: type[np.unsignedinteger[Any]] = np.uint8) -> np.ndarray:
    """A writable numpy view of a plane's visible samples (without line padding), of type
    ``sample`` (see :func:`sample_type`)."""
    size = np.dtype(sample).itemsize
    rows = np.frombuffer(memoryview(plane), dtype=sample).reshape(-1, plane.line_size // size)
    view: np.ndarray = rows[: plane.height, : plane.width]
    return view
