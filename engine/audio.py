"""The source's audio (each track :mod:`engine.probe` keeps), encoded once to AAC-LC and shared
by every rung.

Each track is its own HLS rendition (``EXT-X-MEDIA`` group ``audio``) that every variant points
to, so it is encoded and stored once however many rungs there are.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av.audio.frame
import av.audio.stream
import av.error
import numpy as np

from engine.errors import JobCancelledError
from engine.gop import TIMELINE_START
from engine.segment import HlsWriter, SegmentRecord

log = logging.getLogger(__name__)

#: The main track's folder; the others' are ``audio2``, ``audio3`` ... (see :func:`audio_folder`).
AUDIO_FOLDER = "audio"
#: The name of every folder :func:`audio_folder` gives.
AUDIO_FOLDERS = re.compile(rf"{AUDIO_FOLDER}\d*")
#: Samples per AAC frame.
FRAME_SAMPLES = 1024
AAC_LC_CODECS = "mp4a.40.2"
#: A frame starting this much later than the samples before it end leaves a gap (a paused
#: recording, a dropout), kept as silence; less is decoder jitter, closed up.
MAX_AUDIO_GAP_S = 0.1
#: Largest sample magnitude passed to the encoder: full scale is 1.0, and one far beyond it is
#: damage (the encoder's transform of 1e38 overflows).
MAX_SAMPLE = 1e4
#: The lowest sample rate a sound is taken at: codecs go down to 8 kHz (telephony) and 5.5 kHz
#: (old Flash), and a lower rate is damage. Sound is laid end to end by its samples, so a
#: damaged MOV's 2 Hz made its 1 s of 48 kHz sound last 6.7 hours (the picture held to it).
MIN_SAMPLE_RATE = 4000
#: Silence is queued at most this much at a time (a gap of hours must not fill memory).
_SILENCE_CHUNK_S = 1


@dataclass(frozen=True)
class AudioSettings:
    """Output audio; the defaults play everywhere."""

    sample_rate: int = 48000
    channels: int = 2
    bitrate: int = 128_000


def audio_folder(number: int) -> str:
    """The folder of the audio track ``number`` (1 for the main one)."""
    return AUDIO_FOLDER if number == 1 else f"{AUDIO_FOLDER}{number}"


@dataclass(frozen=True)
class EncodedAudio:
    """An audio rendition, as far as it is encoded."""

    folder: str
    segments: tuple[SegmentRecord, ...]
    codecs: str
    channels: int
    #: The source track's language (a BCP 47 tag), None when it has none.
    language: str | None = None
    #: What players show in their audio menu.
    name: str = "Audio 1"


class AudioEncoder:
    """Resamples, encodes and segments audio frames as the decoder delivers them."""

    def __init__(self, out_dir: Path, segment_seconds: Fraction, segment_type: str,
                 settings: AudioSettings, duration_s: float = math.inf,
                 cancel: threading.Event | None = None, language: str | None = None,
                 folder: str = AUDIO_FOLDER, name: str = "Audio 1") -> None:
        self.settings = settings
        self.language = language
        self.folder = folder
        self.name = name
        #: Checked while a long pause is filled: an hour of silence takes 25 s to encode here.
        self._cancel = cancel
        #: How long the source says it is: a gap reaching past that is a broken timestamp,
        #: not a pause, and is closed up rather than filled (hours of silence).
        self.duration_s = duration_s
        self.writer = HlsWriter(out_dir / folder, segment_seconds, segment_type)
        try:
            self.stream: av.audio.stream.AudioStream = self.writer.container.add_stream(
                "aac", rate=settings.sample_rate)
            self.stream.layout = "stereo" if settings.channels == 2 else "mono"
            self.stream.bit_rate = settings.bitrate
            self.stream.time_base = Fraction(1, settings.sample_rate)
        except BaseException:
            self.writer.abort()
            raise
        # Not the stream's, which the MPEG-TS muxer changes to 1/90000 once it starts.
        self._sample_time_base = Fraction(1, settings.sample_rate)
        self._resampler = self._new_resampler()
        # Resampled audio is cut into the encoder's frames here rather than by the resampler,
        # so a new resampler (see push) can take over without a short frame mid-stream, which
        # the AAC encoder refuses.
        self._fifo = av.AudioFifo()
        self._input: tuple[str, str, int] | None = None
        self._next_pts: int | None = None
        #: Samples queued since the first picture: where the next frame should start.
        self._queued = 0
        #: Decoded frames left out for damage: ones that could not be converted, or whose
        #: sample rate is below MIN_SAMPLE_RATE.
        self.skipped_frames = 0
        #: Decoded frames left out for coming before the first picture.
        self.early_frames = 0
        #: Decoded frames of the source's sound taken in.
        self.sound_frames = 0
        #: Samples silenced for not being finite (see :meth:`_make_finite`).
        self.damaged_samples = 0
        #: Seconds of silence after the sound, up to the end of the picture (see :meth:`close`).
        self.silence_after_s = 0.0

    def lead_in(self, seconds: float) -> None:
        """Silence from the first picture to ``seconds``, where the source says its sound
        starts, encoded now rather than once the decoder reaches the sound (as :meth:`push`
        does), so the first audio segments close at once. Only before any frame is pushed."""
        if self._next_pts is None and self._within_source(seconds):
            self._start(seconds)

    def push(self, frame: av.audio.frame.AudioFrame, seconds: float) -> None:
        """Encode one decoded frame that starts ``seconds`` after the first video frame."""
        early = 0
        if seconds < 0:
            # Audio before the first picture has nothing to play against. A frame that starts
            # before it and ends after it keeps its part from the picture on: left out whole,
            # it was silence there (an MPEG-PS whose first MP2 frame began 10 ms before its
            # first picture had its first 14 ms of sound silent).
            if frame.sample_rate <= 0 or seconds + frame.samples / frame.sample_rate <= 0:
                self.early_frames += 1
                return
            early = round(-seconds * self.settings.sample_rate)
            seconds = 0.0
        if frame.sample_rate < MIN_SAMPLE_RATE:
            self.skipped_frames += 1
            return
        if self._next_pts is None:
            self._start(seconds if self._within_source(seconds) else 0.0)
        else:
            self._fill_gap(seconds)
        frame.pts = None
        shape = (frame.format.name, frame.layout.name, frame.sample_rate)
        try:
            if shape != self._input:
                # The first frame, or the source's audio changed sample format, layout or rate
                # part way (spliced or damaged streams): a resampler only takes what it was set
                # up for, so drain it and go on with a new one.
                self._queue(self._resampler.resample(None))
                self._resampler = self._new_resampler(frame.layout.nb_channels)
                self._input = shape
            self._queue(self._resampler.resample(frame), skip=early)
            self.sound_frames += 1
        except (av.error.FFmpegError, ValueError) as exc:
            # A damaged frame (no channels, a layout that contradicts its channel count) is
            # skipped like an audio packet that does not decode: audio is laid end to end, so
            # the rest plays on. A new resampler, as this one may hold a half-converted state.
            self.skipped_frames += 1
            log.warning("skipping an audio frame that cannot be converted: %s", exc)
            self._resampler = self._new_resampler()
            self._input = None
            return
        self._encode(self._frames(final=False))

    def close(self, video_end_s: float = 0.0) -> EncodedAudio:
        """Flush the encoder and finish the rendition, its sound followed by silence up to
        ``video_end_s`` (where the picture ends, in seconds from the first frame).

        A browser plays only where picture and sound are both buffered: hls.js stalled for
        good where the sound of 12 s of video ended at 2 s, once its buffer ahead (30 s by
        default, 3 s in that test) held no more of the picture than of the sound, and never
        reached the end (hls.js issue 7266)."""
        self._queue(self._resampler.resample(None))
        if self._next_pts is not None:  # a track with sound; one without is left out
            missing = round(video_end_s * self.settings.sample_rate) - self._queued
            self._silence(missing)
            self.silence_after_s = max(0, missing) / self.settings.sample_rate
        self._encode(self._frames(final=True))
        self.writer.mux(self.stream.encode(None))
        return self._rendition(self.writer.close())

    @property
    def end_s(self) -> float:
        """Where the sound taken in so far ends, in seconds from the first picture (0 for a
        track with none)."""
        return self._queued / self.settings.sample_rate if self._next_pts is not None else 0.0

    @staticmethod
    def sound_end(encoders: Iterable[AudioEncoder]) -> float:
        """Where the sound of ``encoders`` ends, in seconds from the first picture: the
        longest track's end (0 with none), what a picture shorter than it is held to."""
        return max((encoder.end_s for encoder in encoders), default=0.0)

    def progress(self) -> EncodedAudio:
        """The rendition as far as it is complete (segments closed so far); any thread."""
        return self._rendition(self.writer.closed_segments())

    def _rendition(self, segments: Sequence[SegmentRecord]) -> EncodedAudio:
        return EncodedAudio(self.folder, tuple(segments), AAC_LC_CODECS,
                            self.settings.channels, self.language, self.name)

    def abort(self) -> None:
        self.writer.abort()

    def _new_resampler(self, channels: int = 0) -> av.AudioResampler:
        """A resampler for frames of ``channels`` channels (0: not known yet). One channel is
        resampled as it is and laid on both sides at its own level (see :meth:`_queue`):
        FFmpeg's mixing puts a mono source on each side at -3 dB, so a phone's mono recording
        played 3 dB quieter than the file it came from does in a player."""
        mono = channels == 1 and self.settings.channels == 2
        return av.AudioResampler(format="fltp", layout="mono" if mono else self.stream.layout,
                                 rate=self.settings.sample_rate)

    def _start(self, seconds: float) -> None:
        # The sound starts with the first picture, in silence until the source's own sound
        # begins: browsers play only where both are buffered, and hls.js never started a
        # video whose sound began 5 s after the picture.
        self._next_pts = round(TIMELINE_START * self.settings.sample_rate)
        self._silence(round(seconds * self.settings.sample_rate))

    def _fill_gap(self, seconds: float) -> None:
        """Silence up to ``seconds``, where the next frame starts, if the samples so far end
        well before it: the video keeps such a gap (it is real time), so laying the audio on
        end to end put everything after a 3 s pause 3 s early."""
        rate = self.settings.sample_rate
        missing = round(seconds * rate) - self._queued
        if missing > MAX_AUDIO_GAP_S * rate and self._within_source(seconds):
            self._silence(missing)

    def _within_source(self, seconds: float) -> bool:
        """Whether sound starting at ``seconds`` lies inside the source's declared length:
        past it, the timestamp is broken and no silence leads up to it."""
        return seconds <= self.duration_s + MAX_AUDIO_GAP_S

    def _silence(self, missing: int) -> None:
        """Queue and encode ``missing`` samples of silence."""
        rate = self.settings.sample_rate
        while missing > 0:
            if self._cancel is not None and self._cancel.is_set():
                raise JobCancelledError("cancelled while filling a pause in the sound")
            count = min(missing, _SILENCE_CHUNK_S * rate)
            silence = av.AudioFrame(format="fltp", layout=self.stream.layout, samples=count)
            silence.sample_rate = rate
            for plane in silence.planes:
                plane.update(bytes(plane.buffer_size))
            self._queue([silence])
            self._encode(self._frames(final=False))
            missing -= count

    def _queue(self, frames: list[av.audio.frame.AudioFrame], skip: int = 0) -> None:
        """Queue resampled ``frames``, but for their first ``skip`` samples, for the encoder."""
        for out in frames:
            if skip:
                cut = min(skip, out.samples)
                skip -= cut
                if cut == out.samples:
                    continue
                out = _without_first(out, cut)
            if len(out.planes) < self.settings.channels:
                out = _on_both_sides(out)
            self._make_finite(out)
            # The FIFO checks that timestamps run on, and that every frame has the first one's
            # time base: a resampler with nothing to convert passes the decoder's on (1/90000
            # in MPEG-TS), a converting one gives its rate's, so after the source's audio
            # changed format every later frame was refused and the sound stopped there. Both
            # are set again when encoding.
            out.pts = None
            out.time_base = self._sample_time_base
            self._fifo.write(out)
            self._queued += out.samples

    def _make_finite(self, frame: av.audio.frame.AudioFrame) -> None:
        """Silence the samples of ``frame`` (planar float, from the resampler) that are not
        finite or far out of range. A damaged stream's decoder can give NaN or infinity (a
        mutated FLV's Nellymoser track), and FFmpeg's AAC encoder refuses a frame whose
        transform is not finite, and every frame after it, as they overlap: the job failed."""
        for plane in frame.planes:
            samples = np.frombuffer(memoryview(plane), dtype=np.float32, count=frame.samples)
            damaged = ~(np.abs(samples) <= MAX_SAMPLE)  # NaN compares False: damaged too
            if damaged.any():
                np.copyto(samples, 0.0, where=damaged)
                self.damaged_samples += int(damaged.sum())

    def _frames(self, final: bool) -> list[av.audio.frame.AudioFrame]:
        """Whole encoder frames from the FIFO; with ``final``, the short last one too."""
        size = self.stream.codec_context.frame_size or FRAME_SAMPLES
        frames = []
        while (frame := self._fifo.read(size)) is not None:
            frames.append(frame)
        if final and (rest := self._fifo.read()) is not None:
            frames.append(rest)
        return frames

    def _encode(self, frames: list[av.audio.frame.AudioFrame]) -> None:
        for out in frames:
            # Samples are laid end to end from the first one's time (gaps filled with
            # silence): decoders' timestamps jitter, and a gap-free track is what players
            # expect.
            assert self._next_pts is not None
            out.pts = self._next_pts
            out.time_base = self.stream.time_base
            self._next_pts += out.samples
            self.writer.mux(self.stream.encode(out))


def _without_first(frame: av.audio.frame.AudioFrame, count: int) -> av.audio.frame.AudioFrame:
    """``frame`` (planar float, from the resampler) but for its first ``count`` samples."""
    rest = frame.samples - count
    tail = av.AudioFrame(format="fltp", layout=frame.layout, samples=rest)
    tail.sample_rate = frame.sample_rate
    for source, target in zip(frame.planes, tail.planes, strict=True):
        samples = np.frombuffer(memoryview(source), dtype=np.float32, count=frame.samples)
        np.copyto(np.frombuffer(memoryview(target), dtype=np.float32, count=rest),
                  samples[count:])
    return tail


def _on_both_sides(frame: av.audio.frame.AudioFrame) -> av.audio.frame.AudioFrame:
    """A stereo frame with the one channel of ``frame`` (planar float) on both sides."""
    stereo = av.AudioFrame(format="fltp", layout="stereo", samples=frame.samples)
    stereo.sample_rate = frame.sample_rate
    sound = np.frombuffer(memoryview(frame.planes[0]), dtype=np.float32, count=frame.samples)
    for plane in stereo.planes:
        np.copyto(np.frombuffer(memoryview(plane), dtype=np.float32, count=frame.samples), sound)
    return stereo
