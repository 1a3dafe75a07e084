"""The keyframe schedule every rung shares. Pure functions.

Segment ``k`` starts at the first frame whose time (relative to the first frame) is at or after
``k * segment_seconds``. The choice is made by time, not by frame count, so 29.97 fps and
variable-frame-rate sources cut at the same instants on every rung, and every rung sees the same
frames, so their keyframes line up exactly. FFmpeg's HLS muxer cuts at the first keyframe at or
after the same instants, so its segments are exactly ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

#: Presentation time of a job's first frame in every output, video and audio alike. B-frames
#: make an encoder's first decode times earlier than its first presentation time; starting at 0
#: they would be negative, and each rendition's muxer would shift its own stream to fix that, so
#: rungs with B-frames would start later than the audio and the other rungs. Ten seconds keeps
#: decode times positive at any frame rate a source plausibly has.
TIMELINE_START = Fraction(10)


@dataclass(frozen=True)
class FrameTime:
    """When a frame is shown, and whether it opens a segment (so must be an IDR frame)."""

    #: Index among the frames every rung encodes (after frame-rate capping).
    index: int
    #: Presentation time in ``time_base`` units, relative to the first frame.
    pts: int
    #: Seconds from the first frame.
    seconds: Fraction
    segment: int
    keyframe: bool
    #: How long the source shows the frame, in ``time_base`` units (0 when it does not say).
    duration: int = 0


class KeyframeSchedule:
    """Assigns segments to frames in presentation order. One per job, used by the decode stage.

    Frames faster than ``max_frame_rate`` are dropped here, by time, so every rung gets the same
    frames.
    """

    def __init__(self, segment_seconds: Fraction, max_frame_rate: Fraction) -> None:
        if segment_seconds <= 0:
            raise ValueError("segment length must be positive")
        self.segment_seconds = segment_seconds
        self._min_interval = 1 / max_frame_rate
        self._next_kept: Fraction | None = None
        self._last_segment = -1
        self._count = 0

    def place(self, pts: int, time_base: Fraction, duration: int = 0) -> FrameTime | None:
        """Place the next frame (``pts`` relative to the first frame, increasing; ``duration``
        as the source gives it).

        Returns ``None`` for a frame dropped by the frame-rate cap.
        """
        seconds = pts * time_base
        # A small tolerance so a 59.94 fps source keeps every frame under a 60 fps cap.
        if self._next_kept is not None and seconds < self._next_kept - self._min_interval / 10:
            return None
        self._next_kept = max(seconds, self._next_kept or seconds) + self._min_interval
        segment = segment_of(seconds, self.segment_seconds)
        keyframe = segment != self._last_segment
        self._last_segment = segment
        frame = FrameTime(self._count, pts, seconds, segment, keyframe, duration)
        self._count += 1
        return frame


def segment_of(seconds: Fraction, segment_seconds: Fraction) -> int:
    """Index of the segment a frame shown at ``seconds`` belongs to."""
    return int(seconds // segment_seconds)
