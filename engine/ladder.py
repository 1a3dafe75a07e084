"""Plan the ladder: which rungs to encode for a source, and with what settings. Pure functions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction

from engine.errors import InvalidOptionsError
from engine.gop import grid_rate
from engine.probe import SourceInfo

#: Short sides of the default ladder, lowest (and first published) first.
DEFAULT_HEIGHTS = (720, 1080, 2160)
#: Highest output frame rate; faster sources have frames dropped evenly.
MAX_FRAME_RATE = Fraction(60)
#: x264's own ceiling on rate-control lookahead (``X264_LOOKAHEAD_MAX``).
MAX_LOOKAHEAD = 250
#: The longest side a rung has: libx264 opens nothing wider or higher.
MAX_SIDE = 16384


@dataclass(frozen=True)
class RungSettings:
    """H.264 settings for one rung. ``None`` fields take the default for the rung's size."""

    #: x264 preset (``ultrafast`` ... ``veryslow``).
    preset: str | None = None
    #: Constant rate factor (quality); lower is better and bigger.
    crf: int | None = None
    #: VBV cap on the bitrate, kbit/s, so peaks are bounded.
    maxrate_kbps: int | None = None
    #: VBV buffer, kbit; default twice the maxrate.
    bufsize_kbps: int | None = None
    #: Frames x264 looks ahead for rate control (0: the preset's own).
    lookahead: int | None = None


@dataclass(frozen=True)
class LadderOptions:
    """What the caller asks for; :func:`plan_ladder` turns it into rungs for one source."""

    #: Short sides of the rungs, any order; encoded lowest first.
    heights: Sequence[int] = DEFAULT_HEIGHTS
    #: Per-height overrides of the defaults; every height must be in ``heights``.
    settings: Mapping[int, RungSettings] = field(default_factory=dict)

    def check(self) -> None:
        """Raise :class:`InvalidOptionsError` for a ladder that cannot work on any source.

        Checked whole, before any source is read: an override for a rung that a smaller source
        would drop is still checked, and one for a height the ladder does not hold (a typo, or
        a rung left out) is refused rather than silently doing nothing.
        """
        heights = sorted(set(self.heights))
        if not heights or any(h < 16 or h > 4320 for h in heights):
            raise InvalidOptionsError(f"ladder heights must be between 16 and 4320, got {heights}")
        strays = sorted(set(self.settings) - set(heights))
        if strays:
            raise InvalidOptionsError(
                f"settings for {', '.join(f'{h}p' for h in strays)}, which the ladder "
                f"({', '.join(map(str, heights))}) does not hold")
        for height, override in self.settings.items():
            _merge(default_settings(height), override)


@dataclass(frozen=True)
class Rung:
    """One rendition to encode: its picture size and encoder settings."""

    #: ``720p`` and so on: the short side.
    name: str
    width: int
    height: int
    frame_rate: Fraction
    preset: str
    crf: int
    maxrate_kbps: int
    bufsize_kbps: int
    #: x264 rate-control lookahead in frames; 0 keeps the preset's.
    lookahead: int = 0

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)


_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
            "veryslow", "placebo")


def default_settings(short_side: int) -> RungSettings:
    """The seed's defaults: fast and cheap for the first rung, better quality above it."""
    pixels = short_side * short_side * 16 // 9
    lookahead = 0
    if short_side <= 720:
        preset, crf, maxrate_720 = "ultrafast", 25, 4500
    elif short_side <= 1080:
        preset, crf, maxrate_720 = "fast", 23, 3600
    else:
        preset, crf, maxrate_720 = "medium", 21, 2700
        # medium looks 40 frames ahead; at 4K each costs about 12 MB. Measured on a 4K
        # encode: 1367 MB peak RSS with 40, 879 MB with 20, at the same speed.
        lookahead = 20
    # The cap scales with the area so small test rungs and 4K get sensible ceilings.
    maxrate = max(400, round(maxrate_720 * pixels / (1280 * 720)))
    return RungSettings(preset=preset, crf=crf, maxrate_kbps=maxrate, bufsize_kbps=2 * maxrate,
                        lookahead=lookahead)


