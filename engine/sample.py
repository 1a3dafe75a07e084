"""Synthesise a sample video with audio: the embedded default the demo and benchmark run on.

Moving noise texture (hard to compress, like real detail), a moving bright bar, and a 440 Hz
tone, so every stage does real work and the result can be checked by eye and by ear.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import av.audio.frame
import av.video.frame
import numpy as np

from engine.decode import plane_array


def make_sample(path: Path, *, width: int = 3840, height: int = 2160, seconds: float = 10.0,
                fps: int = 30, tone_hz: float = 440.0) -> Path:
    """Write an H.264 + AAC MP4 sample to ``path`` (written to a temporary name, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    rng = np.random.default_rng(7)
    # Twice the frame so a moving window never wraps; coarse noise upsampled looks like detail.
    texture = rng.integers(16, 236, (height // 4 + 64, width // 4 + 64), dtype=np.uint8)
    texture = np.kron(texture, np.ones((4, 4), np.uint8))
    frames = round(seconds * fps)
    with av.open(str(temp), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.options = {"preset": "ultrafast", "crf": "20"}
        audio = out.add_stream("aac", rate=48000)
        audio.layout = "stereo"
        samples_per_frame = 48000 // fps
        for index in range(frames):
            frame = av.video.frame.VideoFrame(width, height, "yuv420p")
            dy, dx = (index * 2) % 256, (index * 4) % 256
            luma = plane_array(frame.planes[0])
            luma[:] = texture[dy // 4 * 4:dy // 4 * 4 + height, dx:dx + width]
            bar = (index * width // max(frames, 1)) % width
            luma[:, bar:bar + width // 40] = 235
            plane_array(frame.planes[1])[:] = 128 + (index % 60)
            plane_array(frame.planes[2])[:] = 160 - (index % 60)
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            out.mux(video.encode(frame))
            t = (np.arange(samples_per_frame) + index * samples_per_frame) / 48000
            tone = (0.3 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
            sound = av.audio.frame.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp",
                                                           layout="stereo")
            sound.sample_rate = 48000
            sound.pts = index * samples_per_frame
            sound.time_base = Fraction(1, 48000)
            out.mux(audio.encode(sound))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    temp.replace(path)
    return path
