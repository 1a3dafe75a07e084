"""One rung's thread of work: its own scaler, its own encoder with forced IDRs, its segments."""

from __future__ import annotations

import enum
import itertools
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av.error
import av.video.codeccontext
import av.video.frame
import av.video.stream
from av.video.frame import PictureType
from av.video.reformatter import ColorRange

from engine.captions import channels, with_captions
from engine.errors import EncoderError, JobCancelledError
from engine.fanout import Item
from engine.gop import TIMELINE_START, FrameTime
from engine.hwaccel import SOFTWARE_ENCODER, encoder_options
from engine.ladder import MAX_FRAME_RATE, Rung
from engine.probe import Colour, Orientation
from engine.scale import Scaler
from engine.segment import INIT_SEGMENT, HlsWriter, SegmentRecord, avc1_codecs
from engine.tonemap import mapped_as


def encoder_gop(segment: Fraction) -> int:
    """The GOP length the encoder is given: two segments at the highest frame rate, so its own
    keyframes never come before the ones the schedule forces at each segment start."""
    return 2 * math.ceil(segment * MAX_FRAME_RATE)


@dataclass(frozen=True)
class EncodedRung:
    """A rung whose segments are all complete on disk."""

    rung: Rung
    #: The encoder that finished the rung.
    encoder: str
    #: Folder of the rung, relative to the job's output directory.
    folder: str
    segments: tuple[SegmentRecord, ...]
    #: RFC 6381 string of the encoded video, read from its SPS.
    codecs: str
    #: The CEA-608 channels its pictures carry captions on (engine.captions.channels).
    captions: frozenset[str]
    #: Whether its pictures carry caption data of any kind (CEA-708 alone names no channel).
    captioned: bool
    frames: int
    encode_seconds: float


@dataclass
class RungProgress:
    """Counters a rung thread updates and the job reads (plain ints: no lock needed)."""

    frames_done: int = 0
    started_at: float | None = None


class EncoderThreads(enum.Enum):
    """How libx264 spreads one rung over the cores (other encoders choose for themselves)."""

    #: PyAV's default: each frame cut into slices encoded in parallel. The first packet comes
    #: at once, but every slice is predicted on its own, which costs quality.
    SLICES = "slices"
    #: Whole frames in parallel: the most throughput, a few frames of delay.
    FRAMES = "frames"
    #: One thread: no delay and no slices' loss, for a rung that needs no more.
    ONE = "one"


def encoder_threads(lead: bool, rung: Rung, source_pixels: int) -> EncoderThreads:
    """The threading of ``rung``'s libx264 encoder; ``lead``: the first rung, encoded while
    the source is decoded.

    The rungs behind the first use frame threads: on the 4 s 4K sample their job took 8% less
    time (33.4 vs 36.4 s) and 5% less CPU than with slices, for about 330 MB more peak RSS. The
    first rung keeps up with the decoder it runs beside on one thread when it is an ultrafast
    encode of at most half the source's pixels: on 10 s of 4K on two cores, time to playable
    was 5.45 s on one thread vs 5.39 s with slices, from 1080p 3.10 vs 3.11 s (medians of 6
    and 4), and the 720p PSNR rose from 18.47 / 18.53 dB (slices, two runs) to 18.57. From a
    720p source one thread was 7% slower (2.78 vs 2.60 s), so there it keeps slices.
    """
    if not lead:
        return EncoderThreads.FRAMES
    if rung.preset == "ultrafast" and 2 * rung.width * rung.height <= source_pixels:
        return EncoderThreads.ONE
    return EncoderThreads.SLICES


@dataclass(frozen=True)
class EncodeSettings:
    """What every rung of a job shares."""

    segment_seconds: Fraction
    segment_type: str
    time_base: Fraction
    orientation: Orientation
    #: Added to the rung thread's nice value (Linux: per thread); 0 leaves it alone.
    nice: int = 0
    #: The source's colour description, which every rung is tagged with (an HDR source's
    #: rungs are mapped to SDR BT.709, and tagged so: see engine.tonemap).
    colour: Colour = field(default_factory=Colour)
    #: How libx264 uses the cores (see :func:`encoder_threads`).
    threads: EncoderThreads = EncoderThreads.SLICES


@dataclass(frozen=True)
class Fallback:
    """A rung's encoder failed mid-stream and the rung goes on with another."""

    rung: str
    failed: str
    encoder: str
    #: First segment the new encoder writes (every earlier one was closed and is kept).
    segment: int
    reason: str


