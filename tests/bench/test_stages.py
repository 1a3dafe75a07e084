"""Microbenchmarks of the pipeline's stages (pytest-benchmark), on generated 4K frames.

Kept out of the default run: ``pyproject.toml``'s ``--benchmark-skip`` marks every test here as
skipped at collection, before any fixture (or sample) is made, so ``python -m pytest`` stays fast.
Run them with::

    .venv/bin/python -m pytest tests/bench --benchmark-only

Each benchmark also records frames per second in ``extra_info``.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.codec
import av.video.codeccontext
import av.video.frame
import pytest

from engine.decode import decode_source
from engine.fanout import FrameCache
from engine.gop import FrameTime, KeyframeSchedule
from engine.hwaccel import SOFTWARE_ENCODER, encoder_options
from engine.ladder import MAX_FRAME_RATE, Rung, default_settings
from engine.probe import open_source
from engine.sample import make_sample
from engine.scale import Scaler
from engine.segment import HlsWriter

WIDTH, HEIGHT, FPS = 3840, 2160, 30
SOURCE_SECONDS = 1.0
SEGMENT = Fraction(4)
#: Short side -> size of the default ladder's rungs for a 16:9 4K source.
RUNG_SIZES = {720: (1280, 720), 1080: (1920, 1080), 2160: (3840, 2160)}
#: Frames per encode round: enough to get past x264's start-up, few enough for 2160p medium.
ENCODE_FRAMES = {720: 30, 1080: 16, 2160: 8}
CACHE_FRAMES = 8


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 s of the generated 4K sample (noise texture, moving bar, tone)."""
    return make_sample(tmp_path_factory.mktemp("bench") / "source.mp4", width=WIDTH,
                       height=HEIGHT, seconds=SOURCE_SECONDS, fps=FPS)


@pytest.fixture(scope="module")
def frames(source: Path) -> list[av.video.frame.VideoFrame]:
    """The source's decoded 4K frames (yuv420p)."""
    with av.open(str(source)) as container:
        return [f.reformat(format="yuv420p") for f in container.decode(video=0)]


def rung(short_side: int) -> Rung:
    settings = default_settings(short_side)
    assert settings.preset and settings.crf is not None and settings.maxrate_kbps
    width, height = RUNG_SIZES[short_side]
    return Rung(f"{short_side}p", width, height, Fraction(FPS), settings.preset, settings.crf,
                settings.maxrate_kbps, settings.bufsize_kbps or 2 * settings.maxrate_kbps,
                lookahead=settings.lookahead or 0)


