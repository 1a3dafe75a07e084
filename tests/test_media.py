"""Check that the synthetic media in ``tests/media.py`` really has the properties it claims."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from tests import media


def _decode(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


@pytest.fixture(scope="module")
def default_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return media.make_video(tmp_path_factory.mktemp("media") / "default.mp4")


def test_default_video_properties(default_video: Path) -> None:
    with av.open(str(default_video)) as container:
        video = container.streams.video[0]
        (audio,) = container.streams.audio
        assert (video.codec_context.name, video.width, video.height) == ("h264", 640, 360)
        assert video.codec_context.pix_fmt == "yuv420p"
        assert video.average_rate == 30
        assert (audio.codec_context.name, audio.rate, audio.channels) == ("aac", 48000, 2)
        assert container.duration is not None
        assert container.duration / 1e6 == pytest.approx(4.0, abs=0.05)
        frames = list(container.decode(video))
    assert [media.frame_index(frame) for frame in frames] == list(range(120))


def test_content_is_textured_and_moving(default_video: Path) -> None:
    first, second = (f.to_ndarray(format="rgb24") for f in _decode(default_video)[:2])
    assert first.std() > 30
    assert np.abs(first.astype(int) - second).mean() > 10
    assert default_video.stat().st_size > 100_000  # ~500 kb/s, not a flat-colour trickle


def test_frame_index_survives_scaling(default_video: Path) -> None:
    frame = _decode(default_video)[77]
    assert media.frame_index(frame.reformat(width=160, height=90)) == 77


def test_ntsc_rate_without_audio(tmp_path: Path) -> None:
    fps = Fraction(30000, 1001)
    path = media.make_video(tmp_path / "ntsc.mp4", fps=fps, seconds=1.0, audio=False)
    with av.open(str(path)) as container:
        assert not container.streams.audio
        assert container.streams.video[0].average_rate == fps
    assert len(_decode(path)) == round(fps)


@pytest.mark.parametrize(
    ("pix_fmt", "profile"), [("yuv420p10le", "High 10"), ("yuv422p", "High 4:2:2")]
)
def test_high_profiles(tmp_path: Path, pix_fmt: str, profile: str) -> None:
    path = media.make_video(tmp_path / "hi.mp4", pix_fmt=pix_fmt, seconds=0.5, audio=False)
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        assert (video.codec_context.pix_fmt, video.profile) == (pix_fmt, profile)


def test_vfr_intervals_vary(tmp_path: Path) -> None:
    path = media.make_vfr_video(tmp_path / "vfr.mp4", width=320, height=180, seconds=2.0)
    with av.open(str(path)) as container:
        time_base = container.streams.video[0].time_base
        assert container.streams.audio
    frames = _decode(path)
    times = [Fraction(frame.pts) * time_base for frame in frames]
    intervals = np.diff(times)
    assert set(intervals) == {Fraction(1, 30), Fraction(1, 20)}
    assert list(intervals) == [Fraction(d, 90000) for d in media.vfr_durations(2.0)[:-1]]
    assert [media.frame_index(frame) for frame in frames] == list(range(len(frames)))


@pytest.mark.parametrize(("rotation", "read_back"), [(90, 90), (180, -180), (270, -90)])
def test_rotation_reads_back(tmp_path: Path, rotation: int, read_back: int) -> None:
    path = media.make_rotated_video(tmp_path / "rot.mp4", rotation, seconds=0.2, audio=False)
    frame = _decode(path)[0]
    assert (frame.width, frame.height) == (640, 360)  # coded landscape; PyAV doesn't autorotate
    assert frame.rotation == read_back


def test_unrotated_video_reads_zero(default_video: Path) -> None:
    assert _decode(default_video)[0].rotation == 0


def test_black_start(tmp_path: Path) -> None:
    path = media.make_black_start_video(tmp_path / "black.mp4", seconds=1.0, audio=False)
    peaks = [int(frame.to_ndarray(format="rgb24").max()) for frame in _decode(path)]
    assert peaks[:15] == [0] * 15
    assert min(peaks[15:]) > 200


def test_audio_only(tmp_path: Path) -> None:
    path = media.make_audio_only(tmp_path / "tone.m4a", 1.5)
    with av.open(str(path)) as container:
        assert not container.streams.video
        (audio,) = container.streams.audio
        assert (audio.codec_context.name, audio.rate) == ("aac", 48000)
        assert container.duration is not None
        assert container.duration / 1e6 == pytest.approx(1.5, abs=0.05)


@pytest.mark.parametrize(("name", "codec"), [("still.png", "png"), ("still.jpg", "mjpeg")])
def test_still_image(tmp_path: Path, name: str, codec: str) -> None:
    path = media.make_still_image(tmp_path / name, width=320, height=240)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == codec
        (frame,) = container.decode(video=0)
    assert (frame.width, frame.height) == (320, 240)


def test_non_media_files_are_rejected(tmp_path: Path, default_video: Path) -> None:
    text = media.make_text_file(tmp_path / "notes.txt")
    noise = media.make_random_bytes(tmp_path / "noise.mp4", 10_000)
    cut = media.make_truncated(default_video, tmp_path / "cut.mp4", 0.5)
    assert noise.stat().st_size == 10_000
    assert cut.read_bytes() == default_video.read_bytes()[: default_video.stat().st_size // 2]
    for path in (text, noise, cut):  # the moov atom is at the end, so half a file won't open
        with pytest.raises(av.error.InvalidDataError):
            av.open(str(path)).close()
