"""Hardware codecs when they really work here, software otherwise.

PyAV's wheels list ``h264_nvenc`` and the ``cuda`` device type on every machine, GPU or not, so a
listing proves nothing: each candidate decoder and encoder is made to decode or encode a few
frames, once per process, and only one that did is chosen.
"""

from __future__ import annotations

import functools
import io
import logging
from dataclasses import dataclass
from fractions import Fraction

import av
import av.codec
import av.codec.hwaccel
import av.container
import av.error
import av.video.codeccontext
import av.video.frame
import av.video.stream

from engine.errors import InvalidOptionsError
from engine.ladder import Rung

log = logging.getLogger(__name__)

SOFTWARE_ENCODER = "libx264"
#: Tried in this order by ``auto``.
HARDWARE_ENCODERS = ("h264_nvenc", "h264_qsv", "h264_vaapi", "h264_videotoolbox")
ENCODER_CHOICES = ("auto", SOFTWARE_ENCODER, *HARDWARE_ENCODERS)
#: Hardware decode device types, in the order ``auto`` tries them.
HARDWARE_DECODERS = ("cuda", "qsv", "vaapi", "videotoolbox", "drm")
DECODER_CHOICES = ("auto", "none", *HARDWARE_DECODERS)


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


@dataclass(frozen=True)
class DecoderProbe:
    """Whether H.264 really decodes on one hardware device type here, and why not."""

    device_type: str
    works: bool
    reason: str


@functools.cache
def probe_decoder(device_type: str) -> DecoderProbe:
    """Decode a few generated H.264 frames on ``device_type`` with no software fallback."""
    if device_type not in av.codec.hwaccel.hwdevices_available():
        return DecoderProbe(device_type, False, "not built into this FFmpeg")
    try:
        accel = av.codec.hwaccel.HWAccel(device_type, allow_software_fallback=False)
        with av.open(_tiny_h264(), "r", hwaccel=accel) as container:
            assert isinstance(container, av.container.InputContainer)
            frames = len(list(container.decode(video=0)))
            on_device = container.streams.video[0].codec_context.is_hwaccel
    except (av.error.FFmpegError, ValueError, OSError, RuntimeError) as exc:
        return DecoderProbe(device_type, False, str(exc).split(";")[0] or type(exc).__name__)
    if not frames or not on_device:
        return DecoderProbe(device_type, False, "opened but did not decode on the device")
    return DecoderProbe(device_type, True, f"decoded {frames} test frames")


def choose_decoder(requested: str) -> str | None:
    """The hardware device type to decode on for ``requested``; ``None`` means software."""
    if requested not in DECODER_CHOICES:
        raise InvalidOptionsError(
            f"unknown hwaccel {requested!r}; choose one of {', '.join(DECODER_CHOICES)}")
    if requested == "none":
        return None
    if requested == "auto":
        return next((d for d in HARDWARE_DECODERS if probe_decoder(d).works), None)
    if not probe_decoder(requested).works:
        raise InvalidOptionsError(
            f"hwaccel {requested} does not work here: {probe_decoder(requested).reason}")
    return requested


def _tiny_h264() -> io.BytesIO:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream(SOFTWARE_ENCODER, rate=25)
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 256, 144, "yuv420p"
        for index in range(5):
            frame = av.video.frame.VideoFrame(256, 144, "yuv420p")
            frame.pts, frame.time_base = index, Fraction(1, 25)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    buffer.seek(0)
    return buffer


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


def fallback_encoder(encoder: str) -> str | None:
    """The encoder a rung goes on with if ``encoder`` fails mid-stream; ``None``: the job fails.

    Hardware encoders can fail mid-stream (device lost, session limits); libx264 is the fallback.
    """
    return None if encoder == SOFTWARE_ENCODER else SOFTWARE_ENCODER


def encoder_options(encoder: str, rung: Rung, gop_frames: int) -> dict[str, str]:
    """Codec options giving every encoder the same rate cap and keyframe behaviour.

    Keyframes come only from the shared schedule (forced IDR frames): the GOP is longer than a
    segment and scene-cut keyframes are off, so no segment has a keyframe inside it.
    """
    maxrate, bufsize = rung.maxrate_kbps, rung.bufsize_kbps
    if encoder == SOFTWARE_ENCODER:
        params = (f"keyint={gop_frames}:min-keyint={gop_frames}:scenecut=0"
                  f":vbv-maxrate={maxrate}:vbv-bufsize={bufsize}")
        if rung.lookahead:
            params += f":rc-lookahead={rung.lookahead}"
        # forced-idr is an option of FFmpeg's libx264 wrapper, not an x264 parameter: inside
        # x264-params it is rejected ("Error parsing option") and silently not applied.
        # a53cc (and vaapi's sei) off: engine.captions writes the source's closed captions,
        # the same way on every rung.
        return {"preset": rung.preset, "crf": str(rung.crf), "forced-idr": "1", "a53cc": "0",
                "x264-params": params}
    common = {"g": str(gop_frames), "maxrate": f"{maxrate}k", "bufsize": f"{bufsize}k",
              "forced_idr": "1", "bf": "0", "a53cc": "0"}
    if encoder == "h264_nvenc":
        return {**common, "preset": "p4", "rc": "vbr", "cq": str(rung.crf), "no-scenecut": "1"}
    if encoder == "h264_qsv":
        return {**common, "global_quality": str(rung.crf), "scenario": "3"}
    if encoder == "h264_vaapi":
        return {**common, "qp": str(rung.crf), "sei": "identifier+timing+recovery_point"}
    return {**common, "qp": str(rung.crf)}
