"""HDR to SDR: the table FFmpeg looks colours up in against the formulas it samples, and the
formulas against the standards' own figures."""

from __future__ import annotations

import itertools
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from engine.decode import decode_source, plane_array
from engine.gop import KeyframeSchedule
from engine.ladder import MAX_FRAME_RATE
from engine.probe import Colour, Orientation, open_source
from engine.scale import Scaler
from engine.tonemap import LUT_SIZE, ToneMapper, _cube, _decimals, sdr_signal
from tests import media

#: ITU-R BT.2087's matrix from linear BT.709 RGB to linear BT.2020 RGB.
BT709_TO_BT2020 = np.array([[0.6274, 0.3293, 0.0433],
                            [0.0691, 0.9195, 0.0114],
                            [0.0164, 0.0880, 0.8956]])
#: (Kr, Kb) of the YUV matrices.
BT2020_K, BT709_K = (0.2627, 0.0593), (0.2126, 0.0722)


def pq_signal(nits: np.ndarray) -> np.ndarray:
    """SMPTE ST 2084's inverse EOTF."""
    m1, m2 = 2610 / 16384, 2523 / 4096 * 128
    c1, c2, c3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    power = (np.asarray(nits) / 10000.0) ** m1
    signal: np.ndarray = ((c1 + c2 * power) / (1 + c3 * power)) ** m2
    return signal


def yuv_to_rgb(yuv: np.ndarray, k: tuple[float, float]) -> np.ndarray:
    """8-bit video-range Y'CbCr to R'G'B' 0..1."""
    kr, kb = k
    luma, cb, cr = (yuv[..., 0] - 16) / 219, (yuv[..., 1] - 128) / 224, (yuv[..., 2] - 128) / 224
    red, blue = luma + 2 * (1 - kr) * cr, luma + 2 * (1 - kb) * cb
    green = (luma - kr * red - kb * blue) / (1 - kr - kb)
    return np.stack([red, green, blue], axis=-1)


def rgb_to_yuv(rgb: np.ndarray, k: tuple[float, float]) -> np.ndarray:
    """R'G'B' 0..1 to 8-bit video-range Y'CbCr (not rounded)."""
    kr, kb = k
    luma = kr * rgb[..., 0] + (1 - kr - kb) * rgb[..., 1] + kb * rgb[..., 2]
    return np.stack([16 + 219 * luma, 128 + 224 * (rgb[..., 2] - luma) / (2 * (1 - kb)),
                     128 + 224 * (rgb[..., 0] - luma) / (2 * (1 - kr))], axis=-1)


def planes(frame: av.VideoFrame) -> list[np.ndarray]:
    return [plane_array(plane) for plane in frame.planes]


