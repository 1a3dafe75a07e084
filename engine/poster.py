"""Pick the poster frame while the source decodes, and encode it as JPEG."""

from __future__ import annotations

from fractions import Fraction

import av
import av.codec
import av.video.frame
import numpy as np

from engine.decode import plane_array, sample_type
from engine.gop import FrameTime
from engine.ladder import Rung
from engine.probe import Colour, Orientation
from engine.scale import Scaler

#: Aim about this far in, where titles and fades are usually over.
TARGET_SECONDS = Fraction(1)
#: Mean luma (0-255) under which a frame counts as black.
BLACK_LUMA = 24
#: Stop waiting for a non-black frame this long after the target.
MAX_WAIT_SECONDS = Fraction(5)


class PosterPicker:
    """Watches frames in order and keeps the first good one at or after the target time."""

    def __init__(self, rung: Rung, orientation: Orientation, duration_s: float,
                 colour: Colour | None = None) -> None:
        self.rung = rung
        self.orientation = orientation
        #: The source's: an HDR one's frames come in 10 bits and are mapped to SDR.
        self.colour = colour
        self._scaler: Scaler | None = None
        # Short videos: aim a third of the way in, so the poster is not the very first frame.
        self.target = min(TARGET_SECONDS, Fraction(duration_s).limit_denominator(1000) / 3)
        self.jpeg: bytes | None = None
        self._fallback: tuple[float, av.video.frame.VideoFrame] | None = None

    @property
    def done(self) -> bool:
        return self.jpeg is not None

    def offer(self, frame: av.video.frame.VideoFrame, when: FrameTime) -> bool:
        """Consider a frame; returns True once the poster is chosen."""
        if self.done:
            return True
        if when.seconds < self.target:
            if self._fallback is None:
                self._fallback = (self._brightness(frame), self._scaled(frame))
            return False
        luma = self._brightness(frame)
        if luma >= BLACK_LUMA or when.seconds >= self.target + MAX_WAIT_SECONDS:
            self.jpeg = _jpeg(self._scaled(frame))
        elif self._fallback is None or luma > self._fallback[0]:
            self._fallback = (luma, self._scaled(frame))
        return self.done

    def finish(self) -> bytes:
        """The poster: the chosen frame, or the brightest candidate for videos too short or dark."""
        if self.jpeg is None:
            assert self._fallback is not None, "no frame was offered"
            self.jpeg = _jpeg(self._fallback[1])
        return self.jpeg

    def _scaled(self, frame: av.video.frame.VideoFrame) -> av.video.frame.VideoFrame:
        if self._scaler is None:
            self._scaler = Scaler(self.rung.width, self.rung.height, self.orientation,
                                  "yuvj420p", colour=self.colour)
        return self._scaler.scale(frame)

    @staticmethod
    def _brightness(frame: av.video.frame.VideoFrame) -> float:
        """Mean luma on 0-255 (of the signal: an HDR one's as it comes)."""
        bits = frame.format.components[0].bits
        luma = plane_array(frame.planes[0], sample_type(frame.format.name))[::8, ::8]
        return float(np.mean(luma)) / (1 << (bits - 8))


def _jpeg(frame: av.video.frame.VideoFrame) -> bytes:
    codec = av.codec.CodecContext.create("mjpeg", "w")
    codec.width, codec.height = frame.width, frame.height
    codec.pix_fmt = "yuvj420p"
    codec.time_base = Fraction(1, 25)
    codec.options = {"q": "3"}
    frame.pts = 0
    packets = codec.encode(frame) + codec.encode(None)
    return b"".join(bytes(p) for p in packets)