def encode_rung(rung: Rung, encoder: str, frames: Iterator[Item], out_dir: Path,
                settings: EncodeSettings, cancel: threading.Event, progress: RungProgress,
                fallback: str | None = None,
                on_fallback: Callable[[Fallback], None] | None = None,
                on_segment: Callable[[list[SegmentRecord], str, frozenset[str]], None]
                | None = None,
                ) -> EncodedRung:
    """Encode every frame from ``frames`` into ``out_dir/<rung name>/``; close the segments.

    ``on_segment`` is called with every segment closed so far, the codecs string and the
    caption channels seen so far each time one more is complete (for early playback).

    With ``fallback`` set, an encoder that fails mid-stream is replaced by ``fallback`` from the
    first segment its muxer had not closed: the scaled frames since then are kept for that, so
    nothing is decoded twice. Only hardware encoders get a fallback, since keeping frames costs
    memory.
    """
    if settings.nice:
        lower_thread_priority(settings.nice)
    scaler = Scaler(rung.width, rung.height, settings.orientation,
                    full_range=settings.colour.full_range, colour=settings.colour)
    with _ScaledAhead(frames, scaler, settings.nice, cancel, rung.name) as scaled:
        return _encode_scaled(rung, encoder, iter(scaled), out_dir, settings, cancel, progress,
                              fallback, on_fallback, on_segment)


def _encode_scaled(rung: Rung, encoder: str, frames: Iterator[Item], out_dir: Path,
                   settings: EncodeSettings, cancel: threading.Event, progress: RungProgress,
                   fallback: str | None,
                   on_fallback: Callable[[Fallback], None] | None,
                   on_segment: Callable[[list[SegmentRecord], str, frozenset[str]], None]
                   | None,
                   ) -> EncodedRung:
    # A rung waiting for its turn (engine.fanout) opens its encoder only when its frames come.
    first = next(frames, None)
    if first is not None:
        frames = itertools.chain([first], frames)
    progress.started_at = time.monotonic()
    start = round(TIMELINE_START / settings.time_base)
    closed: list[SegmentRecord] = []
    captions: set[str] = set()
    captioned = False

    def segment_closed(output: _Output, records: list[SegmentRecord]) -> None:
        # Not before one is: a rung listed with no segment is a master that lists nothing.
        if on_segment is not None and (closed or records):
            on_segment(closed + records, output.codecs(), frozenset(captions))

    output = _Output(rung, encoder, out_dir / rung.name, settings, on_closed=segment_closed)
    codecs: list[str] = []
    replay: _Replay | None = _Replay() if fallback else None
    try:
        for out, when in frames:
            if cancel.is_set():
                raise JobCancelledError(f"{rung.name} cancelled")
            out.pts = start + when.pts
            out.time_base = settings.time_base
            out.pict_type = PictureType.I if when.keyframe else PictureType.NONE
            if when.captions:
                captions |= channels(when.captions)
                captioned = True
            if replay is not None:
                replay.add(out, when, output.open_segment)
            try:
                output.encode(out, when)
            except EncoderError as exc:
                if replay is None or fallback is None:
                    raise
                codecs.append(output.codecs())
                closed += output.abandon()
                output = _Output(rung, fallback, out_dir / rung.name, settings, len(closed),
                                 segment_closed)
                if on_fallback is not None:
                    on_fallback(Fallback(rung.name, encoder, fallback, len(closed), str(exc)))
                for kept, kept_when in replay.frames():
                    output.encode(kept, kept_when)
                replay = None
            progress.frames_done += 1
        codecs.append(output.codecs())
        segments = closed + output.finish()
    except BaseException:
        output.abort()
        raise
    return EncodedRung(
        rung=rung, encoder=output.encoder, folder=rung.name, segments=tuple(segments),
        codecs=max(codecs, key=_profile_and_level), captions=frozenset(captions),
        captioned=captioned, frames=progress.frames_done,
        encode_seconds=time.monotonic() - progress.started_at,
    )


class _ScaledAhead:
    """Scales a rung's frames on a thread of its own, a few frames ahead of its encoder.

    Taking a cached frame back (read from disk, for the later rungs) and scaling it cost about
    as much as handing it to x264; done on the encoding thread, x264's own threads waited for
    each frame. This thread alone uses ``scaler`` (see engine.scale). A rung that fails ends
    the job, so leaving with an error sets ``cancel``, which also wakes a reader waiting for
    frames (engine.fanout), before the thread is joined.
    """

    DEPTH = 2

    def __init__(self, frames: Iterator[Item], scaler: Scaler, nice: int,
                 cancel: threading.Event, name: str) -> None:
        self._frames = frames
        self._scaler = scaler
        self._nice = nice
        self._cancel = cancel
        self._queue: queue.Queue[Item | _Done] = queue.Queue(self.DEPTH)
        self._left = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"scale-{name}", daemon=True)

    def __enter__(self) -> _ScaledAhead:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is not None:
            self._cancel.set()
        self._left.set()
        self._thread.join()

    def __iter__(self) -> Iterator[Item]:
        while not isinstance(item := self._queue.get(), _Done):
            yield item
        if item.error is not None:
            raise item.error

    def _run(self) -> None:
        if self._nice:
            lower_thread_priority(self._nice)
        try:
            for frame, when in self._frames:
                if not self._put((self._scaler.scale(frame), when)):
                    return
            self._put(_Done())
        except BaseException as exc:  # raised in the encoding thread
            self._put(_Done(exc))

    def _put(self, item: Item | _Done) -> bool:
        """Queue ``item``; False once the encoding thread has left."""
        while not self._left.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False


