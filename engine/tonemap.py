"""Map a high-dynamic-range picture (PQ or HLG) to standard dynamic range, BT.709.

The rungs are 8-bit H.264, too few steps for HDR's range, and a player or screen that ignores
the tags shows PQ or HLG samples as an SDR picture: dark and flat (100 cd/m2 in PQ is luma
127 of 235). So an HDR source's rungs and poster are made SDR.

How: the decoder keeps an HDR source's frames in 10 bits (the frame cache too), and each rung
(and the poster) maps them at its own size: FFmpeg's scaler scales them and converts them to
16-bit RGB in one step, its ``lut3d`` filter looks every pixel up in a 3D table, and the scaler
converts back to YUV with the BT.709 matrix. Mapping costs about 70 ms of CPU per 4K frame
here, 20 per 1080p one and 10 per 720p one; mapped once in the decoder at the source's size,
every 4K frame cost the full 70 ms on the way to the first rung, which doubled the time to
playable of 4K. Mapped after the frames were made 8-bit, the steps of 8-bit PQ came out as
blocks in saturated colours: 32 dB PSNR against the mapping of the 10-bit source, on colour
bars. 10-bit frames take twice the frame cache's room, though; where they would not all fit
(60 s of 4K takes 45 GB of disk in 10 bits), the decoder maps them at the source's size and
the cache holds 8 bits, as before (see engine.job).

The table is computed here from the standards' formulas. FFmpeg's scaler can map colours too
(its ``out_transfer``), but it spent 1 to 2 s building its tables for each graph; its default
intent clipped everything over reference white, and its perceptual one, given no peak (a
source without mastering metadata), took 10,000 cd/m2 and showed reference white at luma
149 of 235.

The mapping, per table entry:

1. The source's signal to display light in cd/m2: PQ's EOTF (SMPTE ST 2084), or HLG's inverse
   OETF and its OOTF for a 1,000 cd/m2 display (ITU-R BT.2100).
2. BT.2020 (or the source's) primaries to BT.709, with HDR reference white (203 cd/m2, ITU-R
   BT.2408) as SDR's white. A colour BT.709 cannot show is moved towards the grey of its
   luminance until no channel is negative, rather than clipped per channel (which would
   shift its hue).
3. Light is brought into SDR's range by one factor on all three channels (so hues stay), set
   by the brightest channel: up to 60 % of reference white it is kept as it is, and brighter
   light is compressed (an extended Reinhard curve) so the source's nominal peak of 1,000
   cd/m2 reaches SDR's white. (Compressing luminance instead left saturated highlights over
   white, and fitting them back made their colour jump with the smallest change.)
4. Encoded for a BT.1886 display (gamma 2.4), so an SDR screen shows the light of step 3.
"""

from __future__ import annotations

import functools
import itertools
import tempfile
import threading
from fractions import Fraction
from pathlib import Path

import av.video.frame
import numpy as np
from av.filter import Graph

from engine.probe import Colour

#: Table points per axis. With tetrahedral interpolation, 65 keeps 8-bit outputs within half a
#: step of the formulas on average and 2 at the 99th percentile (worst 9, where colours leave
#: BT.709's gamut and the mapping bends sharply; tests/test_tonemap.py measures it). 33 was
#: about twice as far off.
LUT_SIZE = 65
#: HDR reference (diffuse) white in cd/m2, ITU-R BT.2408.
REFERENCE_WHITE = 203.0
#: The brightest light kept apart from white: HLG's nominal display peak, and what most PQ
#: masters are graded to (a source's own mastering metadata is not read).
PEAK = 1000.0
#: Below this share of reference white (in the brightest channel), light is kept unchanged.
KNEE = 0.6
#: The SDR display's gamma (ITU-R BT.1886).
SDR_GAMMA = 2.4

_PQ = 16  # ColorTrc.SMPTE2084 (the other HDR transfer is HLG)

#: CIE xy of red, green, blue and white (all D65) of the primaries FFmpeg numbers so.
_CHROMATICITIES = {
    1: ((0.640, 0.330), (0.300, 0.600), (0.150, 0.060), (0.3127, 0.3290)),  # BT.709
    9: ((0.708, 0.292), (0.170, 0.797), (0.131, 0.046), (0.3127, 0.3290)),  # BT.2020
    12: ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060), (0.3127, 0.3290)),  # Display P3
}
#: HDR is defined on BT.2020 (BT.2100); an untagged or unknown source is taken as that.
_HDR_PRIMARIES = 9
#: FFmpeg scale filter's names for the YUV matrices (``bt2020`` is the non-constant one).
_MATRIX_NAMES = {1: "bt709", 4: "fcc", 5: "bt470", 6: "smpte170m", 7: "smpte240m",
                 9: "bt2020", 10: "bt2020"}

