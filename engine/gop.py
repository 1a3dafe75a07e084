"""The keyframe schedule every rung shares. Pure functions.

Segment ``k`` starts at the first frame whose time (relative to the first frame) is at or after
``k * segment_seconds``. The choice is made by time, not by frame count, so 29.97 fps and
variable-frame-rate sources cut at the same instants on every rung, and every rung sees the same
frames, so their keyframes line up exactly. FFmpeg's HLS muxer cuts at the first keyframe at or
after the same instants, so its segments are exactly ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

#: Presentation time of a job's first frame in every output, video and audio alike. B-frames
#: make an encoder's first decode times earlier than its first presentation time; starting at 0
#: they would be negative, and each rendition's muxer would shift its own stream to fix that, so
#: rungs with B-frames would start later than the audio and the other rungs. Ten seconds keeps
#: decode times positive at any frame rate a source plausibly has.
TIMELINE_START = Fraction(10)

#: A source whose average frame rate is above this share of the cap is put on the cap's grid.
GRID_ABOVE = Fraction(101, 100)


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
    frames. A source whose average rate is above the cap (``source_rate``: 90, 144 or 240 fps
    captures) is put on the cap's grid instead: each slot of 1 / ``max_frame_rate`` shows the
    frame nearest to it, retimed to it. Dropping only the frames closer than the cap to the
    last one kept every third frame of 144 fps (48 fps, listed as 60) and every other of 90
    (45 fps); the grid keeps 60 fps, as the ffmpeg CLI's ``fps`` filter does.
    """

    def __init__(self, segment_seconds: Fraction, max_frame_rate: Fraction,
                 source_rate: Fraction | None = None) -> None:
        if segment_seconds <= 0:
            raise ValueError("segment length must be positive")
        self.segment_seconds = segment_seconds
        self._min_interval = 1 / max_frame_rate
        #: Whether frames are retimed to the cap's grid.
        self.on_grid = source_rate is not None and source_rate > max_frame_rate * GRID_ABOVE
        self._source_interval = 1 / source_rate if source_rate else Fraction(0)
        self._last_slot = -1
        self._last_pts = -1
        self._next_kept: Fraction | None = None
        self._last_segment = -1
        self._count = 0

    def place(self, pts: int, time_base: Fraction, duration: int = 0) -> FrameTime | None:
        """Place the next frame (``pts`` relative to the first frame, increasing; ``duration``
        as the source gives it).

        Returns ``None`` for a frame dropped by the frame-rate cap. On the grid, the frame's
        ``pts`` is its slot's.
        """
        seconds = pts * time_base
        if self.on_grid:
            retimed = self._on_the_grid(seconds, duration * time_base, time_base)
            if retimed is None:
                return None
            # The cap's frame length: the source's is shorter, and the last frame fills its slot.
            pts, duration = retimed, 0
            seconds = pts * time_base
        else:
            # A small tolerance so a 59.94 fps source keeps every frame under a 60 fps cap. The
            # next frame is due a cap's interval after this one, not after when this one was
            # due: that lag grew at 60.03 fps until a frame was dropped every 3 s or so.
            if self._next_kept is not None and seconds < self._next_kept - self._min_interval / 10:
                return None
            self._next_kept = seconds + self._min_interval
        segment = segment_of(seconds, self.segment_seconds)
        keyframe = segment != self._last_segment
        self._last_segment = segment
        frame = FrameTime(self._count, pts, seconds, segment, keyframe, duration)
        self._count += 1
        return frame

    def _on_the_grid(self, seconds: Fraction, shown: Fraction, time_base: Fraction) -> int | None:
        """The frame's time on the cap's grid (in ``time_base`` units), or None when the
        slot nearest to it (the earlier on a tie) is taken, or starts once the source has
        stopped showing it (``shown`` seconds: the last frame of 144 fps made the video a slot
        longer than its source). Never moved back into an earlier segment: a segment starts at
        or after its instant, as FFmpeg's HLS muxer cuts it."""
        slot = math.ceil(seconds / self._min_interval - Fraction(1, 2))
        if slot <= self._last_slot:
            return None
        # A duration much shorter than the source's frame length is not believed (a muxer's
        # default of a millisecond would empty most slots).
        if shown >= self._source_interval / 2 and slot * self._min_interval >= seconds + shown:
            return None
        pts = math.ceil(slot * self._min_interval / time_base)
        if segment_of(pts * time_base, self.segment_seconds) < segment_of(seconds,
                                                                           self.segment_seconds):
            slot += 1
            pts = math.ceil(slot * self._min_interval / time_base)
        pts = max(pts, self._last_pts + 1)
        self._last_slot, self._last_pts = slot, pts
        return pts


def segment_of(seconds: Fraction, segment_seconds: Fraction) -> int:
    """Index of the segment a frame shown at ``seconds`` belongs to."""
    return int(seconds // segment_seconds)
