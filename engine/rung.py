"""One rung's thread of work: its own scaler, its own encoder with forced IDRs, its segments."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av.error
import av.video.frame
import av.video.stream
from av.video.frame import PictureType

from engine.errors import EncoderError, JobCancelledError
from engine.fanout import Item
from engine.gop import TIMELINE_START
from engine.hwaccel import encoder_options
from engine.ladder import MAX_FRAME_RATE, Rung
from engine.scale import Scaler
from engine.segment import HlsWriter, SegmentRecord, avc1_codecs


@dataclass(frozen=True)
class EncodedRung:
    """A rung whose segments are all complete on disk."""

    rung: Rung
    encoder: str
    #: Folder of the rung, relative to the job's output directory.
    folder: str
    init_uri: str | None
    segments: tuple[SegmentRecord, ...]
    #: RFC 6381 string of the encoded video, read from its SPS.
    codecs: str
    frames: int
    encode_seconds: float


@dataclass
class RungProgress:
    """Counters a rung thread updates and the job reads (plain ints: no lock needed)."""

    frames_done: int = 0
    started_at: float | None = None


@dataclass(frozen=True)
class EncodeSettings:
    """What every rung of a job shares."""

    segment_seconds: Fraction
    segment_type: str
    time_base: Fraction
    rotation: int
    #: Added to the rung thread's nice value (Linux: per thread); 0 leaves it alone.
    nice: int = 0


def encode_rung(rung: Rung, encoder: str, frames: Iterator[Item], out_dir: Path,
                settings: EncodeSettings, cancel: threading.Event,
                progress: RungProgress) -> EncodedRung:
    """Encode every frame from ``frames`` into ``out_dir/<rung name>/``; close the segments."""
    if settings.nice:
        lower_thread_priority(settings.nice)
    progress.started_at = time.monotonic()
    writer = HlsWriter(out_dir / rung.name, settings.segment_seconds, settings.segment_type)
    try:
        stream = writer.container.add_stream(encoder, rate=rung.frame_rate)
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height, stream.pix_fmt = rung.width, rung.height, "yuv420p"
        stream.time_base = settings.time_base
        # The encoder must work in the source's time base too: left unset it defaults to
        # 1/frame_rate, and PyAV rebases every frame's pts into it, which for a variable-frame-
        # rate source (average rate below the peak) rounds neighbouring frames onto one tick.
        stream.codec_context.time_base = settings.time_base
        gop = 2 * math.ceil(settings.segment_seconds * MAX_FRAME_RATE)
        stream.codec_context.options = encoder_options(encoder, rung, gop)
        scaler = Scaler(rung.width, rung.height, settings.rotation)
        durations = _PacketDurations(round(1 / (rung.frame_rate * settings.time_base)))
        start = round(TIMELINE_START / settings.time_base)
        for frame, when in frames:
            if cancel.is_set():
                raise JobCancelledError(f"{rung.name} cancelled")
            durations.frame(start + when.pts, when.duration)
            out = scaler.scale(frame)
            out.pts = start + when.pts
            out.time_base = settings.time_base
            out.pict_type = PictureType.I if when.keyframe else PictureType.NONE
            writer.mux(durations.ready(_encode(stream, out, encoder)))
            progress.frames_done += 1
        writer.mux(durations.finish(_encode(stream, None, encoder)))
        codecs = avc1_codecs(bytes(stream.codec_context.extradata or b""))
        segments = writer.close()
    except BaseException:
        writer.abort()
        raise
    return EncodedRung(
        rung=rung, encoder=encoder, folder=rung.name, init_uri=writer.init_uri,
        segments=tuple(segments), codecs=codecs, frames=progress.frames_done,
        encode_seconds=time.monotonic() - progress.started_at,
    )


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