#: What an HDR source's rungs and poster are: SDR, BT.709 matrix, primaries and transfer.
SDR_BT709 = Colour(matrix=1, primaries=1, transfer=1)


def mapped_as(colour: Colour) -> Colour:
    """The colour description of a ``colour`` source's rungs: an HDR source's are mapped to
    SDR BT.709 in video range."""
    return SDR_BT709 if colour.hdr else colour


class ToneMapper:
    """Frames of an HDR source (``colour``), in whatever size and YUV or RGB format they come,
    in; the same frames scaled to ``width`` x ``height`` (with ``interpolation``), in 8-bit
    4:2:0 SDR BT.709, video range, out. One per thread."""

    def __init__(self, colour: Colour, width: int, height: int,
                 interpolation: str = "area") -> None:
        self.colour = colour
        self.width, self.height = width, height
        self.interpolation = interpolation
        self._graph: Graph | None = None
        self._shape: tuple[int, int, str] | None = None

    def map(self, frame: av.video.frame.VideoFrame) -> av.video.frame.VideoFrame:
        """``frame`` in SDR BT.709, at the mapper's size."""
        shape = (frame.width, frame.height, frame.format.name)
        if self._graph is None or shape != self._shape:
            # A source whose picture size or format changes part way gets a graph per run.
            self._graph, self._shape = self._build(frame), shape
        self._graph.vpush(frame)
        out = self._graph.vpull()
        assert isinstance(out, av.video.frame.VideoFrame)
        return out

    def _build(self, frame: av.video.frame.VideoFrame) -> Graph:
        matrix = _MATRIX_NAMES.get(self.colour.matrix, "bt2020")
        source_range = "pc" if self.colour.full_range else "tv"
        graph = Graph()
        chain = [
            graph.add_buffer(width=frame.width, height=frame.height, format=frame.format,
                             time_base=Fraction(1, 1000)),
            graph.add("scale", f"w={self.width}:h={self.height}:flags={self.interpolation}"
                               f":in_color_matrix={matrix}:in_range={source_range}"),
            # 16-bit RGB keeps a 10-bit source's precision through the table.
            graph.add("format", "gbrp16le"),
        ]
        with tempfile.TemporaryDirectory(prefix="rungs-lut-") as folder:
            table = Path(folder) / "tonemap.cube"
            with _CUBE_LOCK:  # rungs that start together (at once) would each compute it
                cube = _cube(self.colour.transfer, self.colour.primaries)
            table.write_bytes(cube)
            # lut3d reads its file as the filter is made.
            chain.append(graph.add("lut3d", f"file={table}:interp=tetrahedral"))
        chain += [
            graph.add("scale", "out_color_matrix=bt709:out_range=tv"),
            graph.add("format", "yuv420p"),
            graph.add("buffersink"),
        ]
        for upstream, downstream in itertools.pairwise(chain):
            upstream.link_to(downstream)
        graph.configure()
        return graph


_CUBE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=8)
def _cube(transfer: int, primaries: int) -> bytes:
    """The table as an Adobe .cube file (red varies fastest), computed once per process."""
    axis = np.linspace(0.0, 1.0, LUT_SIZE)
    blue, green, red = np.meshgrid(axis, axis, axis, indexing="ij")
    signal = np.stack([red.ravel(), green.ravel(), blue.ravel()], axis=-1)
    table = sdr_signal(signal, transfer, primaries)
    return f"LUT_3D_SIZE {LUT_SIZE}\n".encode() + _decimals(table)


def _decimals(table: np.ndarray) -> bytes:
    """Rows of ``table`` (values 0..1) as lines of ``%.6f`` numbers, written digit by digit
    with NumPy: Python's formatting of the 823,875 numbers took 0.21-0.29 s here, on the way
    to an HDR source's first segment; this takes 0.05 s. The text is Python's, but for a value
    within a rounding error of half a millionth, whose last digit may differ by one (none of
    the tables of tests/test_tonemap.py's transfers and primaries has one)."""
    micro = np.rint(table * 1e6).astype(np.int32)
    chars = np.empty((*micro.shape, 9), np.uint8)  # "d.dddddd" and a space or a newline
    chars[..., 0] = ord("0") + micro // 1_000_000
    chars[..., 1] = ord(".")
    for place in range(6):
        chars[..., 2 + place] = ord("0") + micro // 10 ** (5 - place) % 10
    chars[..., 8] = ord(" ")
    chars[..., -1, 8] = ord("\n")
    return chars.tobytes()


