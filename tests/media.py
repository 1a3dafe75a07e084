"""Synthesise test media at run time, so the repository never holds binary fixtures.

Every ``make_*`` function writes one file and returns its :class:`~pathlib.Path`. Videos are
encoded with PyAV (libx264 + AAC in MP4 unless asked otherwise; the container follows the file
suffix). The picture is a textured, panning pattern (gradient + coarse and fine noise), so
encoders see realistic motion and bitrates, while staying cheap to generate.

Frame counter
    The top strip of every non-black frame carries the frame's index as 16 black/white cells
    (least significant bit on the left), laid out relative to the frame size, so it survives
    lossy encoding and scaling. :func:`frame_index` reads it back from a decoded frame.

Rotation (display matrix) with PyAV 18
    *Writing*: ``VideoStream.set_display_rotation(degrees)`` before the first ``encode``;
    ``degrees`` is counter-clockwise, the same convention as ``ffmpeg -display_rotation``, so no
    ffmpeg CLI step is needed.

    *Reading*: PyAV 18 exposes no stream-level side data (no ``stream.side_data``, nothing in
    ``stream.metadata``, no ``rotate`` tag, nothing on demuxed packets). The decoder copies the
    container's display matrix onto every decoded frame, so decode one frame and read
    ``VideoFrame.rotation``::

        with av.open(path) as container:
            frame = next(container.decode(video=0))
            rotation = frame.rotation  # int, counter-clockwise degrees in [-180, 180]

    The value is normalised: writing 90 reads back 90, 180 reads back **-180**, and 270 reads back
    **-90**. To display the picture, rotate the coded image counter-clockwise by ``rotation``
    degrees (ffmpeg's auto-rotation does exactly that); |rotation| == 90 means portrait for a
    landscape-coded picture. A phone held upright typically records ``rotation == -90``. The raw
    3x3 matrix (needed to see flips: ``rotation`` reads a left-right mirror as -180) is
    ``numpy.frombuffer(bytes(frame.side_data[av.sidedata.sidedata.Type.DISPLAYMATRIX]), "<i4")``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.subtitles.subtitle import SubtitleSet

from engine.captions import with_captions

COUNTER_BITS = 16
"""Number of cells in the frame-counter strip (indices wrap after 65535 frames)."""

_VFR_TIME_BASE = Fraction(1, 90000)
_VFR_DURATIONS = (3000, 4500)  # 1/30 s and 1/20 s in the 1/90000 time base
_FAST_PRESETS: dict[str, dict[str, str]] = {
    "libx264": {"preset": "veryfast"},
    "libx265": {"preset": "ultrafast", "log-level": "error"},
}


# --- picture --------------------------------------------------------------------------------


def _texture(width: int, height: int, seed: int) -> np.ndarray:
    """Return a ``(height, width, 3)`` uint8 picture: gradients, 8x8 blocky noise, fine grain."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    gradient = np.stack(
        [
            x * (255 / max(width - 1, 1)),
            y * (255 / max(height - 1, 1)),
            128 + 100 * np.sin((x + y) / 12),
        ],
        axis=-1,
    )
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3)).astype(np.float32)
    blocks = coarse.repeat(8, axis=0).repeat(8, axis=1)[:height, :width]
    grain = rng.normal(0, 6, (height, width, 3))
    return np.clip(0.5 * gradient + 0.5 * blocks + grain, 0, 255).astype(np.uint8)


