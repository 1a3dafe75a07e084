"""Which H.264 encoder a rung uses: hardware when it really works here, libx264 otherwise.

PyAV's wheels list ``h264_nvenc`` and friends on every machine, GPU or not, so a listing proves
nothing: each candidate is opened and made to encode a few frames, once per process.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from fractions import Fraction

import av
import av.codec
import av.error
import av.video.codeccontext
import av.video.frame

from engine.errors import InvalidOptionsError
from engine.ladder import Rung

log = logging.getLogger(__name__)

SOFTWARE_ENCODER = "libx264"
#: Tried in this order by ``auto``.
HARDWARE_ENCODERS = ("h264_nvenc", "h264_qsv", "h264_vaapi", "h264_videotoolbox")
ENCODER_CHOICES = ("auto", SOFTWARE_ENCODER, *HARDWARE_ENCODERS)


@dataclass(frozen=True)
class EncoderProbe:
    """Whether one encoder really encodes on this machine, and why not."""

    name: str
    works: bool
    reason: str


@functools.cache
def probe_encoder(name: str) -> EncoderProbe:
    """Open ``name`` and encode a few small frames; cached for the life of the process."""
    if name not in av.codecs_available:
        return EncoderProbe(name, False, "not built into this FFmpeg")
    try:
        ctx = av.codec.CodecContext.create(name, "w")
        assert isinstance(ctx, av.video.codeccontext.VideoCodecContext)
        ctx.width, ctx.height = 256, 144
        ctx.pix_fmt = "nv12" if name in ("h264_qsv", "h264_vaapi") else "yuv420p"
        ctx.time_base = Fraction(1, 25)
        ctx.framerate = Fraction(25)
        ctx.open()
        packets = []
        for index in range(3):
            frame = av.video.frame.VideoFrame(256, 144, ctx.pix_fmt)
            frame.pts = index
            packets += ctx.encode(frame)
        packets += ctx.encode(None)
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        return EncoderProbe(name, False, str(exc).split(";")[0] or type(exc).__name__)
    if not packets:
        return EncoderProbe(name, False, "opened but produced no packets")
    return EncoderProbe(name, True, "encoded test frames")


def choose_encoder(requested: str) -> str:
    """The encoder to use for ``requested`` (``auto`` or a name in :data:`ENCODER_CHOICES`)."""
    if requested not in ENCODER_CHOICES:
        raise InvalidOptionsError(
            f"unknown encoder {requested!r}; choose one of {', '.join(ENCODER_CHOICES)}")
    if requested == "auto":
        for name in HARDWARE_ENCODERS:
            if probe_encoder(name).works:
                return name
        return SOFTWARE_ENCODER
    if requested != SOFTWARE_ENCODER and not probe_encoder(requested).works:
        raise InvalidOptionsError(
            f"encoder {requested} does not work here: {probe_encoder(requested).reason}")
    return requested


def encoder_options(encoder: str, rung: Rung, gop_frames: int) -> dict[str, str]:
    """Codec options giving every encoder the same rate cap and keyframe behaviour.

    Keyframes come only from the shared schedule (forced IDR frames): the GOP is longer than a
    segment and scene-cut keyframes are off, so no segment has a keyframe inside it.
    """
    maxrate, bufsize = rung.maxrate_kbps, rung.bufsize_kbps
    if encoder == SOFTWARE_ENCODER:
        params = (f"keyint={gop_frames}:min-keyint={gop_frames}:scenecut=0:forced-idr=1"
                  f":vbv-maxrate={maxrate}:vbv-bufsize={bufsize}")
        return {"preset": rung.preset, "crf": str(rung.crf), "x264-params": params}
    common = {"g": str(gop_frames), "maxrate": f"{maxrate}k", "bufsize": f"{bufsize}k",
              "forced_idr": "1", "bf": "0"}
    if encoder == "h264_nvenc":
        return {**common, "preset": "p4", "rc": "vbr", "cq": str(rung.crf), "no-scenecut": "1"}
    if encoder == "h264_qsv":
        return {**common, "global_quality": str(rung.crf), "scenario": "3"}
    return {**common, "qp": str(rung.crf)}