def sdr_signal(signal: np.ndarray, transfer: int, primaries: int) -> np.ndarray:
    """SDR BT.709 R'G'B' (0..1) of HDR R'G'B' ``signal`` (..., 3) with ``transfer`` (PQ or HLG)
    and ``primaries``: the mapping of the module's docstring, exactly (the table samples it)."""
    to_xyz = _rgb_to_xyz(_CHROMATICITIES.get(primaries, _CHROMATICITIES[_HDR_PRIMARIES]))
    light = _display_light(np.clip(signal, 0.0, 1.0), transfer, to_xyz[1])
    to_709 = np.linalg.inv(_rgb_to_xyz(_CHROMATICITIES[1])) @ to_xyz
    relative = _above_black(light @ to_709.T / REFERENCE_WHITE, light @ to_xyz[1] / REFERENCE_WHITE)
    # Compressing the brightest channel (not luminance) keeps every channel within SDR's
    # white; the same factor on all three keeps the hue.
    brightest = relative.max(axis=-1)
    scale = np.divide(_compress(brightest), brightest, out=np.zeros_like(brightest),
                      where=brightest > 0)
    encoded: np.ndarray = np.clip(relative * scale[..., None], 0.0, 1.0) ** (1 / SDR_GAMMA)
    return encoded


def _display_light(signal: np.ndarray, transfer: int, luma: np.ndarray) -> np.ndarray:
    """Linear light in cd/m2 of the display the source was made for."""
    if transfer == _PQ:
        m1, m2 = 2610 / 16384, 2523 / 4096 * 128
        c1, c2, c3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
        power = signal ** (1 / m2)
        pq: np.ndarray = 10000.0 * (np.maximum(power - c1, 0.0) / (c2 - c3 * power)) ** (1 / m1)
        return pq
    a = 0.17883277
    b, c = 1 - 4 * a, 0.5 - a * np.log(4 * a)
    scene = np.where(signal <= 0.5, signal ** 2 / 3,
                     (np.exp((np.maximum(signal, 0.5) - c) / a) + b) / 12)
    # BT.2100's OOTF for a 1,000 cd/m2 display: system gamma 1.2, applied to luminance.
    light: np.ndarray = PEAK * (scene @ luma)[..., None] ** 0.2 * scene
    return light


def _compress(relative: np.ndarray) -> np.ndarray:
    """Light (of the brightest channel) as a share of reference white, to a share of SDR white
    (0..1): unchanged up to the knee, then extended Reinhard, reaching 1 at the peak with the
    slope still 1 at the knee; beyond the peak, 1."""
    span = (PEAK / REFERENCE_WHITE - KNEE) / (1 - KNEE)
    over = np.maximum(relative - KNEE, 0.0) / (1 - KNEE)
    rolled = KNEE + (1 - KNEE) * over * (1 + over / span ** 2) / (1 + over)
    compressed: np.ndarray = np.where(relative <= KNEE, relative, np.minimum(rolled, 1.0))
    return compressed


def _above_black(rgb: np.ndarray, luminance: np.ndarray) -> np.ndarray:
    """``rgb`` moved towards the grey of its ``luminance`` just enough that no channel is
    negative: a colour outside BT.709's gamut becomes the nearest one inside of its hue."""
    grey = luminance[..., None]
    low = rgb.min(axis=-1, keepdims=True)
    keep = np.divide(grey, grey - low, out=np.ones_like(grey), where=low < 0)
    fitted: np.ndarray = grey + (rgb - grey) * keep
    return fitted


def _rgb_to_xyz(chromaticities: tuple[tuple[float, float], ...]) -> np.ndarray:
    """The RGB to CIE XYZ matrix of primaries and white given as xy (SMPTE RP 177)."""
    *rgb, white = chromaticities
    columns = np.array([[x / y, 1.0, (1 - x - y) / y] for x, y in rgb]).T
    x, y = white
    weights = np.linalg.solve(columns, np.array([x / y, 1.0, (1 - x - y) / y]))
    matrix: np.ndarray = columns * weights
    return matrix