@dataclass(frozen=True)
class _Done:
    """The end of a rung's frames, or the error that ended them."""

    error: BaseException | None = None


#: How often a thread waiting to hand on a frame checks whether it should stop.
_POLL_S = 0.1


def _profile_and_level(codecs: str) -> tuple[int, int]:
    """``avc1.PPCCLL`` as (profile, level), so the master can name what covers every segment."""
    code = codecs.split(".")[1]
    return int(code[:2], 16), int(code[4:6], 16)


class _Output:
    """One encoder and the HLS writer it feeds, from segment ``first_segment`` on."""

    def __init__(self, rung: Rung, encoder: str, directory: Path, settings: EncodeSettings,
                 first_segment: int = 0,
                 on_closed: Callable[[_Output, list[SegmentRecord]], None] | None = None,
                 ) -> None:
        self.encoder = encoder
        self.on_closed = on_closed
        self.first_segment = first_segment
        # A later encoder's parameter sets differ: it needs its own initialisation segment.
        init = INIT_SEGMENT if first_segment == 0 else f"init_{first_segment}.mp4"
        self.writer = HlsWriter(directory, settings.segment_seconds, settings.segment_type,
                                first_segment, init)
        try:
            stream = self.writer.container.add_stream(encoder, rate=rung.frame_rate)
            assert isinstance(stream, av.video.stream.VideoStream)
            stream.width, stream.height, stream.pix_fmt = rung.width, rung.height, "yuv420p"
            stream.time_base = settings.time_base
            # The encoder must work in the source's time base too: left unset it defaults to
            # 1/frame_rate, and PyAV rebases every frame's pts into it, which for a variable-
            # frame-rate source (average rate below the peak) rounds neighbouring frames onto
            # one tick.
            stream.codec_context.time_base = settings.time_base
            stream.codec_context.options = encoder_options(encoder, rung,
                                                           encoder_gop(settings.segment_seconds))
            _tag_colour(stream.codec_context, mapped_as(settings.colour))
            if encoder == SOFTWARE_ENCODER:
                if settings.threads is EncoderThreads.FRAMES:
                    stream.codec_context.thread_type = "FRAME"
                elif settings.threads is EncoderThreads.ONE:
                    stream.codec_context.thread_count = 1
        except BaseException:
            self.writer.abort()
            raise
        self.stream = stream
        self._start = round(TIMELINE_START / settings.time_base)
        self._durations = _PacketDurations(round(1 / (rung.frame_rate * settings.time_base)))
        self._keyframes_muxed = 0
        #: Caption triples of the frames the encoder holds, by presentation time.
        self._captions: dict[int, bytes] = {}
        #: Where the open segment starts and where the frames muxed so far end, in seconds.
        self._segment_start: Fraction | None = None
        self._end = Fraction(0)

    @property
    def open_segment(self) -> int:
        """The first segment its muxer has not closed (it closes one at the next keyframe)."""
        return self.first_segment + max(0, self._keyframes_muxed - 1)

    def encode(self, frame: av.video.frame.VideoFrame, when: FrameTime) -> None:
        self._durations.frame(self._start + when.pts, when.duration)
        if when.captions:
            self._captions[self._start + when.pts] = when.captions
        self._mux(self._durations.ready(_encode(self.stream, frame, self.encoder)))

    def codecs(self) -> str:
        return avc1_codecs(bytes(self.stream.codec_context.extradata or b""))

    def finish(self) -> list[SegmentRecord]:
        """Flush the encoder and close the writer; every segment it wrote."""
        self._mux(self._durations.finish(_encode(self.stream, None, self.encoder)))
        records = self.writer.close()
        if records and self._segment_start is not None:
            # The muxer measures a segment by the next one's start, the last one by adding up
            # its packets' durations, all but the first: a last segment that opens with a long
            # frame (a picture repeated in a gap) was listed short (0.53 s for 1 s).
            records[-1] = replace(records[-1],
                                  duration_s=float(self._end - self._segment_start))
        return self._mark(records)

    def abandon(self) -> list[SegmentRecord]:
        """Stop after an encoder failure; the segments that were closed before it."""
        records = self.writer.close()
        return self._mark(records[: self.open_segment - self.first_segment])

    def abort(self) -> None:
        self.writer.abort()

    def _mux(self, packets: list[av.Packet[Any]]) -> None:
        if self._captions:
            packets = [with_captions(p, self._captions.pop(p.pts, b"")) if p.pts is not None
                       else p for p in packets]
        for packet in packets:
            if packet.pts is None or packet.time_base is None:
                continue
            start = packet.pts * packet.time_base
            if packet.is_keyframe:
                self._segment_start = start
            self._end = max(self._end, start + (packet.duration or 0) * packet.time_base)
        keyframes = sum(1 for p in packets if p.is_keyframe)
        self.writer.mux(packets)
        self._keyframes_muxed += keyframes
        # The muxer closes a segment when the next one's keyframe arrives.
        if keyframes and self._keyframes_muxed > 1 and self.on_closed is not None:
            self.on_closed(self, self._mark(self.writer.closed_segments()))

    def _mark(self, records: list[SegmentRecord]) -> list[SegmentRecord]:
        if self.first_segment and records:
            records[0] = replace(records[0], discontinuity=True)
        return records


