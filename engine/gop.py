"""The keyframe schedule every rung shares. Pure functions.

Segment ``k`` starts at the first frame whose time (relative to the first frame) is at or after
``k * segment_seconds``. The choice is made by time, not by frame count, so 29.97 fps and
variable-frame-rate sources cut at the same instants on every rung, and every rung sees the same
frames, so their keyframes line up exactly. FFmpeg's HLS muxer cuts at the first keyframe at or
after the same instants, so its segments are exactly ours.
"""

from __future__ import annotations

import math
from collections import deque
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
#: Off the grid, the cap lets frames through at this share of its rate: a camera's clock may run
#: this much fast (a 60.03 fps "60 fps" camera keeps every frame).
CLOCK_TOLERANCE = Fraction(1001, 1000)
#: Off the grid, how many frames may come at once faster than the cap (a frame that comes early
#: and the one after it, which then comes late, are both kept).
BURST_FRAMES = 2
#: A variable frame rate is measured over this long: one interval between two frames is not a
#: rate (a phone's 30 fps whose frames jitter by 5 ms has intervals of 28 ms: "35 fps").
RATE_WINDOW = Fraction(1)
#: How far a rate measured over ``RATE_WINDOW`` may be from the video's true rate: a millisecond
#: clock rounds each frame's time (29.97 fps measures 30.0x), and a phone's clock jitters.
RATE_JITTER = Fraction(2, 100)


#: The rates a camera's high-speed modes are multiples of: PAL's (100 and 200 fps), NTSC's
#: (119.88 and 239.76 fps), and the cap's.
_BASE_RATES = (Fraction(50), Fraction(60000, 1001), Fraction(60))


def grid_rate(source_rate: Fraction | None, max_frame_rate: Fraction) -> Fraction:
    """The rate of the grid a source faster than ``max_frame_rate`` is put on (see
    :class:`KeyframeSchedule`): its own divided by 2, 3 or 4 where that is a camera's base rate
    (``_BASE_RATES``, within ``RATE_JITTER``), else the cap. A 100 fps capture plays at 50 fps,
    every other frame, where the 60 fps grid showed them unevenly (one source frame a slot,
    then two). Any other source: the cap (144 and 90 fps have no such divisor)."""
    if source_rate is None or source_rate <= max_frame_rate * GRID_ABOVE:
        return max_frame_rate
    for divisor in (2, 3, 4):
        rate = source_rate / divisor
        base = min(_BASE_RATES, key=lambda base: abs(rate - base))
        if base <= max_frame_rate and abs(rate - base) <= RATE_JITTER * base:
            return base
    return max_frame_rate


def segment_length(seconds: float) -> Fraction:
    """A segment length as the schedule counts it: exact, since 0.1 s and its like are not
    binary floats (the nearest fraction with a denominator up to 1000)."""
    return Fraction(seconds).limit_denominator(1000)


@dataclass(frozen=True)
class FrameTime:
    """When a frame is shown, whether it opens a segment (so must be an IDR frame), and the
    closed captions that go with it."""

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
    #: CEA-608/708 caption triples to write into the frame's encoded picture (engine.captions).
    captions: bytes = b""


