"""The source's first audio stream, encoded once to AAC-LC and shared by every rung.

Audio is its own HLS rendition (``EXT-X-MEDIA`` group ``audio``) that every variant points to,
so it is encoded and stored once however many rungs there are.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av.audio.frame
import av.audio.stream
import av.error

from engine.errors import DecodeError
from engine.gop import TIMELINE_START
from engine.segment import HlsWriter, SegmentRecord

AUDIO_FOLDER = "audio"
AAC_LC_CODECS = "mp4a.40.2"


@dataclass(frozen=True)
class AudioSettings:
    """Output audio; the defaults play everywhere."""

    sample_rate: int = 48000
    channels: int = 2
    bitrate: int = 128_000


@dataclass(frozen=True)
class EncodedAudio:
    """The complete audio rendition."""

    folder: str
    segments: tuple[SegmentRecord, ...]
    codecs: str
    channels: int


class AudioEncoder:
    """Resamples, encodes and segments audio frames as the decoder delivers them."""

    def __init__(self, out_dir: Path, segment_seconds: Fraction, segment_type: str,
                 settings: AudioSettings) -> None:
        self.settings = settings
        self.writer = HlsWriter(out_dir / AUDIO_FOLDER, segment_seconds, segment_type)
        try:
            self.stream: av.audio.stream.AudioStream = self.writer.container.add_stream(
                "aac", rate=settings.sample_rate)
            self.stream.layout = "stereo" if settings.channels == 2 else "mono"
            self.stream.bit_rate = settings.bitrate
            self.stream.time_base = Fraction(1, settings.sample_rate)
        except BaseException:
            self.writer.abort()
            raise
        self._resampler = av.AudioResampler(format="fltp", layout=self.stream.layout,
                                            rate=settings.sample_rate, frame_size=1024)
        self._next_pts: int | None = None

    def push(self, frame: av.audio.frame.AudioFrame, seconds: float) -> None:
        """Encode one decoded frame that starts ``seconds`` after the first video frame."""
        if seconds < 0:
            return  # Audio before the first picture has nothing to play against.
        if self._next_pts is None:
            self._next_pts = round((TIMELINE_START + Fraction(seconds)) * self.settings.sample_rate)
        frame.pts = None
        try:
            self._encode(self._resampler.resample(frame))
        except av.error.FFmpegError as exc:
            raise DecodeError(f"audio could not be converted: {exc}") from exc

    def close(self) -> EncodedAudio:
        """Flush the encoder and finish the rendition."""
        self._encode(self._resampler.resample(None))
        self.writer.mux(self.stream.encode(None))
        segments = self.writer.close()
        return EncodedAudio(AUDIO_FOLDER, tuple(segments), AAC_LC_CODECS,
                            self.settings.channels)

    def progress(self) -> EncodedAudio:
        """The rendition as far as it is complete (segments closed so far); any thread."""
        return EncodedAudio(AUDIO_FOLDER, tuple(self.writer.closed_segments()), AAC_LC_CODECS,
                            self.settings.channels)

    def abort(self) -> None:
        self.writer.abort()

    def _encode(self, frames: list[av.audio.frame.AudioFrame]) -> None:
        for out in frames:
            # Samples are laid end to end from the first one's time: decoders' timestamps
            # jitter, and a gap-free track is what players expect.
            assert self._next_pts is not None
            out.pts = self._next_pts
            out.time_base = self.stream.time_base
            self._next_pts += out.samples
            self.writer.mux(self.stream.encode(out))
