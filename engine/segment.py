"""Encoded packets to HLS segments on disk, and the records describing them.

FFmpeg's HLS muxer does the cutting: it starts a segment at the first keyframe at or after each
multiple of the segment length, which is exactly where the keyframe schedule put IDR frames, so
segment boundaries are identical across rungs. It writes each segment under a temporary name and
renames it when complete. Its own playlist is only read back, for which segments are complete and
their measured durations; the playlists players see are written by :mod:`engine.publish`.

The muxer ignores a failed write of a segment (a full disk: ENOSPC, EFBIG) and renames and lists
the truncated file all the same, so every file it writes goes through :class:`_CheckedFile`,
which keeps the error: once one is kept, the writer reports no segment as complete and its next
call raises :class:`~engine.errors.OutputWriteError`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import av
import av.container
import av.error
import m3u8

from engine.errors import OutputWriteError

log = logging.getLogger(__name__)

#: The muxer's own playlist, read back at close and then removed.
_MUXER_PLAYLIST = ".muxer.m3u8"
INIT_SEGMENT = "init.mp4"
SEGMENT_TYPES = ("fmp4", "mpegts")
_AVIO_FLAG_WRITE = 2
#: The MP4 muxer's options for fMP4 segments. By default each track's fragments start at time 0,
#: with the real start only in an edit list, which hls.js ignores: a rung with B-frames then
#: played two frames behind the others, and sound that starts late played early. frag_discont
#: without edit lists puts the real decode times in the fragments (the timeline starts at
#: TIMELINE_START, so they are never negative and nothing is shifted).
FMP4_SEGMENT_OPTIONS = "movflags=+frag_discont:use_editlist=0:avoid_negative_ts=make_non_negative"


@dataclass(frozen=True)
class SegmentRecord:
    """One complete segment file."""

    #: File name, relative to the rendition's folder.
    uri: str
    duration_s: float
    size_bytes: int
    #: The fMP4 initialisation segment this segment needs (``None`` for MPEG-TS).
    init_uri: str | None = None
    #: The encoder changed before this segment (a fallback): players must reset their decoder.
    discontinuity: bool = False

    @property
    def bitrate(self) -> float:
        """Bits per second of this segment."""
        return self.size_bytes * 8 / self.duration_s if self.duration_s > 0 else 0.0


class HlsWriter:
    """Writes one rendition (a video rung, or the shared audio) into its own folder."""

    def __init__(self, directory: Path, segment_seconds: Fraction, segment_type: str,
                 first_segment: int = 0, init_name: str = INIT_SEGMENT) -> None:
        if segment_type not in SEGMENT_TYPES:
            raise ValueError(f"segment type must be one of {SEGMENT_TYPES}")
        self.directory = directory
        extension = "m4s" if segment_type == "fmp4" else "ts"
        directory.mkdir(parents=True, exist_ok=True)
        options = {
            "hls_time": str(float(segment_seconds)),
            # EVENT makes the muxer rewrite its playlist as each segment closes, which is how
            # segments are known to be complete while the rung is still encoding.
            "hls_playlist_type": "event",
            "hls_list_size": "0",
            "hls_segment_type": segment_type,
            "hls_segment_filename": str(directory / f"seg_%05d.{extension}"),
            "hls_flags": "temp_file+independent_segments",
            "start_number": str(first_segment),
        }
        self.init_uri = init_name if segment_type == "fmp4" else None
        if self.init_uri:
            options["hls_fmp4_init_filename"] = self.init_uri
            options["hls_segment_options"] = FMP4_SEGMENT_OPTIONS
        #: The first write that failed, in any file of this rendition.
        self.write_error: OSError | None = None
        try:
            self.container: av.container.OutputContainer = av.open(
                str(directory / _MUXER_PLAYLIST), "w", format="hls", options=options,
                io_open=self._open)
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputWriteError(f"cannot write segments in {directory}: {exc}") from exc

    def mux(self, packets: list[av.Packet[Any]]) -> None:
        try:
            self.container.mux(packets)
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputWriteError(f"writing segments in {self.directory} failed: {exc}") from exc
        self._check_writes()

    def close(self) -> list[SegmentRecord]:
        """Finish the last segment and return every segment, measured on disk."""
        try:
            self.container.close()
        except (av.error.FFmpegError, OSError) as exc:
            raise OutputWriteError(f"closing segments in {self.directory} failed: {exc}") from exc
        records = self.closed_segments()
        (self.directory / _MUXER_PLAYLIST).unlink(missing_ok=True)
        return records

    def closed_segments(self) -> list[SegmentRecord]:
        """The segments complete on disk so far (the muxer lists a segment once it is renamed
        into place; it replaces its playlist atomically, so reading it from any thread is safe).

        Raises :class:`OutputWriteError` once any write failed: the muxer lists a truncated
        segment as if it were complete.
        """
        try:
            playlist = m3u8.loads((self.directory / _MUXER_PLAYLIST).read_text())
        except FileNotFoundError:
            playlist = None
        # After the read: a failed write is kept before the muxer lists the segment it truncated.
        self._check_writes()
        if playlist is None:
            return []
        return [SegmentRecord(s.uri, float(s.duration), (self.directory / s.uri).stat().st_size,
                              self.init_uri) for s in playlist.segments]

    def _open(self, url: str, flags: int, options: dict[str, str]) -> _CheckedFile:
        return _CheckedFile(self, url, "wb" if flags & _AVIO_FLAG_WRITE else "rb")

    def _check_writes(self) -> None:
        if self.write_error is not None:
            reason = self.write_error.strerror or str(self.write_error)
            raise OutputWriteError(f"writing segments in {self.directory} failed: {reason}")

    def abort(self) -> None:
        """Close after a failure; never raises."""
        try:
            self.container.close()
        except Exception as exc:  # already unwinding from the real error
            log.debug("closing %s after a failure: %s", self.directory, exc)


class _CheckedFile:
    """A file the HLS muxer writes through PyAV's ``io_open``, keeping the first failed open or
    write on its writer. The error is not raised to FFmpeg, which would ignore it, and PyAV
    would keep it for whatever call on this thread comes next, or print it with a traceback
    once a second one came (the output folder deleted mid-job did that, for each rendition):
    the writer raises it at its next call."""

    def __init__(self, writer: HlsWriter, path: str, mode: str) -> None:
        self._writer = writer
        try:
            # PyAV closes it through close(), when the muxer is done with the file.
            self._file: IO[bytes] = open(path, mode)  # noqa: SIM115
        except OSError as exc:
            if "r" in mode:
                raise
            self._failed(exc)
            # The rendition has failed: what the muxer writes now no longer matters.
            self._file = open(os.devnull, mode)  # noqa: SIM115

    def _failed(self, exc: OSError) -> None:
        if self._writer.write_error is None:
            self._writer.write_error = exc

    def write(self, data: bytes) -> int:
        if self._writer.write_error is None:
            try:
                return self._file.write(data)
            except OSError as exc:
                self._failed(exc)
        return len(data)  # the rendition has failed: what is written now no longer matters

    def seek(self, offset: int, whence: int = 0) -> int:
        try:
            return self._file.seek(offset, whence)  # flushes first: a full disk can fail here
        except OSError as exc:
            self._failed(exc)
            return offset

    def tell(self) -> int:
        return self._file.tell()

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size)

    def close(self) -> None:
        try:
            self._file.close()  # flushes: a full disk can fail here too
        except OSError as exc:
            self._failed(exc)


def avc1_codecs(extradata: bytes) -> str:
    """The RFC 6381 ``avc1.PPCCLL`` string from H.264 extradata (avcC or Annex B SPS)."""
    if len(extradata) >= 4 and extradata[0] == 1:
        profile, compat, level = extradata[1], extradata[2], extradata[3]
        return f"avc1.{profile:02x}{compat:02x}{level:02x}"
    start = 0
    while True:
        start = extradata.find(b"\x00\x00\x01", start)
        if start < 0 or start + 6 > len(extradata):
            raise ValueError("no SPS in the encoder's extradata")
        header = extradata[start + 3]
        if header & 0x1F == 7:
            profile, compat, level = extradata[start + 4:start + 7]
            return f"avc1.{profile:02x}{compat:02x}{level:02x}"
        start += 3
