"""The one component that writes what players read: playlists and the poster.

Order matters to players, which load the master playlist once: a rung's segments are complete
(written by the muxer) before its media playlist is written, and its media playlist before the
master lists it. Every file is written to a temporary name in its own directory and renamed, so a
reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

from engine.audio import EncodedAudio
from engine.errors import OutputWriteError
from engine.playlist import (
    AudioRendition,
    Variant,
    master_playlist,
    media_playlist,
    target_duration,
    validate_master,
    validate_media,
    variant_bandwidth,
)
from engine.rung import EncodedRung
from engine.segment import SegmentRecord

MASTER = "master.m3u8"
MEDIA = "index.m3u8"
POSTER = "poster.jpg"


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise OutputWriteError(f"cannot write {path}: {exc.strerror or exc}") from exc


class Publisher:
    """Publishes a job's audio, rungs (lowest first) and poster into ``out_dir``."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.variants: list[Variant] = []
        self._audio: EncodedAudio | None = None
        self._target = 1
        self._lock = threading.Lock()

    @property
    def master_path(self) -> Path:
        return self.out_dir / MASTER

    def write_poster(self, jpeg: bytes) -> Path:
        path = self.out_dir / POSTER
        write_atomically(path, jpeg)
        return path

    def set_audio(self, audio: EncodedAudio) -> None:
        """Publish the shared audio rendition's playlist (before any rung lists it)."""
        with self._lock:
            self._target = max(self._target, target_duration(audio.segments))
            self._write_media(audio.folder, audio.segments)
            self._audio = audio

    def publish(self, encoded: EncodedRung, frame_rate: Fraction) -> Variant:
        """Write the rung's playlist, then list it in the master. Returns how it is listed.

        ``frame_rate`` is the highest rate of the video (RFC 8216 FRAME-RATE), which for a
        variable-frame-rate source is above its average.
        """
        with self._lock:
            self._target = max(self._target, target_duration(encoded.segments))
            self._write_media(encoded.folder, encoded.segments)
            audio_segments = self._audio.segments if self._audio else ()
            peak, average = variant_bandwidth(encoded.segments, audio_segments)
            codecs = encoded.codecs + (f",{self._audio.codecs}" if self._audio else "")
            variant = Variant(
                uri=f"{encoded.folder}/{MEDIA}", bandwidth=peak, average_bandwidth=average,
                codecs=codecs, width=encoded.rung.width, height=encoded.rung.height,
                frame_rate=frame_rate,
            )
            variants = sorted([*self.variants, variant], key=lambda v: v.width * v.height)
            audio = (AudioRendition(f"{self._audio.folder}/{MEDIA}", self._audio.channels)
                     if self._audio else None)
            text = master_playlist(variants, audio)
            validate_master(text, variants)
            write_atomically(self.master_path, text.encode())
            self.variants = variants
            return variant

    def _write_media(self, folder: str, segments: Sequence[SegmentRecord]) -> None:
        text = media_playlist(segments, self._target)
        validate_media(text, segments)
        write_atomically(self.out_dir / folder / MEDIA, text.encode())
