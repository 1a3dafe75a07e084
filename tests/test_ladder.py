"""Unit tests of the pure planning code: the ladder (engine.ladder) and the keyframe schedule
(engine.gop). No media is touched."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest

from engine.errors import InvalidOptionsError
from engine.gop import KeyframeSchedule, grid_rate, segment_of
from engine.ladder import (
    DEFAULT_HEIGHTS,
    MAX_FRAME_RATE,
    MAX_SIDE,
    LadderOptions,
    Rung,
    RungSettings,
    default_settings,
    parse_heights,
    plan_ladder,
)
from engine.probe import Orientation, SourceInfo
from tests import hostile


def source(width: int, height: int, *, rotation: int = 0, sar: Fraction = Fraction(1),
           fps: Fraction = Fraction(30)) -> SourceInfo:
    return SourceInfo(
        path="test.mp4", container="mov,mp4,m4a,3gp,3g2,mj2", codec="h264", width=width,
        height=height, sample_aspect_ratio=sar, orientation=Orientation(rotation), frame_rate=fps,
        duration_s=10.0, pixel_format="yuv420p", bit_depth=8,
        declared_frames=300,
    )


def sizes(rungs: list[Rung]) -> list[tuple[int, int]]:
    return [(r.width, r.height) for r in rungs]


# -- plan_ladder ------------------------------------------------------------------------------


def test_default_ladder_is_720_1080_2160() -> None:
    assert tuple(DEFAULT_HEIGHTS) == (720, 1080, 2160)


def test_portrait_phone_video() -> None:
    rungs = plan_ladder(source(1080, 1920))
    assert sizes(rungs) == [(720, 1280), (1080, 1920)]
    assert [r.name for r in rungs] == ["720p", "1080p"]
    assert all(r.short_side == int(r.name[:-1]) for r in rungs)


def test_phone_video_coded_landscape_with_rotation_is_portrait() -> None:
    for rotation in (90, 270):
        rungs = plan_ladder(source(1920, 1080, rotation=rotation))
        assert sizes(rungs) == [(720, 1280), (1080, 1920)], rotation
    # Upside down stays landscape.
    assert sizes(plan_ladder(source(1920, 1080, rotation=180))) == [(1280, 720), (1920, 1080)]


def test_4k_source_gets_three_rungs_lowest_first() -> None:
    rungs = plan_ladder(source(3840, 2160))
    assert sizes(rungs) == [(1280, 720), (1920, 1080), (3840, 2160)]
    assert [r.name for r in rungs] == ["720p", "1080p", "2160p"]


def test_never_upscales() -> None:
    assert sizes(plan_ladder(source(1280, 720))) == [(1280, 720)]
    rungs = plan_ladder(source(1280, 720), LadderOptions(heights=(1080, 360, 720, 480)))
    assert sizes(rungs) == [(640, 360), (854, 480), (1280, 720)]  # sorted, 1080 dropped
    for rung in plan_ladder(source(1920, 1080), LadderOptions(heights=(360, 2160, 4320))):
        assert rung.width <= 1920 and rung.height <= 1080


@pytest.mark.parametrize(("width", "height", "expected"), [
    # A film's 2.4:1 and 1.85:1 at 1080p: their short side alone made 720p the top rung.
    (1920, 800, ["720p 1728x720", "1080p 1920x800"]),
    (1920, 1036, ["720p 1334x720", "1080p 1920x1036"]),
    (800, 1920, ["720p 720x1728", "1080p 800x1920"]),
    (3840, 1600, ["720p 1728x720", "1080p 2592x1080", "2160p 3840x1600"]),
    # Not filling the next rung's 16:9 frame, or no larger than the top rung in it: unchanged.
    (3440, 1440, ["720p 1720x720", "1080p 2580x1080"]),
    (4096, 1024, ["720p 2880x720"]),
    (1280, 400, ["400p 1280x400"]),
])
def test_a_source_wider_than_16_9_gets_the_rung_whose_frame_it_fills(
        width: int, height: int, expected: list[str]) -> None:
    rungs = plan_ladder(source(width, height))
    assert [f"{r.name} {r.width}x{r.height}" for r in rungs] == expected


def test_source_smaller_than_every_rung_gets_one_rung_at_its_size() -> None:
    (rung,) = plan_ladder(source(320, 240))
    assert (rung.name, rung.width, rung.height) == ("240p", 320, 240)
    (rung,) = plan_ladder(source(640, 480), LadderOptions(heights=(720, 1080)))
    assert (rung.name, rung.width, rung.height) == ("480p", 640, 480)


@pytest.mark.parametrize(("width", "height", "heights"), [
    (853, 479, (360,)),
    (1001, 563, (360, 480)),
    (635, 357, (720,)),  # below the ladder: its own (odd) size, rounded down to even
    (357, 635, (240, 720)),
    (1919, 1079, DEFAULT_HEIGHTS),
])
def test_odd_sizes_give_even_dimensions(width: int, height: int,
                                        heights: tuple[int, ...]) -> None:
    rungs = plan_ladder(source(width, height), LadderOptions(heights=heights))
    assert rungs
    for rung in rungs:
        assert rung.width % 2 == 0 and rung.height % 2 == 0, rung
        assert rung.width <= width + 1 and rung.height <= height + 1, rung
        # The aspect ratio survives the rounding (within one even step).
        assert rung.width / rung.height == pytest.approx(width / height, abs=2 / rung.short_side)


def test_sample_aspect_ratio_is_applied() -> None:
    # 720x480 anamorphic 16:9 (NTSC DVD): shown as 853x480, so square-pixel rungs are 16:9
    # (853 rounds to an even 852 at full height: never wider than the display size).
    rungs = plan_ladder(source(720, 480, sar=Fraction(32, 27)), LadderOptions(heights=(360, 480)))
    assert sizes(rungs) == [(640, 360), (852, 480)]
    # Anamorphic 4:3 content stored 1440x1080 (HDV) is shown 1920x1080.
    rungs = plan_ladder(source(1440, 1080, sar=Fraction(4, 3)), LadderOptions(heights=(720,)))
    assert sizes(rungs) == [(1280, 720)]


def test_sample_aspect_ratio_then_rotation() -> None:
    # SAR stretches the coded width; rotation then turns the stretched picture.
    rungs = plan_ladder(source(720, 480, sar=Fraction(32, 27), rotation=90),
                        LadderOptions(heights=(360,)))
    assert sizes(rungs) == [(360, 640)]


def test_a_picture_too_long_for_the_encoder_is_scaled_down_to_its_longest_side() -> None:
    assert MAX_SIDE == 16384
    assert sizes(plan_ladder(source(20000, 16))) == [(16384, 14)]
    assert sizes(plan_ladder(source(16, 20000))) == [(14, 16384)]
    # A panorama's rung within the limit keeps its short side.
    assert sizes(plan_ladder(source(16000, 1000), LadderOptions(heights=(720,)))) == [(11520, 720)]
    assert sizes(plan_ladder(source(24000, 1000), LadderOptions(heights=(720,)))) == [(16384, 682)]
    # Rungs that all come out at the longest side are one rung.
    assert sizes(plan_ladder(source(25000, 1080))) == [(16384, 708)]


def test_frame_rate_is_capped_at_60() -> None:
    assert MAX_FRAME_RATE == 60
    assert {r.frame_rate for r in plan_ladder(source(1920, 1080, fps=Fraction(120)))} == {60}
    assert {r.frame_rate for r in plan_ladder(source(1920, 1080, fps=Fraction(240)))} == {60}
    ntsc = Fraction(30000, 1001)
    assert {r.frame_rate for r in plan_ladder(source(1920, 1080, fps=ntsc))} == {ntsc}
    high_ntsc = Fraction(60000, 1001)
    assert {r.frame_rate for r in plan_ladder(source(1920, 1080, fps=high_ntsc))} == {high_ntsc}


def test_default_settings_per_rung() -> None:
    rungs = plan_ladder(source(3840, 2160))
    assert [r.preset for r in rungs] == ["ultrafast", "fast", "medium"]
    assert [r.crf for r in rungs] == [25, 23, 21]
    maxrates = [r.maxrate_kbps for r in rungs]
    assert maxrates == sorted(maxrates) and len(set(maxrates)) == 3
    assert all(r.bufsize_kbps == 2 * r.maxrate_kbps for r in rungs)
    assert default_settings(180).maxrate_kbps == 400  # a floor for tiny rungs


def test_per_rung_overrides() -> None:
    overrides = {
        720: RungSettings(preset="slow", crf=30, maxrate_kbps=1000),
        1080: RungSettings(crf=18, bufsize_kbps=12345),
    }
    low, high = plan_ladder(source(1920, 1080), LadderOptions(settings=overrides))
    assert (low.preset, low.crf, low.maxrate_kbps, low.bufsize_kbps) == ("slow", 30, 1000, 2000)
    base = default_settings(1080)
    assert (high.preset, high.crf, high.maxrate_kbps, high.bufsize_kbps) == (
        base.preset, 18, base.maxrate_kbps, 12345)
    # An override for a rung the source is too small for is checked but changes nothing.
    plain = plan_ladder(source(1920, 1080))
    assert plan_ladder(source(1920, 1080), LadderOptions(settings={2160: RungSettings(crf=1)})) \
        == plain


@pytest.mark.parametrize("ladder", [
    LadderOptions(heights=()),
    LadderOptions(heights=(8, 720)),
    LadderOptions(heights=(720, 8640)),
    LadderOptions(settings={720: RungSettings(preset="warp")}),
    LadderOptions(settings={720: RungSettings(crf=52)}),
    LadderOptions(settings={720: RungSettings(crf=-1)}),
    LadderOptions(settings={720: RungSettings(maxrate_kbps=0)}),
    LadderOptions(settings={720: RungSettings(bufsize_kbps=0)}),
    LadderOptions(settings={720: RungSettings(lookahead=-1)}),
    LadderOptions(settings={720: RungSettings(lookahead=251)}),
    # A height the ladder does not hold: the override would do nothing.
    LadderOptions(settings={480: RungSettings(crf=20)}),
    # Bad for a rung this 1080p source is too small for: refused all the same.
    LadderOptions(settings={2160: RungSettings(crf=99)}),
])
def test_invalid_options_raise(ladder: LadderOptions) -> None:
    with pytest.raises(InvalidOptionsError) as info:
        plan_ladder(source(1920, 1080), ladder)
    assert info.value.code == "INVALID_OPTIONS"


def test_parse_heights() -> None:
    assert parse_heights("720,1080p, 2160") == [720, 1080, 2160]
    for bad in ("", " , ", "720,big", "1.5"):
        with pytest.raises(InvalidOptionsError):
            parse_heights(bad)


# -- KeyframeSchedule -------------------------------------------------------------------------


def test_ntsc_boundaries() -> None:
    """29.97 fps: segment k starts at the first frame at or after 2k seconds."""
    schedule = KeyframeSchedule(Fraction(2), MAX_FRAME_RATE)
    time_base = Fraction(1, 30000)
    placed = [schedule.place(index * 1001, time_base) for index in range(200)]
    assert all(p is not None for p in placed)
    frames = [p for p in placed if p is not None]
    assert [f.index for f in frames if f.keyframe] == [0, 60, 120, 180]
    assert [f.seconds for f in frames if f.keyframe] == [Fraction(60 * k * 1001, 30000)
                                                         for k in range(4)]
    assert frames[59].segment == 0 and frames[60].segment == 1  # 1.968 s vs 2.002 s
    assert [f.index for f in frames] == list(range(200))


def test_exact_boundary_frame_opens_the_segment() -> None:
    schedule = KeyframeSchedule(Fraction(2), MAX_FRAME_RATE)
    frames = [schedule.place(index, Fraction(1, 30)) for index in range(121)]
    assert [f.index for f in frames if f is not None and f.keyframe] == [0, 60, 120]


def test_120_fps_that_declares_no_rate_is_capped_to_60() -> None:
    """Off the grid, the cap's token bucket lets the first frames through at the source's own
    pace (its burst), then every other one: 60 fps."""
    schedule = KeyframeSchedule(Fraction(2), MAX_FRAME_RATE)
    placed = [schedule.place(index, Fraction(1, 120)) for index in range(720)]  # 6 s
    kept = [p for p in placed if p is not None]
    assert [i for i, p in enumerate(placed) if p is not None] == [0, 1, 2, *range(4, 720, 2)]
    assert [f.index for f in kept] == list(range(361))
    assert [f.seconds for f in kept if f.keyframe] == [0, 2, 4]


@pytest.mark.parametrize("offsets_ms", [[0, 3, -3, 2, -2, 1, -1, 3, 0, -3],
                                        [0, -2.5], [0, -5, 5, -5, 0]],
                         ids=["3ms", "14-19ms", "5ms"])
def test_a_clock_that_jitters_keeps_every_frame(offsets_ms: list[float]) -> None:
    """60 fps on a millisecond clock that jitters (a browser's recording), or whose frames come
    14 and 19 ms apart by turns: every frame is kept at its own time, where dropping each frame
    that came less than 15 ms after the last one kept dropped a sixth to a third of them."""
    times = hostile.jittered_ms(60, 60 * 30, offsets_ms)
    schedule = KeyframeSchedule(Fraction(2), MAX_FRAME_RATE, Fraction(60))
    placed = [schedule.place(t, Fraction(1, 1000)) for t in times]
    assert [p.pts if p is not None else None for p in placed] == times


def test_a_fast_stretch_of_a_variable_rate_source_is_capped_to_60() -> None:
    """2 s at 144 fps between seconds at 30 fps (a game capture that speeds up): the stretch
    gives 60 fps of its frames, two or three source frames apart after a burst at its start;
    the rest keeps every frame."""
    time_base = Fraction(1, 720)
    ticks = [*range(0, 720, 24), *range(720, 2160, 5), *range(2160, 2880, 24)]
    schedule = KeyframeSchedule(Fraction(2), MAX_FRAME_RATE)
    kept = [t for t in ticks if schedule.place(t, time_base) is not None]
    fast = [t for t in kept if 720 <= t < 2160]
    assert 120 <= len(fast) <= 122
    assert all(b - a in (5, 10, 15) for a, b in itertools.pairwise(fast))
    assert [t for t in kept if not 720 <= t < 2160] == [t for t in ticks if not 720 <= t < 2160]


@pytest.mark.parametrize(("source", "rate"), [
    (100, 50), (200, 50), (150, 50), (98, 50), (Fraction(120000, 1001), Fraction(60000, 1001)),
    (Fraction(240000, 1001), Fraction(60000, 1001)), (120, 60), (240, 60), (144, 60), (90, 60),
    (165, 60), (75, 60), (1000, 60), (60, 60), (50, 60), (30, 60)])
def test_a_camera_high_speed_mode_gets_its_base_rate_grid(source: int | Fraction,
                                                          rate: int | Fraction) -> None:
    """A source above the cap whose rate divides by 2, 3 or 4 to 50 or 59.94 fps goes on that
    grid; any other on the cap's (and a source below the cap is on none, the cap holding)."""
    assert grid_rate(Fraction(source), MAX_FRAME_RATE) == rate
    assert KeyframeSchedule(Fraction(2), MAX_FRAME_RATE, Fraction(source)).rate == rate


def test_144_fps_is_put_on_a_60_fps_grid() -> None:
    """Each 1/60 s slot shows the source frame nearest to it (the earlier on a tie), retimed
    to it: 60 fps, not the 48 that dropping frames closer than 1/60 s to the last one kept."""
    schedule = KeyframeSchedule(Fraction(2), MAX_FRAME_RATE, Fraction(144))
    time_base = Fraction(1, 720)  # both 1/144 and 1/60 s in whole ticks
    placed = [schedule.place(index * 5, time_base, 5) for index in range(6 * 144)]
    kept = [(index, p) for index, p in enumerate(placed) if p is not None]
    assert len(kept) == 6 * 60
    assert [p.seconds for _, p in kept] == [Fraction(k, 60) for k in range(360)]
    assert all(abs(Fraction(index, 144) - p.seconds) <= Fraction(1, 120) for index, p in kept)
    assert [p.seconds for _, p in kept if p.keyframe] == [0, 2, 4]
    assert all(p.duration == 0 for _, p in kept)  # the slot's length, not the source frame's


@pytest.mark.parametrize(("rate", "source", "timeline"), [
    (144, Fraction(1, 144), Fraction(1, 720)),  # an AVI counts frames
    (90, Fraction(1, 90), Fraction(1, 180)),
    (144, Fraction(1, 1000), Fraction(1, 3000)),  # Matroska counts milliseconds
    (144, Fraction(1, 90000), Fraction(1, 90000)),  # counts 1/60 s already
    (30, Fraction(1, 30), Fraction(1, 30)),  # off the grid, frames keep their own times
    (144, Fraction(1, 2**31 - 1), Fraction(1, 2**31 - 1))])  # no finer clock fits an MP4
def test_the_timeline_counts_the_grid_and_the_source_exactly(rate: int, source: Fraction,
                                                            timeline: Fraction) -> None:
    schedule = KeyframeSchedule(Fraction(2), MAX_FRAME_RATE, Fraction(rate))
    assert schedule.timeline_time_base(source) == timeline


def test_120_fps_on_the_grid_keeps_every_other_frame_at_its_own_time() -> None:
    schedule = KeyframeSchedule(Fraction(2), MAX_FRAME_RATE, Fraction(120))
    placed = [schedule.place(index, Fraction(1, 120)) for index in range(720)]
    assert [i for i, p in enumerate(placed) if p is not None] == list(range(0, 720, 2))
    assert all(p.pts == i for i, p in enumerate(placed) if p is not None)


def test_90_fps_on_the_grid_ends_with_the_source() -> None:
    """3 s of 90 fps: 180 frames; a last frame whose slot starts after the source stopped
    showing it is not kept (it made the video a slot longer than its source)."""
    schedule = KeyframeSchedule(Fraction(2), MAX_FRAME_RATE, Fraction(90))
    time_base = Fraction(1, 180)
    kept = [p for p in (schedule.place(index * 2, time_base, 2) for index in range(270))
            if p is not None]
    assert len(kept) == 180
    assert kept[-1].seconds == Fraction(179, 60)


def test_the_grid_never_moves_a_frame_into_the_segment_before() -> None:
    """Segments of 2.002 s are not on the 1/60 s grid. A frame at a segment's start (as the
    decoder repeats the last one in a long gap) would be retimed 2 ms back, into the segment
    before, which would then last until the next one: it takes the slot after instead."""
    segment = Fraction(2002, 1000)
    schedule = KeyframeSchedule(segment, MAX_FRAME_RATE, Fraction(144))
    time_base = Fraction(1, 144000)
    ticks = [*range(0, 144000, 1000), 2002 * 144, 4004 * 144, *range(648000, 936000, 1000)]
    kept = [p for p in (schedule.place(t, time_base) for t in ticks) if p is not None]
    starts = [p.seconds for p in kept if p.keyframe]
    assert [p.segment for p in kept if p.keyframe] == [0, 1, 2, 3]
    for k, start in enumerate(starts):
        assert k * segment <= start < k * segment + Fraction(1, 60)
    assert all(b.pts > a.pts for a, b in itertools.pairwise(kept))


def test_a_source_a_hair_over_the_cap_keeps_its_own_times() -> None:
    """100 s of 60.03 fps (a 60 fps camera's clock running fast) keeps every frame at its own
    time; on the grid it would be moved to whole 60ths of a second. The cap's bucket fills a
    tenth of a percent fast for such clocks: filled at exactly 60 fps, it dropped 2 of these
    6,003 frames (and an earlier rule 29)."""
    rate = Fraction(6003, 100)
    schedule = KeyframeSchedule(Fraction(2), MAX_FRAME_RATE, rate)
    placed = [schedule.place(index * 100, Fraction(1, 6003)) for index in range(6003)]
    assert all(p is not None and p.pts == 100 * i for i, p in enumerate(placed))
    on_grid = KeyframeSchedule(Fraction(2), MAX_FRAME_RATE, rate * 2)
    moved = [on_grid.place(index * 100, Fraction(1, 6003)) for index in range(300)]
    assert any(p is not None and p.pts != 100 * i for i, p in enumerate(moved))


def test_59_94_fps_keeps_every_frame() -> None:
    schedule = KeyframeSchedule(Fraction(2), MAX_FRAME_RATE)
    placed = [schedule.place(index * 1001, Fraction(1, 60000)) for index in range(300)]
    assert all(p is not None for p in placed)


def test_variable_frame_rate_and_gaps() -> None:
    schedule = KeyframeSchedule(Fraction(2), MAX_FRAME_RATE)
    seconds = [Fraction(0), Fraction(1, 30), Fraction(1, 12), Fraction(199, 100),
               Fraction(201, 100), Fraction(3), Fraction(9), Fraction(9) + Fraction(1, 20)]
    frames = [schedule.place(int(s * 90000), Fraction(1, 90000)) for s in seconds]
    assert all(f is not None for f in frames)
    placed = [f for f in frames if f is not None]
    assert [f.keyframe for f in placed] == [True, False, False, False, True, False, True, False]
    # A gap across several boundaries opens one segment, numbered by time.
    assert [f.segment for f in placed] == [0, 0, 0, 0, 1, 1, 4, 4]


def test_durations_are_carried() -> None:
    schedule = KeyframeSchedule(Fraction(2), MAX_FRAME_RATE)
    first = schedule.place(0, Fraction(1, 90000), 4500)
    assert first is not None and first.duration == 4500


def test_segment_of_and_bad_lengths() -> None:
    assert segment_of(Fraction(399, 100), Fraction(2)) == 1
    assert segment_of(Fraction(4), Fraction(2)) == 2
    with pytest.raises(ValueError):
        KeyframeSchedule(Fraction(0), MAX_FRAME_RATE)