def plan_ladder(source: SourceInfo, options: LadderOptions | None = None) -> list[Rung]:
    """The rungs for ``source``, lowest first.

    Rungs are sized by their short side so portrait and landscape get the same ladder. A rung
    above the source is dropped (never upscale); a source smaller than every rung gets one rung
    at its own size. A source wider than 16:9 whose long side fills the next rung's 16:9 frame
    gets that rung too, fitted into the frame: 1920x800 (a film's 2.4:1 at 1080p) gets 1080p
    at 1920x800, where its short side alone gave it 1728x720 at most. A rung longer than
    :data:`MAX_SIDE` is scaled down to it. Output is upright (rotation applied), square-pixel,
    with even dimensions.
    """
    options = options or LadderOptions()
    options.check()
    heights = sorted(set(options.heights))
    display_w, display_h = source.display_size
    source_short = min(display_w, display_h)
    kept = [h for h in heights if h <= source_short]
    if not kept:
        kept = [_even_down(source_short)]
    sizes = {short: _scaled(display_w, display_h, short) for short in kept}
    # Rungs scaled down to the longest side come out the same size: one of them is enough.
    kept = [short for index, short in enumerate(kept)
            if index == 0 or sizes[short] != sizes[kept[index - 1]]]
    wider = next((h for h in heights if h > kept[-1]), None)
    fitted = None if wider is None else _fitted(display_w, display_h, wider)
    if wider is not None and fitted is not None and max(fitted) > max(sizes[kept[-1]]):
        kept.append(wider)
        sizes[wider] = fitted
    frame_rate = min(source.frame_rate, grid_rate(source.frame_rate, MAX_FRAME_RATE))
    rungs = []
    for short in kept:
        width, height = sizes[short]
        settings = _merge(default_settings(short), options.settings.get(short))
        assert settings.preset and settings.crf is not None and settings.maxrate_kbps
        rungs.append(Rung(
            name=f"{short}p", width=width, height=height, frame_rate=frame_rate,
            preset=settings.preset, crf=settings.crf, maxrate_kbps=settings.maxrate_kbps,
            bufsize_kbps=settings.bufsize_kbps or 2 * settings.maxrate_kbps,
            lookahead=settings.lookahead or 0,
        ))
    return rungs


def parse_heights(text: str) -> list[int]:
    """Parse ``"720,1080"`` as given on a command line."""
    try:
        heights = [int(part.strip().removesuffix("p")) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise InvalidOptionsError(
            f"ladder {text!r} is not a comma-separated list of heights") from exc
    if not heights:
        raise InvalidOptionsError("ladder is empty")
    return heights


def _merge(base: RungSettings, override: RungSettings | None) -> RungSettings:
    if override is None:
        return base
    merged = replace(base, **{k: v for k, v in vars(override).items() if v is not None})
    if merged.preset not in _PRESETS:
        raise InvalidOptionsError(f"unknown x264 preset {merged.preset!r}")
    if merged.crf is None or not 0 <= merged.crf <= 51:
        raise InvalidOptionsError(f"crf must be between 0 and 51, got {merged.crf}")
    if merged.maxrate_kbps is None or merged.maxrate_kbps <= 0:
        raise InvalidOptionsError("maxrate must be positive")
    if merged.bufsize_kbps is not None and merged.bufsize_kbps <= 0:
        # x264 takes a VBV buffer of 0 as no cap at all, whatever the maxrate says.
        raise InvalidOptionsError("bufsize must be positive")
    if not 0 <= (merged.lookahead or 0) <= MAX_LOOKAHEAD:
        raise InvalidOptionsError(
            f"lookahead must be 0 (the preset's) to {MAX_LOOKAHEAD} frames, got {merged.lookahead}")
    if override.maxrate_kbps is not None and override.bufsize_kbps is None:
        merged = replace(merged, bufsize_kbps=2 * merged.maxrate_kbps)
    return merged


def _scaled(display_w: int, display_h: int, short: int) -> tuple[int, int]:
    """The source's shape at this short side; for a picture so thin that its long side would
    pass :data:`MAX_SIDE`, smaller, at that long side."""
    scale = min(_even_down(short) / min(display_w, display_h),
                MAX_SIDE / max(display_w, display_h))
    return _even_round(display_w * scale), _even_round(display_h * scale)


def _fitted(display_w: int, display_h: int, short: int) -> tuple[int, int] | None:
    """The source's size fitted into the 16:9 frame of the rung of short side ``short`` (turned
    for a portrait source); None when its long side falls short of the frame's (upscaling)."""
    long_side, short_side = max(display_w, display_h), min(display_w, display_h)
    frame_long = _even_round(short * 16 / 9)
    if long_side < frame_long:
        return None
    scale = min(frame_long / long_side, short / short_side)
    fitted_long, fitted_short = _even_round(long_side * scale), _even_round(short_side * scale)
    return ((fitted_long, fitted_short) if display_w >= display_h
            else (fitted_short, fitted_long))


def _even_down(value: int) -> int:
    return max(2, value - value % 2)


def _even_round(value: float) -> int:
    return max(2, 2 * round(value / 2))
