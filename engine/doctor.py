"""``rungs doctor``: what this machine can really do, probed rather than listed."""

from __future__ import annotations

import os
import platform

import av

from engine.hwaccel import (
    HARDWARE_DECODERS,
    HARDWARE_ENCODERS,
    SOFTWARE_ENCODER,
    choose_decoder,
    choose_encoder,
    probe_decoder,
    probe_encoder,
)


def report() -> list[str]:
    """The doctor's report, one line each."""
    lines = [
        f"python {platform.python_version()}, PyAV {av.__version__}, "
        f"FFmpeg {av.ffmpeg_version_info}",
        f"cores: {os.cpu_count()}",
        "hardware decoders (H.264, probed by decoding test frames on the device):",
    ]
    probes = [probe_decoder(device) for device in HARDWARE_DECODERS]
    lines += [_line(p.device_type, p.works, p.reason) for p in probes]
    lines.append("encoders (probed by encoding test frames):")
    for name in (*HARDWARE_ENCODERS, SOFTWARE_ENCODER):
        probe = probe_encoder(name)
        lines.append(_line(name, probe.works, probe.reason))
    lines.append(f"auto chooses: decode on {choose_decoder('auto') or 'software'}, "
                 f"encode with {choose_encoder('auto')}")
    return lines


def _line(name: str, works: bool, reason: str) -> str:
    return f"  {name:18} {'works' if works else 'unavailable'}: {reason}"