class _Replay:
    """Scaled frames of the segments an encoder's muxer has not closed yet."""

    def __init__(self) -> None:
        self._frames: deque[tuple[int, av.video.frame.VideoFrame, FrameTime]] = deque()
        self._segment = -1

    def add(self, frame: av.video.frame.VideoFrame, when: FrameTime, open_segment: int) -> None:
        if when.keyframe:
            self._segment += 1
        while self._frames and self._frames[0][0] < open_segment:
            self._frames.popleft()
        self._frames.append((self._segment, frame, when))

    def frames(self) -> list[tuple[av.video.frame.VideoFrame, FrameTime]]:
        return [(frame, when) for _, frame, when in self._frames]


class _PacketDurations:
    """Gives every encoded packet the real duration of its frame before it is muxed.

    libx264 hands back packets without a duration, and FFmpeg's muxers then assume
    1/frame rate for each. With a variable frame rate that is wrong, and the HLS muxer sums packet
    durations for the last segment's EXTINF (and the MP4 muxer uses them for each fragment's last
    sample). A frame lasts until the next one starts, so a packet is held back until the frame
    after it has arrived; the last frame lasts as long as the source says.
    """

    def __init__(self, default: int) -> None:
        self._default = max(1, default)
        self._durations: dict[int, int] = {}
        self._last: tuple[int, int] | None = None  # (pts, duration the source gives)
        self._pending: list[av.Packet[Any]] = []

    def frame(self, pts: int, duration: int) -> None:
        """Note the next frame given to the encoder (in presentation order)."""
        if self._last is not None:
            self._durations[self._last[0]] = pts - self._last[0]
        self._last = (pts, duration)

    def ready(self, packets: list[av.Packet[Any]]) -> list[av.Packet[Any]]:
        """The packets, in encoder order, whose durations are known, with them set."""
        self._pending += packets
        done = 0
        for packet in self._pending:
            if packet.pts is not None:  # no pts: nothing to look up, let the muxer guess
                if packet.pts not in self._durations:
                    break
                packet.duration = self._durations.pop(packet.pts)
            done += 1
        out, self._pending = self._pending[:done], self._pending[done:]
        return out

    def finish(self, packets: list[av.Packet[Any]]) -> list[av.Packet[Any]]:
        """The remaining packets, after the encoder is flushed; none is ever held back."""
        if self._last is not None:
            pts, duration = self._last
            self._durations[pts] = duration or self._default
        out = self.ready(packets)
        out, self._pending = out + self._pending, []
        return out


def _encode(stream: av.video.stream.VideoStream, frame: av.video.frame.VideoFrame | None,
            encoder: str) -> list[av.Packet[Any]]:
    try:
        return stream.encode(frame)
    except av.error.FFmpegError as exc:
        raise EncoderError(f"encoder {encoder} failed: {exc}") from exc


def _tag_colour(context: av.video.codeccontext.VideoCodecContext, colour: Colour) -> None:
    """Write the source's colour description into the encoded stream (the scaler has made
    its samples video range)."""
    context.color_range = ColorRange.MPEG
    context.colorspace = colour.matrix
    context.color_primaries = colour.primaries
    context.color_trc = colour.transfer


def lower_thread_priority(nice: int) -> None:
    """Make the calling thread (and encoder threads it starts later) yield to the first rung.

    Linux schedules threads separately, so a later rung's x264 threads, which inherit this
    value, only take CPU the first rung and the decoder leave idle.
    """
    if hasattr(os, "setpriority") and hasattr(threading, "get_native_id"):
        try:
            current = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, current + nice))
        except OSError:
            pass