def times(count: int) -> Iterator[FrameTime]:
    for index in range(count):
        seconds = Fraction(index, FPS)
        yield FrameTime(index, index, seconds, int(seconds // SEGMENT), index == 0, 1)


def fps(benchmark: Any, frames_per_round: int) -> None:
    """Record frames per second (at the mean round time) next to the timings."""
    mean = benchmark.stats.stats.mean
    benchmark.extra_info["fps"] = round(frames_per_round / mean, 1) if mean else None


def test_decode(benchmark: Any, source: Path) -> None:
    """The engine's one decode pass (open, probe, decode, normalise), frames dropped at once."""
    def decode() -> int:
        with open_source(source) as opened:
            stats = decode_source(opened, KeyframeSchedule(SEGMENT, MAX_FRAME_RATE),
                                  lambda frame, when: None, [], threading.Event())
        return stats.frames_decoded

    decoded = benchmark.pedantic(decode, rounds=5, iterations=1, warmup_rounds=1)
    assert decoded == round(SOURCE_SECONDS * FPS)
    fps(benchmark, decoded)


@pytest.mark.parametrize("short_side", sorted(RUNG_SIZES))
def test_scale(benchmark: Any, frames: list[av.video.frame.VideoFrame], short_side: int) -> None:
    """The engine's AREA scaler, 4K to each rung's size, one frame per call."""
    width, height = RUNG_SIZES[short_side]
    scaler = Scaler(width, height, 0)
    source_frames = itertools.cycle(frames)
    # 2160p from a 4K source is the same size and format: the reformatter hands the frame back.
    out = benchmark(lambda: scaler.scale(next(source_frames)))
    assert (out.width, out.height) == (width, height)
    fps(benchmark, 1)


@pytest.mark.parametrize("short_side", sorted(RUNG_SIZES))
def test_encode(benchmark: Any, frames: list[av.video.frame.VideoFrame],
                short_side: int) -> None:
    """libx264 with each rung's default settings (engine.hwaccel.encoder_options), pre-scaled
    frames, encoder opened and flushed every round (in memory, no muxing)."""
    target = rung(short_side)
    count = ENCODE_FRAMES[short_side]
    scaler = Scaler(target.width, target.height, 0)
    scaled = [scaler.scale(frames[i % len(frames)]) for i in range(count)]
    gop = 2 * math.ceil(SEGMENT * MAX_FRAME_RATE)

    def encode() -> int:
        ctx = av.codec.CodecContext.create(SOFTWARE_ENCODER, "w")
        assert isinstance(ctx, av.video.codeccontext.VideoCodecContext)
        ctx.width, ctx.height, ctx.pix_fmt = target.width, target.height, "yuv420p"
        ctx.time_base, ctx.framerate = Fraction(1, FPS), Fraction(FPS)
        ctx.options = encoder_options(SOFTWARE_ENCODER, target, gop)
        packets = 0
        for index, frame in enumerate(scaled):
            frame.pts = index
            packets += len(ctx.encode(frame))
        return packets + len(ctx.encode(None))

    packets = benchmark.pedantic(encode, rounds=3, iterations=1, warmup_rounds=0)
    assert packets == count
    fps(benchmark, count)


@pytest.mark.parametrize("where", ["memory", "spill"])
def test_frame_cache(benchmark: Any, frames: list[av.video.frame.VideoFrame], tmp_path: Path,
                     where: str) -> None:
    """engine.fanout.FrameCache: put then get 8 4K frames with one reader, slots reused
    (steady state); ``spill`` has no memory budget, so every frame goes through the scratch
    file (in the page cache: no fsync)."""
    budget = CACHE_FRAMES * WIDTH * HEIGHT * 3 // 2 if where == "memory" else 0
    cache = FrameCache(1, WIDTH, HEIGHT, budget, tmp_path, threading.Event(), 1 << 30)
    reader = cache.frames(0)

    def put_get() -> int:
        for frame, when in zip(frames, times(CACHE_FRAMES), strict=False):
            cache.put(frame, when)
        return sum(1 for _ in zip(range(CACHE_FRAMES), reader, strict=False))

    try:
        got = benchmark.pedantic(put_get, rounds=10, iterations=1, warmup_rounds=1)
    finally:
        cache.close()
    assert got == CACHE_FRAMES
    assert (cache.stats.frames_spilled > 0) == (where == "spill")
    fps(benchmark, CACHE_FRAMES)


def test_segment_write(benchmark: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """engine.segment.HlsWriter: 4 s of encoded 720p packets remuxed into fMP4 HLS segments
    (1 s segments, so several files), closed and measured on disk."""
    clip = make_sample(tmp_path_factory.mktemp("segments") / "720p.mp4", width=1280,
                       height=720, seconds=4.0, fps=FPS)
    rounds = iter(range(1000))

    def write() -> int:
        out = clip.parent / f"round-{next(rounds)}"
        with av.open(str(clip)) as source:
            video = source.streams.video[0]
            writer = HlsWriter(out, Fraction(1), "fmp4")
            stream = writer.container.add_stream_from_template(video)
            for packet in source.demux(video):
                if packet.dts is None:
                    continue
                packet.stream = stream
                writer.mux([packet])
            return len(writer.close())

    segments = benchmark.pedantic(write, rounds=5, iterations=1, warmup_rounds=1)
    assert segments >= 1
    fps(benchmark, round(4.0 * FPS))
