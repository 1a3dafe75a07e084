"""An encoder that fails mid-stream: the rung goes on with the fallback encoder from its last
closed segment, from frames it kept, without a second decode."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import m3u8
import pytest

import engine.job
import engine.rung
from engine import JobState, LadderOptions
from engine.errors import EncoderError
from tests import media
from tests.conftest import assert_iframe_playlists, options, run_job

FAIL_AT_FRAME = 75  # inside the second 2 s segment at 30 fps


def segments_with_init(folder: Path) -> list[tuple[bool, bytes]]:
    """Each segment as a standalone file (its own init segment + media), with its
    discontinuity flag, as a player fetching the playlist would assemble it."""
    playlist = m3u8.loads((folder / "index.m3u8").read_text())
    result = []
    for segment in playlist.segments:
        init = b""
        if segment.init_section is not None:
            init = (folder / segment.init_section.uri).read_bytes()
        result.append((segment.discontinuity, init + (folder / segment.uri).read_bytes()))
    return result


def frames_and_keyframes(folder: Path) -> tuple[list[int], list[list[tuple[Fraction, bool]]]]:
    indices: list[int] = []
    keyframes = []
    for _, blob in segments_with_init(folder):
        with av.open(io.BytesIO(blob)) as container:
            stream = container.streams.video[0]
            packets = [p for p in container.demux(stream) if p.size]
            keyframes.append([(Fraction(p.pts) * p.time_base, p.is_keyframe) for p in packets])
            for packet in packets:
                indices += [media.frame_index(f) for f in packet.decode()]
        # Flushing per segment: each segment is decodable on its own.
    return indices, keyframes


@pytest.fixture
def failing_encoder(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the 180p rung's first encoder fail at frame FAIL_AT_FRAME, once, and give libx264
    rungs a fallback (normally only hardware encoders have one)."""
    calls: list[int] = []
    real_encode = engine.rung._encode

    def encode(stream: Any, frame: Any, encoder: str) -> Any:
        if frame is not None and stream.width == 320:
            calls.append(1)
            if len(calls) == FAIL_AT_FRAME:
                raise EncoderError(f"encoder {encoder} failed: injected failure")
        return real_encode(stream, frame, encoder)

    monkeypatch.setattr(engine.rung, "_encode", encode)
    monkeypatch.setattr(engine.job, "fallback_encoder", lambda encoder: "libx264")
    return calls


@pytest.mark.parametrize("segment_type", ["fmp4", "mpegts"])
def test_failed_encoder_falls_back_from_the_last_closed_segment(
        tmp_path: Path, failing_encoder: list[int], segment_type: str) -> None:
    source = media.make_video(tmp_path / "in.mp4", width=640, height=360, seconds=5.0)
    run = run_job(source, tmp_path / "out", options(
        ladder=LadderOptions(heights=(180, 360)), segment_type=segment_type))
    assert run.state == JobState.COMPLETE, run.job.error
    assert len(failing_encoder) > FAIL_AT_FRAME  # the failure really happened mid-stream

    (fallback,) = run.of_type("encoder_fallback")
    assert fallback.data["rung"] == "180p" and fallback.data["encoder"] == "libx264"
    assert fallback.data["segment"] == 1  # segment 0 was closed; segment 1 is encoded again
    assert "injected failure" in fallback.data["reason"]
    summary = run.job.summary()
    assert summary["frames_decoded"] == summary["source_frames"] == 150

    low, high = run.out / "180p", run.out / "360p"
    flags = [flag for flag, _ in segments_with_init(low)]
    assert flags == [False, True, False]
    low_frames, low_keys = frames_and_keyframes(low)
    high_frames, high_keys = frames_and_keyframes(high)
    # Every frame once, in order, on both rungs: nothing lost or repeated around the fallback.
    assert low_frames == list(range(150)) == high_frames
    for low_segment, high_segment in zip(low_keys, high_keys, strict=True):
        assert low_segment[0][1] and not any(key for _, key in low_segment[1:])
        assert low_segment[0][0] == high_segment[0][0]  # keyframes aligned across rungs
    # The I-frame playlist follows the media playlist's discontinuity and initialisation
    # segments, and each of its ranges decodes after the init segment its segment needs.
    assert_iframe_playlists(run.out)
    if segment_type == "fmp4":
        assert (low / "init_1.mp4").exists()
        assert "#EXT-X-MAP:URI=\"init_1.mp4\"" in (low / "index.m3u8").read_text()
        assert "#EXT-X-MAP:URI=\"init_1.mp4\"" in (low / "iframes.m3u8").read_text()