class KeyframeSchedule:
    """Assigns segments to frames in presentation order. One per job, used by the decode stage.

    Frames faster than ``max_frame_rate`` are dropped here, by time, so every rung gets the same
    frames. A source whose average rate is above the cap (``source_rate``: 90, 144 or 240 fps
    captures) is put on a grid instead, of the cap's rate or a lower one that divides the
    source's (see :func:`grid_rate`): each frame goes to the slot of 1 / ``rate`` nearest to
    it, and a slot shows the first frame that comes to it (within half a slot of its time),
    retimed to it. Dropping only the frames closer than the cap to the last one kept every
    third frame of 144 fps (48 fps, listed as 60) and every other of 90 (45 fps); the grid keeps
    60 fps, as the ffmpeg CLI's ``fps`` filter does.

    Any other source keeps its frames' own times, and the cap holds on average (a token
    bucket): the right to keep a frame comes at the cap's rate, up to ``BURST_FRAMES`` held,
    and each frame kept spends one. A clock that jitters keeps every frame: dropping each
    frame that came less than 0.9 of the cap's interval after the last one kept dropped 30 of
    180 frames of 60 fps whose millisecond clock jittered by 3 ms (as a browser's recording
    does), and 60 of 180 of 60 fps whose frames came 14 and 19 ms apart by turns.
    """

    def __init__(self, segment_seconds: Fraction, max_frame_rate: Fraction,
                 source_rate: Fraction | None = None) -> None:
        if segment_seconds <= 0:
            raise ValueError("segment length must be positive")
        self.segment_seconds = segment_seconds
        #: The most frames a second the schedule keeps: the cap, or the grid's lower rate.
        self.rate = grid_rate(source_rate, max_frame_rate)
        self._min_interval = 1 / self.rate
        #: Whether frames are retimed to a grid.
        self.on_grid = source_rate is not None and source_rate > max_frame_rate * GRID_ABOVE
        self._source_interval = 1 / source_rate if source_rate else Fraction(0)
        self._last_slot = -1
        self._last_pts = -1
        # The token bucket off the grid: frames it may still let through, and when it was last
        # filled and last let one through (seconds).
        self._credit = Fraction(BURST_FRAMES)
        self._filled_at: Fraction | None = None
        self._kept_at: Fraction | None = None
        self._last_segment = -1
        self._count = 0

    def timeline_time_base(self, source: Fraction) -> Fraction:
        """The time base frames are placed in, given the source's: the same, or on the grid,
        the coarsest that counts both the source's ticks and the grid's slots exactly. An AVI
        counts frames: at 144 fps its 60 fps slots, rounded to its 1/144 s ticks, came 1/48
        and 1/72 s apart by turns, and at 90 fps 1/45 and 1/90."""
        slot = self._min_interval
        if not self.on_grid or (slot / source).denominator == 1:
            return source
        fine = Fraction(math.gcd(source.numerator * slot.denominator,
                                 slot.numerator * source.denominator),
                        source.denominator * slot.denominator)
        # An MP4 counts its time scale in 32 bits.
        return fine if fine.denominator < 2**31 else source

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
        elif not self._within_cap(seconds):
            return None
        segment = segment_of(seconds, self.segment_seconds)
        keyframe = segment != self._last_segment
        self._last_segment = segment
        frame = FrameTime(self._count, pts, seconds, segment, keyframe, duration)
        self._count += 1
        return frame

    def _within_cap(self, seconds: Fraction) -> bool:
        """Whether the token bucket lets a frame shown at ``seconds`` through (and spend on it).

        A frame within a quarter of the cap's interval of the last one kept is dropped whatever
        the bucket holds: it would be shown for too short a time to be seen.
        """
        if self._filled_at is not None:
            earned = (seconds - self._filled_at) * CLOCK_TOLERANCE / self._min_interval
            self._credit = min(Fraction(BURST_FRAMES), self._credit + earned)
        self._filled_at = seconds
        if self._kept_at is not None and seconds - self._kept_at < self._min_interval / 4:
            return False
        if self._credit < 1:
            return False
        self._credit -= 1
        self._kept_at = seconds
        return True

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


class FrameRateMeter:
    """The highest frame rate a video keeps up for about ``RATE_WINDOW``: the mean rate of the
    frames in the busiest window of that length (at least half of it between its first and
    last frame, so a gap does not leave two close frames to speak for a second). A video too
    short or too sparse for any such window is measured from its first frame to its last."""

    def __init__(self, time_base: Fraction) -> None:
        self._window_ticks = RATE_WINDOW / time_base
        self._time_base = time_base
        self._recent: deque[int] = deque()
        self._first: int | None = None
        self._count = 0
        # The busiest window so far: (intervals between its frames, ticks from first to last),
        # compared as integers (a Fraction per frame of a six-hour video adds up).
        self._busiest: tuple[int, int] | None = None

    def add(self, pts: int) -> None:
        """Count a frame shown at ``pts`` (``time_base`` units, increasing)."""
        if self._first is None:
            self._first = pts
        self._count += 1
        recent = self._recent
        recent.append(pts)
        while pts - recent[0] > self._window_ticks:
            recent.popleft()
        span = pts - recent[0]
        if 2 * span >= self._window_ticks:
            intervals = len(recent) - 1
            if self._busiest is None or intervals * self._busiest[1] > self._busiest[0] * span:
                self._busiest = (intervals, span)

    def peak(self) -> Fraction | None:
        """Frames per second; None for fewer than two frames."""
        if self._busiest is not None:
            intervals, span = self._busiest
        elif self._first is not None and self._recent[-1] > self._first:
            intervals, span = self._count - 1, self._recent[-1] - self._first
        else:
            return None
        return intervals / (span * self._time_base)


def highest_frame_rate(declared: Fraction, measured: Fraction | None) -> Fraction:
    """The highest frame rate of a video: ``declared`` (its header's average), unless its
    frames came faster than that for a second (``measured``, see :class:`FrameRateMeter`): a
    phone's or a screen recording's rate varies, and its average is not the highest. The
    average is exact where a measurement is not (see ``RATE_JITTER``)."""
    if measured is not None and measured > declared * (1 + RATE_JITTER):
        return measured
    return declared


def segment_of(seconds: Fraction, segment_seconds: Fraction) -> int:
    """Index of the segment a frame shown at ``seconds`` belongs to."""
    return int(seconds // segment_seconds)
