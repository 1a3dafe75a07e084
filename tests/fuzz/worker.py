"""The fuzz target, in a process of its own so a crash or a hang in FFmpeg is seen, not suffered.

Reads one JSON request per line on stdin (``{"path": ...}``), answers one JSON line on stdout:
``{"outcome": "decoded" | "refused" | "bug", ...}``. For each file it runs what Rungs runs on an
upload before any encoder: :func:`engine.probe.open_source` (with the default limits), then
:func:`engine.decode.decode_source` (with the default duration limit) for the first
``DECODE_SECONDS`` of video, the audio frames going through the real resampler and AAC encoder
(:class:`engine.audio.AudioEncoder`), and for a source with subtitle tracks the subtitle pass
and the WebVTT files (:mod:`engine.subtitles`).

A :class:`~engine.errors.RungsError` is the expected answer to a bad file ("refused"); any other
exception is a bug. The address space is capped (``MEMORY_LIMIT``) so a runaway allocation shows
as a failure instead of taking the machine down.
"""

from __future__ import annotations

import functools
import json
import math
import resource
import sys
import tempfile
import threading
import traceback
from fractions import Fraction
from pathlib import Path

import av.audio.frame
import av.video.frame

from engine.audio import AudioEncoder, AudioSettings, audio_folder
from engine.decode import AudioSink, DecodeProgress, decode_source, frame_format
from engine.errors import JobCancelledError, RungsError
from engine.gop import TIMELINE_START, FrameTime, KeyframeSchedule
from engine.ladder import MAX_FRAME_RATE
from engine.probe import DEFAULT_MAX_DURATION_S, open_source
from engine.scale import Scaler
from engine.stall import DecoderWatch, run_watched
from engine.subtitles import read_subtitles, webvtt_segments

DECODE_SECONDS = 2.0
MEMORY_LIMIT = 3 << 30


def examine(path: Path, scratch: Path) -> dict[str, object]:
    """One file's outcome, with the decoder watched as a job watches it (engine.stall)."""
    watch = DecoderWatch()
    try:
        return run_watched(lambda: _decode(path, scratch, watch), watch, path.name)
    except RungsError as exc:
        return {"outcome": "refused", "code": exc.code, "message": exc.message}
    except Exception as exc:
        return {"outcome": "bug", "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()}


def _decode(path: Path, scratch: Path, watch: DecoderWatch) -> dict[str, object]:
    cancel = threading.Event()
    progress = DecodeProgress()
    frames = 0
    audio_frames = 0
    with open_source(path, watch=watch) as source:
        schedule = KeyframeSchedule(Fraction(2), MAX_FRAME_RATE)
        # No declared length (the job passes the source's): every source is fuzzed as if it
        # were a live recording, whose pauses in the sound are filled however long.
        encoders = [AudioEncoder(scratch, Fraction(2), "fmp4", AudioSettings(),
                                 folder=audio_folder(number))
                    for number in range(1, len(source.info.audio_tracks) + 1)]

        # A small rung's scaler, as a job's: it maps an HDR source's frames to SDR.
        info = source.info
        scaler = Scaler(64, 36, info.orientation, full_range=info.colour.full_range,
                        colour=info.colour)

        def on_video(frame: av.video.frame.VideoFrame, when: FrameTime) -> None:
            nonlocal frames
            frames += 1
            assert frame.format.name == frame_format(info.colour), frame.format.name
            scaled = scaler.scale(frame)
            assert scaled.format.name == "yuv420p", scaled.format.name
            if when.seconds >= DECODE_SECONDS:
                cancel.set()  # decode_source stops at its next packet

        def sink(encoder: AudioEncoder) -> AudioSink:
            def on_audio(frame: av.audio.frame.AudioFrame, seconds: float) -> None:
                nonlocal audio_frames
                audio_frames += 1
                encoder.push(frame, seconds)
            return on_audio

        try:
            # The duration limit a job passes too: a frame stamped days on (a damaged time in
            # a file that declares no length) is refused there, not filled up to.
            stats = decode_source(source, schedule, on_video, [sink(e) for e in encoders],
                                  cancel, DEFAULT_MAX_DURATION_S, progress=progress,
                                  sound_end=functools.partial(AudioEncoder.sound_end,
                                                              encoders))
            for encoder in encoders:  # as a job does: the sound fills the picture's length
                encoder.close(float(stats.end_s))
        except JobCancelledError:
            pass
        finally:
            for encoder in encoders:
                encoder.abort()
        cues = 0
        if source.info.subtitle_streams:
            # As a job does, but raising what the job's reader would turn into a note.
            scan = read_subtitles(path, threading.Event(), watch)
            length = min(source.info.duration_s or math.inf, DEFAULT_MAX_DURATION_S)
            for track in scan.tracks:
                cues += len(track.cues)
                webvtt_segments(track.cues, progress.origin_s or 0.0, 2.0,
                                float(TIMELINE_START), length)
    return {"outcome": "decoded", "frames": frames, "audio_frames": audio_frames, "cues": cues}



def main() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    for line in sys.stdin:
        request = json.loads(line)
        with tempfile.TemporaryDirectory(prefix="rungs-fuzz-") as scratch:
            answer = examine(Path(request["path"]), Path(scratch))
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