def _counter_cells(width: int, height: int) -> list[tuple[slice, slice]]:
    """Return the ``(rows, columns)`` slices of each counter cell, least significant bit first."""
    rows = slice(0, max(height // 12, 2))
    return [
        (rows, slice(bit * width // COUNTER_BITS, (bit + 1) * width // COUNTER_BITS))
        for bit in range(COUNTER_BITS)
    ]


def _picture(texture: np.ndarray, index: int) -> np.ndarray:
    """Return frame ``index``: the texture panned diagonally, with the counter strip drawn in."""
    height, width, _ = texture.shape
    image = np.roll(texture, (2 * index, 4 * index), axis=(0, 1))  # np.roll copies
    for bit, cell in enumerate(_counter_cells(width, height)):
        image[cell] = 255 if (index >> bit) & 1 else 0
    return image


def frame_index(frame: av.VideoFrame | np.ndarray) -> int:
    """Read the frame counter drawn by the ``make_*video`` functions.

    Accepts a decoded :class:`av.VideoFrame` (any size or pixel format, as long as it has not been
    rotated or cropped) or an RGB/grey ``ndarray``. Each cell is judged by the mean of its centre.
    """
    image = frame.to_ndarray(format="rgb24") if isinstance(frame, av.VideoFrame) else frame
    grey = image if image.ndim == 2 else image.mean(axis=-1)
    height, width = grey.shape
    value = 0
    for bit, (rows, cols) in enumerate(_counter_cells(width, height)):
        cell = grey[rows, cols]
        h, w = cell.shape
        centre = cell[h // 4 : h - h // 4, w // 4 : w - w // 4]
        if centre.mean() > 127:
            value |= 1 << bit
    return value


# --- sound ----------------------------------------------------------------------------------


def _tone_frames(
    seconds: float, tone_hz: float, sample_rate: int, channels: int, chunk: int = 1024,
    delay: int = 0,
) -> Iterator[av.AudioFrame]:
    """Yield ``fltp`` frames of a sine tone (amplitude 0.25) lasting ``seconds``, the first
    ``delay`` samples after time 0."""
    total = round(seconds * sample_rate)
    for start in range(0, total, chunk):
        t = np.arange(start, min(start + chunk, total)) / sample_rate
        wave = (0.25 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
        samples = np.ascontiguousarray(np.broadcast_to(wave, (channels, wave.size)))
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=_layout(channels))
        frame.sample_rate = sample_rate
        frame.pts = delay + start
        frame.time_base = Fraction(1, sample_rate)
        yield frame


def _layout(channels: int) -> str:
    """Return FFmpeg's default layout name for a channel count."""
    return {1: "mono", 2: "stereo", 6: "5.1"}.get(channels, f"{channels}c")


# --- video core -----------------------------------------------------------------------------


def _write_video(
    path: str | Path,
    *,
    width: int,
    height: int,
    rate: Fraction,
    time_base: Fraction,
    durations: Sequence[int],
    audio: bool,
    audio_delay: float = 0.0,
    black_frames: int = 0,
    tone_hz: float = 440.0,
    sample_rate: int = 48000,
    channels: int = 2,
    pix_fmt: str = "yuv420p",
    codec: str = "libx264",
    codec_options: Mapping[str, str] | None = None,
    audio_codec: str = "aac",
    container_format: str | None = None,
    container_options: Mapping[str, str] | None = None,
    rotation: int = 0,
    mirrored: bool = False,
    sample_aspect_ratio: Fraction | None = None,
    seed: int = 0,
    captions: Sequence[bytes] = (),
) -> Path:
    """Encode one frame per entry of ``durations`` (in ``time_base`` ticks), plus a tone.

    Audio and video packets are muxed in presentation order, as a camera would write them.
    """
    path = Path(path)
    options = dict(_FAST_PRESETS.get(codec, {}) if codec_options is None else codec_options)
    seconds = float(sum(durations) * time_base)
    texture = _texture(width, height, seed)
    black = np.zeros_like(texture)
    with av.open(
        str(path), "w", format=container_format, options=dict(container_options or {})
    ) as out:
        video = out.add_stream(codec, rate=rate, options=options)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.codec_context.time_base = time_base
        if rotation % 360 or mirrored:
            video.set_display_rotation(rotation, hflip=mirrored)
        if sample_aspect_ratio is not None:
            video.codec_context.sample_aspect_ratio = sample_aspect_ratio
        sound = (out.add_stream(audio_codec, rate=sample_rate, layout=_layout(channels))
                 if audio else None)
        tones = (_tone_frames(seconds - audio_delay, tone_hz, sample_rate, channels,
                              delay=round(audio_delay * sample_rate)) if audio else iter(()))
        pending = next(tones, None)

        # Each packet gets its frame's duration: muxers guess the last one's otherwise.
        lasting: dict[int | None, int] = {}
        indices: dict[int | None, int] = {}

        def timed(packets: list[av.Packet]) -> list[av.Packet]:
            out = []
            for packet in packets:
                packet.duration = lasting.pop(packet.pts, 0)
                index = indices.pop(packet.pts, len(captions))
                # with_captions leaves a packet with no captions as it is.
                out.append(with_captions(packet, captions[index] if index < len(captions)
                                         else b""))
            return out

        pts = 0
        for index, duration in enumerate(durations):
            while sound is not None and pending is not None and pending.time <= pts * time_base:
                out.mux(sound.encode(pending))
                pending = next(tones, None)
            image = black if index < black_frames else _picture(texture, index)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts, time_base
            lasting[pts], indices[pts] = duration, index
            out.mux(timed(video.encode(frame)))
            pts += duration
        out.mux(timed(video.encode(None)))
        if sound is not None:
            while pending is not None:
                out.mux(sound.encode(pending))
                pending = next(tones, None)
            out.mux(sound.encode(None))
    return path


# --- public makers --------------------------------------------------------------------------


def make_video(
    path: str | Path,
    *,
    width: int = 640,
    height: int = 360,
    fps: Fraction | int = Fraction(30),
    seconds: float = 4.0,
    audio: bool = True,
    audio_delay: float = 0.0,
    tone_hz: float = 440.0,
    sample_rate: int = 48000,
    channels: int = 2,
    pix_fmt: str = "yuv420p",
    codec: str = "libx264",
    codec_options: Mapping[str, str] | None = None,
    audio_codec: str = "aac",
    container_format: str | None = None,
    container_options: Mapping[str, str] | None = None,
    rotation: int = 0,
    mirrored: bool = False,
    black_seconds: float = 0.0,
    sample_aspect_ratio: Fraction | None = None,
    seed: int = 0,
    captions: Sequence[bytes] = (),
) -> Path:
    """Write a constant-frame-rate video of ``round(seconds * fps)`` frames, with a sine tone.

    ``fps`` may be fractional, e.g. ``Fraction(30000, 1001)``. ``pix_fmt`` may be anything the
    codec takes; with libx264, ``"yuv420p10le"`` gives High 10 and ``"yuv422p"`` High 4:2:2.
    ``codec_options`` replaces the default fast preset (libx264: ``preset=veryfast``), e.g.
    ``{"g": "48", "bf": "0"}``. ``audio_codec`` encodes the tone (AAC by default; PyAV converts
    it to the encoder's sample format). ``container_format`` overrides the muxer guessed from
    the suffix (``.mp4``, ``.mov``, ``.mkv``, ``.ts`` ...); ``container_options`` go to the
    muxer, e.g. ``{"movflags": "+faststart"}``. ``audio_delay``: seconds from the first
    picture to the first sound (the tone still ends with the video). ``rotation``,
    ``mirrored`` and ``black_seconds``: see :func:`make_rotated_video` and
    :func:`make_black_start_video`. ``sample_aspect_ratio``: the width of a pixel over its
    height, as the stream declares it (square when not given). ``captions``: caption triples
    for each frame (see :func:`cea608_pop_on`), in an A/53 SEI on its picture as broadcast
    encoders carry CEA-608/708; the engine's :func:`engine.captions.with_captions` writes it,
    and FFmpeg's decoder, which the tests read the captions back with, checks it.
    """
    fps = Fraction(fps)
    frames = round(seconds * fps)
    return _write_video(
        path,
        width=width,
        height=height,
        rate=fps,
        time_base=1 / fps,
        durations=[1] * frames,
        black_frames=round(black_seconds * fps),
        audio=audio,
        audio_delay=audio_delay,
        tone_hz=tone_hz,
        sample_rate=sample_rate,
        channels=channels,
        pix_fmt=pix_fmt,
        codec=codec,
        codec_options=codec_options,
        audio_codec=audio_codec,
        container_format=container_format,
        container_options=container_options,
        rotation=rotation,
        mirrored=mirrored,
        sample_aspect_ratio=sample_aspect_ratio,
        seed=seed,
        captions=captions,
    )


def vfr_durations(seconds: float, seed: int = 0) -> list[int]:
    """Return irregular frame durations (1/90000 s ticks) of 1/30 or 1/20 s covering ``seconds``.

    Both durations always occur (the pattern starts 1/30, 1/20); the rest is seeded-random.
    """
    rng = random.Random(seed)
    durations = list(_VFR_DURATIONS)
    while sum(durations) * _VFR_TIME_BASE < seconds:
        durations.append(rng.choice(_VFR_DURATIONS))
    return durations


def make_vfr_video(
    path: str | Path,
    *,
    width: int = 640,
    height: int = 360,
    seconds: float = 4.0,
    audio: bool = True,
    seed: int = 0,
    **kwargs: Any,
) -> Path:
    """Write a variable-frame-rate video whose frames last 1/30 or 1/20 s, irregularly.

    Timestamps are set in a 1/90000 time base (see :func:`vfr_durations`); the nominal rate
    handed to the encoder is 30 fps. Other keyword arguments are as for :func:`make_video`
    (except ``fps`` and ``black_seconds``).
    """
    return _write_video(
        path,
        width=width,
        height=height,
        rate=Fraction(30),
        time_base=_VFR_TIME_BASE,
        durations=vfr_durations(seconds, seed),
        audio=audio,
        seed=seed,
        **kwargs,
    )


def make_sync_video(path: str | Path, *, seconds: float = 20.0,
                    time_base: Fraction = Fraction(1, 600), seed: int = 0) -> Path:
    """Write a phone's kind of variable frame rate, made to check that sound stays with the
    picture: frames about 1/30 s apart (each moved by up to 4 ms, one in 20 dropped) on
    ``time_base``, 160x90, the first frame at or after each whole second white and the others
    dark; and mono 48 kHz AAC, silent but for a 50 ms 1 kHz beep from each whole second on.
    Each flash comes 0 to 67 ms after its beep, as the frames fell."""
    rng = random.Random(seed)
    rate = 48000
    times: list[float] = []
    moment = 0.0
    while moment < seconds:
        times.append(moment)
        moment += 1 / 30 + rng.uniform(-0.004, 0.004) + (1 / 30 if rng.random() < 0.05 else 0)
    sound = np.zeros(round(seconds * rate), np.float32)
    beep = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(rate // 20) / rate)
    for second in range(int(seconds)):
        sound[second * rate:second * rate + beep.size] = beep
    path = Path(path)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=30, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = 160, 90, "yuv420p"
        video.codec_context.time_base = time_base
        audio = out.add_stream("aac", rate=rate, layout="mono")
        sent = 0

        def sound_until(sample: int) -> None:
            nonlocal sent
            while sent < min(sample, sound.size):
                chunk = sound[sent:sent + 1024]
                frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = rate, sent, Fraction(1, rate)
                out.mux(audio.encode(frame))
                sent += chunk.size

        flash = 0
        for moment in times:
            sound_until(round(moment * rate))
            white = moment >= flash
            flash = max(flash, math.floor(moment) + 1) if white else flash
            image = np.full((90, 160, 3), 255 if white else 30, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = round(moment / time_base), time_base
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        sound_until(sound.size)
        out.mux(audio.encode(None))
    return path


def make_still_ending_video(path: str | Path, *, seconds: float = 2.0, hold_seconds: float = 8.0,
                            fps: int = 30, **kwargs: Any) -> Path:
    """Write ``seconds`` of moving video whose last frame is then held for ``hold_seconds`` as
    one frame (as a slideshow or a screen recording ending on a still writes it), with a tone
    for the whole length. Other keyword arguments are as for :func:`make_video`."""
    frames = round(seconds * fps)
    return _write_video(path, rate=Fraction(fps), time_base=Fraction(1, fps),
                        durations=[1] * (frames - 1) + [1 + round(hold_seconds * fps)],
                        **{"width": 320, "height": 180, "audio": True, **kwargs})


def make_rotated_video(path: str | Path, rotation: int, mirrored: bool = False,
                       **kwargs: Any) -> Path:
    """Write a landscape-coded video (640x360 by default) carrying a display-matrix rotation.

    ``rotation`` is 0, 90, 180 or 270 degrees counter-clockwise (``ffmpeg -display_rotation``'s
    convention); players show 90 and 270 as portrait. With ``mirrored``, the matrix also flips
    the picture left to right (``ffmpeg -display_hflip``), as some front cameras record it.
    The coded frames stay landscape. Read it back with ``VideoFrame.rotation`` on a decoded
    frame, which gives 90, -180 and -90 for the unmirrored turns (see the module docstring).
    Other keyword arguments go to :func:`make_video`.
    """
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90, not {rotation}")
    return make_video(path, rotation=rotation, mirrored=mirrored, **kwargs)


def make_black_start_video(path: str | Path, black_seconds: float = 0.5, **kwargs: Any) -> Path:
    """Write a video whose first ``black_seconds`` are pure black (no counter), then content.

    Meant for poster/thumbnail selection, which should skip the black lead-in. Other keyword
    arguments go to :func:`make_video`.
    """
    return make_video(path, black_seconds=black_seconds, **kwargs)


def make_pq_pictures(path: str | Path, pictures: Sequence[Sequence[np.ndarray | int]],
                     first: int = 0) -> Path:
    """Write 10-bit 4:2:0 PQ BT.2020 pictures losslessly (H.264 at QP 0, 30 fps), frame
    numbers from ``first``: each picture is its Y, U and V samples (an array of a plane's
    size, or one value for the whole plane), as they are. The size is the first luma array's,
    64x64 with none."""
    path = Path(path)
    height, width = next((luma.shape for luma, *_ in pictures if not isinstance(luma, int)),
                         (64, 64))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30, options={"qp": "0"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p10le"
        context = stream.codec_context
        context.colorspace, context.color_primaries, context.color_trc = 9, 9, 16
        for index, picture in enumerate(pictures, first):
            frame = av.VideoFrame(width, height, "yuv420p10le")
            for plane, samples in zip(frame.planes, picture, strict=True):
                rows = np.frombuffer(memoryview(plane), np.uint16).reshape(
                    -1, plane.line_size // 2)[:plane.height, :plane.width]
                rows[:] = samples
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def make_luma_ramp(
    path: str | Path,
    *,
    full_range: bool,
    matrix: int = 2,
    primaries: int = 2,
    transfer: int = 2,
    pix_fmt: str = "yuv420p",
    width: int = 320,
    height: int = 180,
    frames: int = 15,
) -> Path:
    """Write a grey ramp, luma from the lowest sample value on the left to the highest on the
    right, tagged with the given colour description (FFmpeg's codes, 2: unspecified).

    The samples are written as they are, not converted from RGB, so a reader can check what a
    transcoder did to the range: with ``full_range`` they span 0-255, otherwise 16-235 (times 4
    for a 10-bit ``pix_fmt``), and the column ``x`` holds ``low + (high - low) * x / (width -
    1)``.
    """
    path = Path(path)
    deep = pix_fmt.endswith("10le")
    low, high = (0, 255) if full_range else (16, 235)
    scale, dtype = (4, np.uint16) if deep else (1, np.uint8)
    ramp = np.round(np.linspace(low, high, width) * scale).astype(dtype)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=30, options={"preset": "veryfast", "crf": "10"})
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        context = video.codec_context
        context.color_range = 2 if full_range else 1
        context.colorspace, context.color_primaries, context.color_trc = (
            matrix, primaries, transfer)
        for index in range(frames):
            frame = av.VideoFrame(width, height, pix_fmt)
            for number, plane in enumerate(frame.planes):
                rows = np.frombuffer(memoryview(plane), dtype).reshape(
                    -1, plane.line_size // dtype().itemsize)[: plane.height, : plane.width]
                rows[:] = ramp if number == 0 else 128 * scale
            frame.pts = index
            frame.color_range = context.color_range
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
    return path


def make_interlaced_bar(path: str | Path, *, top_field_first: bool = True, width: int = 320,
                        height: int = 180, frames: int = 20, speed: int = 6) -> Path:
    """Write interlaced H.264 (x264, MBAFF) of a bright vertical bar moving right ``speed``
    pixels per field on a flat grey background, as a camcorder films it: each frame's two
    fields are taken half a frame interval apart, the first one (top or bottom) earlier.

    A progressive picture of it has no vertical detail at all, so any difference between
    neighbouring lines in a decoded frame is combing (see :func:`comb`).
    """
    path = Path(path)
    order = "tff=1" if top_field_first else "bff=1"
    rows = np.arange(height)[:, None]
    first_field = rows % 2 == (0 if top_field_first else 1)
    columns = np.arange(width)[None, :]
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=30, options={
            "preset": "veryfast", "crf": "12", "x264-params": f"interlaced=1:{order}"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            early = (columns >= 2 * index * speed) & (columns < 2 * index * speed + 24)
            late = (columns >= (2 * index + 1) * speed) & (columns < (2 * index + 1) * speed + 24)
            bar = np.where(first_field, early, late)
            luma = np.where(bar, 220, 60).astype(np.uint8)
            frame = av.VideoFrame(width, height, "yuv420p")
            for number, plane in enumerate(frame.planes):
                view = np.frombuffer(memoryview(plane), np.uint8).reshape(
                    -1, plane.line_size)[: plane.height, : plane.width]
                view[:] = luma if number == 0 else 128
            frame.pts = index
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
    return path


def comb(luma: np.ndarray) -> float:
    """How much a picture's lines alternate: the mean distance of each line from the average
    of the lines above and below it (0 for a picture without vertical detail)."""
    rows = luma.astype(np.float64)
    return float(np.abs(rows[1:-1] - (rows[:-2] + rows[2:]) / 2).mean())


def make_rgb_bars(path: str | Path, colours: Sequence[tuple[int, int, int]], *,
                  width: int = 320, height: int = 180, frames: int = 15) -> Path:
    """Write an RGB video (PNG frames in MOV, as screen recorders make): vertical bars of
    ``colours``, left to right."""
    path = Path(path)
    image = np.zeros((height, width, 3), np.uint8)
    for index, colour in enumerate(colours):
        image[:, index * width // len(colours):(index + 1) * width // len(colours)] = colour
    with av.open(str(path), "w") as out:
        video = out.add_stream("png", rate=30)
        video.width, video.height, video.pix_fmt = width, height, "rgb24"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
    return path


def make_audio_only(
    path: str | Path,
    seconds: float = 2.0,
    *,
    tone_hz: float = 440.0,
    sample_rate: int = 48000,
    channels: int = 2,
    codec: str = "aac",
    cover: bool = False,
) -> Path:
    """Write an audio-only file (a sine tone); ``.m4a``/``.mp4`` with AAC by default; with
    ``cover``, a cover picture too (a JPEG, as music files carry album art)."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=sample_rate, layout=_layout(channels))
        picture = out.add_stream("mjpeg", rate=1) if cover else None
        if picture is not None:
            picture.width, picture.height, picture.pix_fmt = 64, 64, "yuvj420p"
            picture.disposition = av.stream.Disposition.attached_pic
        for frame in _tone_frames(seconds, tone_hz, sample_rate, channels):
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        if picture is not None:
            image = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 200, np.uint8), "rgb24")
            out.mux(picture.encode(image.reformat(format="yuvj420p")))
            out.mux(picture.encode(None))
    return path


def make_still_image(
    path: str | Path, *, width: int = 640, height: int = 360, seed: int = 0
) -> Path:
    """Write a single textured picture; PNG or JPEG according to the suffix."""
    path = Path(path)
    av.VideoFrame.from_ndarray(_picture(_texture(width, height, seed), 0), format="rgb24").save(
        path
    )
    return path


def make_text_file(path: str | Path, text: str | None = None) -> Path:
    """Write a small UTF-8 text file: something a user might upload instead of a video."""
    path = Path(path)
    path.write_text(text if text is not None else "This is not a video.\n" * 8, encoding="utf-8")
    return path


def make_random_bytes(path: str | Path, n: int = 64 * 1024, seed: int = 0) -> Path:
    """Write ``n`` seeded pseudo-random bytes (reproducible garbage with no container magic)."""
    path = Path(path)
    path.write_bytes(random.Random(seed).randbytes(n))
    return path


def make_truncated(src: str | Path, dst: str | Path, fraction: float = 0.5) -> Path:
    """Copy the first ``fraction`` (0..1) of ``src``'s bytes to ``dst``, like a cut-off upload."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be within [0, 1], not {fraction}")
    dst = Path(dst)
    data = Path(src).read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


#: The ASS header FFmpeg's text subtitle encoders need (PyAV gives none of its own).
_ASS_HEADER = (
    b"[Script Info]\nScriptType: v4.00+\nPlayResX: 384\nPlayResY: 288\n\n[V4+ Styles]\n"
    b"Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, "
    b"BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, "
    b"BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding\n"
    b"Style: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0"
    b"\n\n[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, "
    b"Text\n")


@dataclass(frozen=True)
class SubtitleSpec:
    """A subtitle track for :func:`make_subtitled`: cues as (start, end, text) in seconds of
    the source's clock, the text in ASS markup (``{\\i1}``, ``\\N``), encoded by FFmpeg's
    ``codec`` encoder; a cue given as bytes is muxed as the packet, as is (a picture codec's
    garbage, text that is not UTF-8)."""

    cues: Sequence[tuple[float, float, str | bytes]]
    codec: str = "subrip"
    language: str | None = None
    title: str | None = None
    default: bool = False
    forced: bool = False


def make_subtitled(src: str | Path, dst: str | Path, tracks: Sequence[SubtitleSpec],
                   shift_s: float = 0.0) -> Path:
    """Copy the streams of ``src`` into ``dst`` (its container guessed from the suffix:
    ``.mkv`` for SubRip or ASS, ``.mp4`` for ``mov_text``) with ``tracks`` added, each cue
    muxed among the other packets at its start, as a muxer writes them. ``shift_s`` moves the
    picture and sound that much later on the file's clock (the cues stay where they are)."""
    dst = Path(dst)
    with av.open(str(src)) as source, av.open(str(dst), "w") as out:
        mapped = {s.index: out.add_stream_from_template(s) for s in source.streams
                  if s.type in ("video", "audio")}
        pending: list[av.Packet] = []
        for spec in tracks:
            stream = out.add_stream(spec.codec)
            stream.time_base = Fraction(1, 1000)
            stream.codec_context.subtitle_header = _ASS_HEADER
            if spec.language:
                stream.metadata["language"] = spec.language
            if spec.title:
                stream.metadata["title"] = spec.title
            flags = av.stream.Disposition(0)
            if spec.default:
                flags |= av.stream.Disposition.default
            if spec.forced:
                flags |= av.stream.Disposition.forced
            stream.disposition = flags
            for order, (start, end, text) in enumerate(spec.cues):
                millis = round(start * 1000)
                if isinstance(text, bytes):
                    packet = av.Packet(text)
                else:
                    packet = stream.codec_context.encode_subtitle(SubtitleSet.create(
                        f"{order},0,Default,,0,0,0,,{text}".encode(), 0,
                        round(end * 1000) - millis, pts=millis))
                packet.stream = stream
                packet.pts = packet.dts = millis
                packet.duration = round(end * 1000) - millis
                packet.time_base = Fraction(1, 1000)
                pending.append(packet)
        pending.sort(key=lambda packet: packet.pts)
        for packet in source.demux(*(source.streams[i] for i in mapped)):
            if packet.dts is None:
                continue
            shift = round(shift_s / packet.time_base)
            packet.dts += shift
            if packet.pts is not None:
                packet.pts += shift
            at = float(packet.dts * packet.time_base)
            while pending and pending[0].pts / 1000 <= at:
                out.mux(pending.pop(0))
            packet.stream = mapped[packet.stream_index]
            out.mux(packet)
        for packet in pending:
            out.mux(packet)
    return dst


def cea608_pop_on(texts: Sequence[str], fps: int, channel: int = 1) -> list[bytes]:
    """Caption triples (``cc_data``: CEA-608 on ``channel``, 1 and 2 in field 1, 3 and 4 in
    field 2) for each frame of a pop-on caption a second for each of ``texts``, as a broadcast
    carries them: one byte pair a frame, each byte with odd parity; frames with nothing to send
    carry nothing."""
    field, second_channel = divmod(channel - 1, 2)
    control = 0x14 | (0x08 if second_channel else 0)

    def pair(first: int, second: int) -> bytes:
        return bytes([0xFC | field] + [b | (0x80 if bin(b).count("1") % 2 == 0 else 0)
                                       for b in (first, second)])

    frames: list[bytes] = []
    for text in texts:
        chars = [ord(c) for c in text] + [0] * (len(text) % 2)
        # Resume caption loading, erase the hidden memory, row 15, the text, end of caption
        # (control codes are sent twice, as captioners do).
        codes = [(control, 0x20)] * 2 + [(control, 0x2E)] * 2 + [(control, 0x70)] * 2 + [
            (chars[i], chars[i + 1]) for i in range(0, len(chars), 2)] + [(control, 0x2F)] * 2
        frames += [pair(*code) for code in codes] + [b""] * (fps - len(codes))
    return frames

