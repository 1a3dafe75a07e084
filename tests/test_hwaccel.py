"""Hardware codecs: probed by really using them; software when they do not work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import pytest

from engine import hwaccel
from engine.errors import InvalidOptionsError
from engine.probe import open_source
from tests import media

NO_CUDA = not hwaccel.probe_decoder("cuda").works


def test_probe_chooses_software_where_no_hardware_encodes(capfd: pytest.CaptureFixture[str]
                                                          ) -> None:
    working = [name for name in hwaccel.HARDWARE_ENCODERS if hwaccel.probe_encoder(name).works]
    chosen = hwaccel.choose_encoder("auto")
    assert chosen == (working[0] if working else "libx264")
    for name in hwaccel.HARDWARE_ENCODERS:
        probe = hwaccel.probe_encoder(name)
        assert probe.works or probe.reason  # every refusal says why
    assert hwaccel.probe_encoder("libx264").works
    out, err = capfd.readouterr()
    assert err == "" and out == ""  # probing is silent


def test_forcing_an_encoder_that_does_not_work_is_an_option_error() -> None:
    broken = [n for n in hwaccel.HARDWARE_ENCODERS if not hwaccel.probe_encoder(n).works]
    if not broken:
        pytest.skip("every hardware encoder works here")
    with pytest.raises(InvalidOptionsError, match="does not work here"):
        hwaccel.choose_encoder(broken[0])


def test_doctor_reports_what_really_works() -> None:
    result = subprocess.run([sys.executable, "-m", "engine.cli", "doctor"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert f"PyAV {av.__version__}" in result.stdout
    assert "libx264            works" in result.stdout
    expected = hwaccel.choose_encoder("auto")
    assert f"encode with {expected}" in result.stdout
    for name in hwaccel.HARDWARE_ENCODERS:
        assert name in result.stdout


@pytest.mark.skipif(NO_CUDA, reason=f"NVDEC not usable here: "
                                    f"{hwaccel.probe_decoder('cuda').reason}")
def test_nvdec_decodes_the_same_frames_as_software(tmp_path: Path) -> None:
    source = media.make_video(tmp_path / "in.mp4", width=1280, height=720, seconds=3.0)
    results = []
    for device in ("cuda", None):
        with open_source(source, hwaccel=device) as opened:
            assert opened.info.decoder == (device or "software")
            stream = opened.container.streams.video[0]
            times = [f.pts for f in opened.pending if isinstance(f, av.VideoFrame)]
            for packet in opened.packets:
                if packet.stream.index == stream.index:
                    times += [f.pts for f in packet.decode()]
            results.append(times)
    assert results[0] == results[1]
    assert len(results[0]) == 90