@pytest.mark.parametrize("transfer", [16, 18], ids=["pq", "hlg"])
def test_the_table_keeps_to_the_formulas(transfer: int) -> None:
    """576 random colours, each a flat 32-pixel block of a BT.2020 4:2:0 frame, through the
    mapper (YUV to RGB, the table, RGB to BT.709 YUV), against the formulas applied to the
    same colours. Blocks that large keep each centre clear of its neighbours' chroma."""
    count, block = 24, 32
    rng = np.random.default_rng(transfer)
    shape = (count, count)
    colours = np.stack([rng.integers(16, 236, shape), rng.integers(16, 241, shape),
                        rng.integers(16, 241, shape)], axis=-1)
    frame = av.VideoFrame(count * block, count * block, "yuv420p")
    for index, plane in enumerate(planes(frame)):
        size = block if index == 0 else block // 2
        plane[:] = np.kron(colours[..., index], np.ones((size, size), dtype=np.int64))
    out = planes(ToneMapper(Colour(matrix=9, primaries=9, transfer=transfer), frame.width,
                            frame.height).map(frame))
    centre, chroma_centre = block // 2, block // 4
    got = np.stack([out[0][centre::block, centre::block],
                    out[1][chroma_centre::block // 2, chroma_centre::block // 2],
                    out[2][chroma_centre::block // 2, chroma_centre::block // 2]], axis=-1)
    source = np.clip(yuv_to_rgb(colours.astype(float), BT2020_K), 0.0, 1.0)
    expected = rgb_to_yuv(sdr_signal(source, transfer, 9), BT709_K)
    error = np.abs(got - expected)
    # Measured: mean 0.44-0.46, 99th percentile 1.7-1.9, worst 7.5-9.4 steps, the worst where
    # colours leave BT.709's gamut and the mapping bends sharply.
    assert error.mean() < 1.0 and np.percentile(error, 99) < 5 and error.max() < 12, (
        error.mean(), np.percentile(error, 99), error.max())


def test_the_table_file_writes_each_value_as_python_would() -> None:
    """The table's numbers are written digit by digit with NumPy (Python's formatting took a
    quarter of a second): the same text as ``%.6f``, ends and rounding included; and every
    table the mapper builds is Python's text exactly."""
    rng = np.random.default_rng(7)
    values = np.concatenate([[[0.0, 1.0, 0.5], [1e-7, 4e-7, 0.9999996]], rng.random((2000, 3)),
                             rng.integers(0, 10**6, (500, 3)) / 10**6])
    expected = "%.6f %.6f %.6f\n" * len(values) % tuple(values.ravel())
    assert _decimals(values).decode() == expected
    axis = np.linspace(0.0, 1.0, LUT_SIZE)
    blue, green, red = np.meshgrid(axis, axis, axis, indexing="ij")
    grid = np.stack([red.ravel(), green.ravel(), blue.ravel()], axis=-1)
    for transfer, primaries in itertools.product((16, 18), (1, 9, 12)):
        table = sdr_signal(grid, transfer, primaries)
        assert _cube(transfer, primaries).decode() == f"LUT_3D_SIZE {LUT_SIZE}\n" + (
            "%.6f %.6f %.6f\n" * len(table) % tuple(table.ravel()))


@pytest.mark.parametrize("nits", [1.0, 20.0, 50.0, 100.0])
def test_a_colour_bt709_can_show_is_kept_below_the_knee(nits: float) -> None:
    """Colours of BT.709's gamut, up to 60 % of reference white (203 cd/m2), made BT.2020 PQ by
    the standards' own matrix and curve, come out as the same BT.709 colours at the same
    light, for a gamma-2.4 screen whose white is reference white. (No channel is 0: the
    4-digit matrix leaves a trace there that the gamma curve magnifies.)"""
    colours = np.array([[1.0, 1.0, 1.0], [1.0, 0.2, 0.1], [0.1, 1.0, 0.3], [0.2, 0.3, 1.0],
                        [1.0, 1.0, 0.05], [0.6, 0.05, 0.9]])
    linear_709 = colours * nits / colours.max(axis=1, keepdims=True)
    signal = pq_signal(linear_709 @ BT709_TO_BT2020.T)
    expected = (linear_709 / 203) ** (1 / 2.4)
    np.testing.assert_allclose(sdr_signal(signal, 16, 9), expected, atol=0.004)


def test_a_colour_outside_bt709_keeps_its_hue_and_luminance() -> None:
    """BT.2020's own primaries at 40 cd/m2 are outside BT.709's gamut: each comes out on its
    edge (a channel at 0), as light as it was, on the line from its grey through the colour
    BT.709 would need (clipping each channel would drop light and turn the hue)."""
    bt2020_primaries = np.eye(3) * 40.0
    out = sdr_signal(pq_signal(bt2020_primaries), 16, 9) ** 2.4
    unreachable = bt2020_primaries @ np.linalg.inv(BT709_TO_BT2020).T / 203
    luminance = bt2020_primaries @ np.array([0.2627, 0.6780, 0.0593]) / 203
    np.testing.assert_allclose(out @ np.array([0.2126, 0.7152, 0.0722]), luminance, rtol=0.01)
    np.testing.assert_allclose(out.min(axis=1), 0.0, atol=1e-4)
    grey = luminance[:, None]
    towards, needed = out - grey, unreachable - grey
    cosine = (towards * needed).sum(axis=1) / np.linalg.norm(towards, axis=1) / np.linalg.norm(
        needed, axis=1)
    np.testing.assert_allclose(cosine, 1.0, atol=1e-4)


def test_the_frames_stay_10_bit_until_each_rung_maps_them(tmp_path: Path) -> None:
    """A lossless 10-bit PQ picture of BT.709's green as a BT.2020 source holds it, its luma
    varying by less than an 8-bit step. Green's red channel is near 0 in BT.709, where the
    mapping is steepest. The decoder passes on the 10-bit samples as they are, and a rung's
    scaler maps them; the table applied after rounding to 8 bits (as the rungs did at first) is
    off by several steps there, which compressed pictures show as blocks."""
    green = pq_signal(np.array([0.05, 1.0, 0.05]) @ BT709_TO_BT2020.T * 100)
    y, u, v = rgb_to_yuv(green, BT2020_K) * 4  # 10-bit codes
    luma = np.tile(np.round(y + np.linspace(-6, 6, 64)), (64, 1))
    path = media.make_pq_pictures(tmp_path / "green.mp4", [(luma, round(u), round(v))] * 3)
    passed_on: list[av.VideoFrame] = []
    with open_source(path) as opened:
        decode_source(opened, KeyframeSchedule(Fraction(2), MAX_FRAME_RATE),
                      lambda frame, when: passed_on.append(frame), [], threading.Event())
    with av.open(str(path)) as container:
        source = next(container.decode(video=0))
    assert source.format.name == "yuv420p10le"
    colour = Colour(matrix=9, primaries=9, transfer=16)
    assert passed_on and passed_on[0].format.name == "yuv420p10le"
    for got, expected in zip(passed_on[0].planes, source.planes, strict=True):
        assert np.array_equal(plane_array(got, np.uint16), plane_array(expected, np.uint16))
    from_10_bits = planes(ToneMapper(colour, 64, 64).map(source))[0].astype(int)
    from_8_bits = planes(ToneMapper(colour, 64, 64).map(source.reformat(format="yuv420p")))[0]
    mapped = Scaler(64, 64, Orientation(), colour=colour).scale(passed_on[0])
    assert mapped.format.name == "yuv420p"
    assert np.abs(planes(mapped)[0] - from_10_bits).max() <= 1
    assert np.abs(from_8_bits - from_10_bits).max() >= 3


def test_10_bit_frames_repeated_in_a_pause_or_fitted_with_bars_keep_every_sample(
        tmp_path: Path) -> None:
    """An HDR recording paused for 2 s, whose picture then changes shape (64x64, then 64x32):
    the frame repeated in the pause is the last one before it, sample for sample, and the
    later frames are fitted in with 10-bit black bars (64, and chroma 512)."""
    square, wide = (300, 400, 600), (700, 500, 300)
    before = media.make_pq_pictures(tmp_path / "before.ts", [square] * 30)
    after = media.make_pq_pictures(
        tmp_path / "after.ts",
        [(np.full((32, 64), wide[0]), *wide[1:])] * 30, first=90)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(before.read_bytes() + after.read_bytes())
    passed_on: list[tuple[av.VideoFrame, Fraction]] = []
    with open_source(joined) as opened:
        decode_source(opened, KeyframeSchedule(Fraction(2), MAX_FRAME_RATE),
                      lambda frame, when: passed_on.append((frame, when.seconds)), [],
                      threading.Event())
    assert all(frame.format.name == "yuv420p10le" for frame, _ in passed_on)
    repeated = [frame for frame, seconds in passed_on if 1 < seconds < 3]
    assert repeated
    for frame in repeated:
        for plane, value in zip(frame.planes, square, strict=True):
            assert (plane_array(plane, np.uint16) == value).all()
    last = passed_on[-1][0]
    assert (last.width, last.height) == (64, 64)
    luma, blue, red = (plane_array(plane, np.uint16) for plane in last.planes)
    assert (luma[:16] == 64).all() and (luma[48:] == 64).all()
    assert (luma[20:44] == wide[0]).all()
    for chroma, value in ((blue, wide[1]), (red, wide[2])):
        assert (chroma[:8] == 512).all() and (chroma[24:] == 512).all()
        assert (chroma[10:22] == value).all()


def test_the_mapper_scales_frames_to_its_size() -> None:
    """A rung's mapper scales as it maps (a 4K frame mapped at 4K for a 720p rung cost seven
    times the CPU): a 10-bit 64x64 frame comes out 32x16, 8-bit 4:2:0, whatever its format."""
    mapper = ToneMapper(Colour(matrix=9, primaries=9, transfer=18), 32, 16)
    for pixel_format in ("yuv420p10le", "yuv422p10le"):
        frame = av.VideoFrame(64, 64, pixel_format)
        for plane in frame.planes:
            plane_array(plane, np.uint16)[:] = 512
        out = mapper.map(frame)
        assert (out.width, out.height, out.format.name) == (32, 16, "yuv420p")


def test_mappers_that_start_together_compute_the_table_once() -> None:
    """Mappers built at the same moment (rungs that start together, ``rungs_at_once``) compute
    the table, a tenth of a second of NumPy, once."""
    _cube.cache_clear()
    barrier = threading.Barrier(3)

    def build() -> None:
        frame = av.VideoFrame(64, 64, "yuv420p10le")
        barrier.wait()
        ToneMapper(Colour(matrix=9, primaries=9, transfer=16), 32, 16).map(frame)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _cube.cache_info().misses == 1, _cube.cache_info()
