"""The one component that writes what players read: playlists and the poster.

Order matters to players, which load the master playlist once: a rung's segments are complete
(written by the muxer) before its media playlist is written, and its media playlist before the
master lists it. Every file is written to a temporary name in its own directory and renamed, so a
reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import logging
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import m3u8

from engine.audio import EncodedAudio
from engine.decode import GAP_TOLERANCE_S
from engine.errors import (
    InvalidOptionsError,
    OutputExistsError,
    OutputInUseError,
    OutputWriteError,
    RungsError,
)
from engine.gop import TIMELINE_START
from engine.iframes import IFrameRange, locate
from engine.ladder import Rung
from engine.playlist import (
    AudioRendition,
    SubtitleRendition,
    Variant,
    iframes_bandwidth,
    iframes_ceiling,
    master_playlist,
    media_playlist,
    target_duration,
    validate_master,
    validate_media,
    variant_bandwidth,
)
from engine.rung import EncodedRung
from engine.segment import SegmentRecord
from engine.subtitles import SubtitleTrack, webvtt_segments

log = logging.getLogger(__name__)

MASTER = "master.m3u8"
MEDIA = "index.m3u8"
#: A complete rung's I-frame playlist, beside its media playlist.
IFRAMES = "iframes.m3u8"
POSTER = "poster.jpg"
#: Subtitle track ``n`` (from 1) goes in ``subtitles<n>/``.
SUBTITLES_FOLDER = "subtitles"


#: The process's file creation mask, read once (reading it means setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomically(path: Path, data: bytes, sync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename.

    The file gets the permissions any new file gets (as the muxer's segments do), not the
    temporary file's owner-only ones: a web server running as another user must read it.
    Without ``sync`` it is not flushed to the disk first (segments, which no playlist lists
    yet: the muxer does not flush its own)."""
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(fd, 0o666 & ~_UMASK)
                handle.write(data)
                handle.flush()
                if sync:
                    os.fsync(handle.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise OutputWriteError(f"cannot write {path}: {exc.strerror or exc}") from exc


def keep_listed(folder: Path, playlist: m3u8.M3U8) -> None:
    """Delete the files of a rendition folder that its media ``playlist`` does not list:
    segments closed after it was last written, temporary files."""
    needed = {MEDIA, IFRAMES, *(s.uri for s in playlist.segments),
              *(s.init_section.uri for s in playlist.segments if s.init_section is not None)}
    for path in folder.iterdir():
        if path.name not in needed and path.is_file():
            path.unlink(missing_ok=True)


#: Why a directory cannot be made or looked into where an output names it: its name or its
#: place, which whoever named it can mend (any other failure, a full disk, is the system's).
_UNUSABLE_PLACE = frozenset((errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT,
                             errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP))


def output_dir_error(out: Path, exc: OSError) -> RungsError:
    """The error for a failure to make or look into the output directory ``out``: a usage
    error where its name or place is the problem (a name too long, a read-only file system:
    ``rungs transcode`` said "internal error" and exited 1), else a failure to write."""
    reason = exc.strerror or str(exc)
    if exc.errno in _UNUSABLE_PLACE:
        return InvalidOptionsError(f"output directory {str(out)!r} cannot be made: {reason}")
    return OutputWriteError(f"cannot create output directory {str(out)!r}: {reason}")


def check_output_dir(out: Path, overwrite: bool, keep: Iterable[Path] = ()) -> None:
    """Raise when ``out`` cannot be a job's output directory: it is a file, a file stands where
    one of its parents should be, the system refuses its name, or it holds something and
    ``overwrite`` is off. Overwriting deletes everything in it, so it must not hold any of
    ``keep`` (the job's source, say): ``rungs transcode movies/a.mp4 movies --overwrite`` used
    to delete ``movies/a.mp4``."""
    try:
        _check_output_dir(out, overwrite, keep)
    except RungsError:
        raise
    except OSError as exc:
        raise output_dir_error(out, exc) from None


def _check_output_dir(out: Path, overwrite: bool, keep: Iterable[Path]) -> None:
    try:
        str(out).encode()
    except UnicodeEncodeError:
        # The segments' file names reach FFmpeg's HLS muxer as an option, which PyAV passes
        # only as UTF-8: such a job failed at its first segment with an internal error.
        raise InvalidOptionsError(
            f"output directory {str(out)!r} is not named in UTF-8, which FFmpeg's HLS muxer "
            "needs") from None
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output {str(out)!r} exists and is not a directory")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise OutputExistsError(
                f"output {str(out)!r} cannot be created: {str(parent)!r} is a file")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise OutputExistsError(
            f"output directory {str(out)!r} is not empty (use overwrite to replace it)")
    inside = out.resolve()
    for path in keep:
        if path.resolve().is_relative_to(inside):
            raise InvalidOptionsError(
                f"output directory {str(out)!r} holds {str(path)!r}, which overwriting it "
                "would delete")


def lock_output_dir(out: Path) -> int | None:
    """Take ``out`` (an existing directory) for one job: an open descriptor holding an exclusive
    ``flock``, which the job closes when it ends and the kernel drops if the process dies.

    Raises :class:`OutputInUseError` while another job, in this process or another, holds it:
    two ``rungs transcode`` runs into one folder both failed, the second's refusal deleting the
    first one's segments. A folder that cannot be opened or locked (a file system without
    ``flock``) goes unlocked: None.
    """
    try:
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        log.debug("cannot open %s to lock it, going on without: %s", out, exc)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputInUseError(
            f"output directory {str(out)!r} is being written by another job") from None
    except OSError as exc:
        os.close(fd)
        log.debug("cannot lock %s, going on without: %s", out, exc)
        return None
    return fd


class Publisher:
    """Publishes a job's audio, rungs (lowest first) and poster into ``out_dir``.

    Early playback: the first rung can be listed while it still encodes (:meth:`publish_early`),
    with EVENT playlists that grow as segments close and end as each is complete; every rung
    listed after it is a complete EVENT playlist too (the variants of a master share one type).
    """

    def __init__(self, out_dir: Path, segment_seconds: float) -> None:
        self.out_dir = out_dir
        self.variants: list[Variant] = []
        #: The audio renditions by folder, in the tracks' order, each as far as it is listed.
        self._audio: dict[str, EncodedAudio] = {}
        # Fixed from the start: an EVENT playlist's target duration must not change. A segment
        # ends at the first frame at or after its end, or at a repeated frame in a gap (decode's
        # GAP_TOLERANCE_S), and EXTINF rounds half up (2.5 s segments of 29.97 fps video last
        # 2.5025 s: a target of round(2.5) = 2 failed the job).
        self._target = max(1, math.floor(segment_seconds + GAP_TOLERANCE_S + Fraction(1, 2)))
        #: Folders whose playlists are EVENT playlists, with their segments.
        self._event: dict[str, Sequence[SegmentRecord]] = {}
        #: Each rung's I-frames found so far, one a segment in order (a segment is read once).
        self._iframes: dict[str, list[IFrameRange]] = {}
        #: Rungs whose I-frame playlist a master listed while they encoded, and those with a
        #: segment whose I-frame was not found (listed early, theirs ends before it).
        self._iframes_early: set[str] = set()
        self._iframes_cut: set[str] = set()
        #: Folders of the audio renditions that are complete (or were dropped, having none).
        self._audio_complete: set[str] = set()
        self._segment_seconds = segment_seconds
        #: The subtitle renditions, with their segments; each one's playlist is written with the
        #: first master playlist that lists it, of that master's type. While
        #: ``_subtitles_pending``, nothing is listed.
        self._subtitles: list[tuple[SubtitleRendition, list[SegmentRecord]]] = []
        self._subtitle_playlists: set[str] = set()
        self._subtitles_pending = False
        self._subtitles_length_s = math.inf
        self._lock = threading.Lock()

    @property
    def master_path(self) -> Path:
        return self.out_dir / MASTER

    def write_poster(self, jpeg: bytes) -> Path:
        path = self.out_dir / POSTER
        write_atomically(path, jpeg)
        return path

    @property
    def audio(self) -> list[AudioRendition]:
        """The audio renditions the master playlist lists, the main track's first (none for
        rungs with no sound)."""
        return [AudioRendition(f"{a.folder}/{MEDIA}", a.channels, a.language, a.name)
                for a in self._audio.values()]

    @property
    def subtitles(self) -> list[SubtitleRendition]:
        """The subtitle renditions written so far (URIs relative to ``out_dir``)."""
        return [rendition for rendition, _ in self._subtitles]

    @property
    def listed_subtitle_folders(self) -> set[str]:
        """The folders of the subtitle renditions a master playlist has listed."""
        return {uri.split("/")[0] for uri in self._subtitle_playlists}

    def expect_subtitles(self, length_s: float) -> None:
        """List nothing until :meth:`set_subtitles` is called (or :meth:`stop_waiting`):
        players read the first master playlist only, which should list them. They are kept up
        to ``length_s`` after the first picture (the video's length)."""
        self._subtitles_pending = True
        self._subtitles_length_s = length_s

    def stop_waiting(self) -> None:
        """List the rungs without the subtitles expected; the master playlist lists them from
        the first publication after :meth:`set_subtitles` (for players that load it then)."""
        with self._lock:
            self._subtitles_pending = False

    def set_subtitles(self, tracks: Sequence[SubtitleTrack],
                      origin_s: float) -> tuple[list[str], int]:
        """Write the WebVTT segments of ``tracks`` (cue times on the source's clock, on which
        the output's time 0 is ``origin_s``: see engine.decode.DecodeProgress); the master
        playlists list them from now on.
        Returns the names of the tracks left out (no cue in the video's time), and how many
        cues were left out for size (see engine.subtitles.webvtt_segments)."""
        left_out, cues_over = [], 0
        with self._lock:
            for track in tracks:
                vtt = webvtt_segments(track.cues, origin_s, self._segment_seconds,
                                      float(TIMELINE_START), self._subtitles_length_s)
                cues_over += vtt.cues_over
                if not vtt.files:
                    left_out.append(track.name)
                    continue
                folder = f"{SUBTITLES_FOLDER}{len(self._subtitles) + 1}"
                try:
                    (self.out_dir / folder).mkdir(exist_ok=True)
                except OSError as exc:
                    raise OutputWriteError(
                        f"cannot write {self.out_dir / folder}: {exc.strerror or exc}") from exc
                segments = []
                for index, (text, duration) in enumerate(vtt.files):
                    name = f"seg_{index:05d}.vtt"
                    data = text.encode()
                    write_atomically(self.out_dir / folder / name, data, sync=False)
                    segments.append(SegmentRecord(name, duration, len(data)))
                self._subtitles.append((SubtitleRendition(
                    f"{folder}/{MEDIA}", track.name, track.language, track.default,
                    track.forced), segments))
            self._subtitles_pending = False
        return left_out, cues_over

    def publish_early(self, rung: Rung, segments: Sequence[SegmentRecord], codecs: str,
                      captions: frozenset[str], frame_rate: Fraction,
                      audio: Sequence[EncodedAudio]) -> bool:
        """List the first rung while it encodes, with the segments complete so far (and each
        audio track's, once every one has one) and the caption channels seen so far (a player
        reads the master once: captions that begin later are declared in the masters written
        after, and hls.js finds them in the pictures anyway). Returns True the first time, when
        the master starts listing it."""
        with self._lock:
            if self._subtitles_pending:
                return False
            # Never replace a complete audio playlist with an earlier, partial view of it.
            growing = [a for a in audio if a.folder not in self._audio_complete]
            if any(not a.segments for a in growing):
                # Not before the audio has a segment too (audio that starts late): a listed
                # playlist with none stalls players, and a job stopped then kept it so.
                return False
            for track in growing:
                self._audio[track.folder] = track
                self._write_event(track.folder, track.segments, ended=False)
            self._write_event(rung.name, segments, ended=False)
            # A player reads the master once: one that starts now scrubs with this I-frame
            # playlist or with none.
            trick = self._write_iframes(rung.name, segments, ended=False)
            if self.variants:
                return False
            # Until the rung is complete its peak is not known: declare the VBV ceiling, which no
            # segment can exceed, so players never pick a rung their bandwidth cannot carry.
            ceiling = 1000 * (rung.maxrate_kbps + rung.bufsize_kbps / self._target)
            peak, average = variant_bandwidth(segments, self._audio_segments())
            if trick is not None:
                self._iframes_early.add(rung.name)
                trick = max(trick, iframes_ceiling(rung.bufsize_kbps, self._segment_seconds))
            self._write_master(Variant(
                uri=f"{rung.name}/{MEDIA}", bandwidth=max(peak, math.ceil(ceiling)),
                average_bandwidth=average, codecs=self._codecs(codecs), width=rung.width,
                height=rung.height, frame_rate=frame_rate, captions=tuple(sorted(captions)),
                iframes_uri=None if trick is None else f"{rung.name}/{IFRAMES}",
                iframes_bandwidth=trick or 0))
            return True

    def set_audio(self, audio: EncodedAudio) -> None:
        """Publish a complete audio rendition (before any rung lists it, or ended); the
        tracks in their order.

        A rendition without a segment (every audio frame came before the first picture, so none
        was kept) is not published: with no other, the rungs are listed video-only.
        """
        with self._lock:
            if not audio.segments:
                self._drop_audio(audio)
                return
            self._target = max(self._target, target_duration(audio.segments))
            self._audio[audio.folder] = audio
            self._audio_complete.add(audio.folder)
            if audio.folder in self._event:
                self._write_event(audio.folder, audio.segments, ended=True)
            else:
                self._write_vod(audio.folder, audio.segments)

    def publish(self, encoded: EncodedRung, frame_rate: Fraction) -> Variant:
        """Write the complete rung's playlist, then list it in the master. Returns how it is
        listed.

        ``frame_rate`` is the highest rate of the video (RFC 8216 FRAME-RATE), which for a
        variable-frame-rate source is above its average.
        """
        with self._lock:
            self._target = max(self._target, target_duration(encoded.segments))
            if self._event:
                # Listed early: an EVENT playlist may only be appended to and ended (RFC 8216
                # 6.2.1), never turned VOD, and the variants of a master share one type, so the
                # rungs after the first are complete EVENT playlists too. (The first rung's and
                # the audio's were ended as each was complete, before this rung.)
                self._write_event(encoded.folder, encoded.segments, ended=True)
            else:
                self._write_vod(encoded.folder, encoded.segments)
            peak, average = variant_bandwidth(encoded.segments, self._audio_segments())
            trick = self._write_iframes(encoded.folder, encoded.segments)
            variant = Variant(
                uri=f"{encoded.folder}/{MEDIA}", bandwidth=peak, average_bandwidth=average,
                codecs=self._codecs(encoded.codecs), width=encoded.rung.width,
                height=encoded.rung.height, frame_rate=frame_rate,
                captions=tuple(sorted(encoded.captions)), uncaptioned=not encoded.captioned,
                iframes_uri=None if trick is None else f"{encoded.folder}/{IFRAMES}",
                iframes_bandwidth=trick or 0,
            )
            self._write_master(variant)
            return variant

    def end_early(self) -> list[str]:
        """The job stops while a rung is listed early: end its playlists where they are (every
        segment they list is complete), so what the master lists stays playable. Returns the
        folders kept, with the files each playlist lists."""
        with self._lock:
            for folder, segments in self._event.items():
                self._write_event(folder, segments, ended=True)
                if folder in self._iframes_early:
                    self._write_iframes(folder, segments)
            return list(self._event)

    def _drop_audio(self, audio: EncodedAudio) -> None:
        listed = self._audio.pop(audio.folder, None) is not None
        self._audio_complete.add(audio.folder)
        self._event.pop(audio.folder, None)
        if self.variants and listed:  # listed early (empty): list the rungs without it
            if not self._audio:
                self.variants = [
                    dataclasses.replace(v, codecs=v.codecs.replace(f",{audio.codecs}", ""))
                    for v in self.variants]
            self._write_master(self.variants[0])
        shutil.rmtree(self.out_dir / audio.folder, ignore_errors=True)

    def _audio_segments(self) -> list[tuple[SegmentRecord, ...]]:
        return [a.segments for a in self._audio.values()]

    def withdraw(self) -> None:
        """Take the master down (an unlink needs no disk space): for when the early-listed
        playlists cannot be ended, so nothing lists a playlist that will never end."""
        with self._lock:
            self.master_path.unlink(missing_ok=True)
            self.variants = []
            self._event = {}

    def _codecs(self, video: str) -> str:
        # Every audio rendition is AAC-LC: the variant's CODECS names it once.
        codecs = {a.codecs for a in self._audio.values()}
        return ",".join([video, *sorted(codecs)])

    def _write_master(self, variant: Variant) -> None:
        if self._subtitles_pending:
            raise RuntimeError("the subtitles must be set before the first master playlist")
        for rendition, segments in self._subtitles:
            if rendition.uri in self._subtitle_playlists:
                continue
            # A long track's segments can be longer than the rungs' (see
            # engine.subtitles.webvtt_segments); a playlist's target duration is its own.
            self._write_playlist(rendition.uri.split("/")[0], segments, bool(self._event), True,
                                 max(self._target, target_duration(segments)))
            self._subtitle_playlists.add(rendition.uri)
        others = [v for v in self.variants if v.uri != variant.uri]
        variants = sorted([*others, variant], key=lambda v: v.width * v.height)
        subtitles = [rendition for rendition, _ in self._subtitles]
        text = master_playlist(variants, self.audio, subtitles)
        validate_master(text, variants, self.audio, subtitles)
        write_atomically(self.master_path, text.encode())
        self.variants = variants

    def _write_vod(self, folder: str, segments: Sequence[SegmentRecord]) -> None:
        self._write_playlist(folder, segments, False, True, self._target)

    def _write_event(self, folder: str, segments: Sequence[SegmentRecord], ended: bool) -> None:
        self._write_playlist(folder, segments, True, ended, self._target)
        self._event[folder] = segments

    def _write_playlist(self, folder: str, segments: Sequence[SegmentRecord], event: bool,
                        ended: bool, target: int) -> None:
        text = media_playlist(segments, target, event=event, ended=ended)
        validate_media(text, segments, event=event, ended=ended)
        write_atomically(self.out_dir / folder / MEDIA, text.encode())

    def _write_iframes(self, folder: str, segments: Sequence[SegmentRecord],
                       ended: bool = True) -> int | None:
        """Write a rung's I-frame playlist (of the type its media playlist has: the variants of
        a master share one), ``ended`` once the rung is complete; its BANDWIDTH so far, or None
        where a segment's I-frame was not found (see engine.iframes), and the rung is listed
        without one from then on; one listed early is ended before it."""
        if folder in self._iframes_cut:
            return None
        found = self._iframes.setdefault(folder, [])
        for segment in segments[len(found):]:
            iframe = locate(self.out_dir / folder / segment.uri)
            if iframe is None:
                log.warning("no I-frame playlist for %s: the I-frame of %s was not found",
                            folder, segment.uri)
                self._iframes_cut.add(folder)
                if folder in self._iframes_early:
                    self._write_iframes_playlist(folder, segments[:len(found)], found, True)
                return None
            found.append(iframe)
        if not segments:
            return None
        iframes = found[:len(segments)]
        self._write_iframes_playlist(folder, segments, iframes, ended)
        return iframes_bandwidth(segments, iframes)

    def _write_iframes_playlist(self, folder: str, segments: Sequence[SegmentRecord],
                                iframes: Sequence[IFrameRange], ended: bool) -> None:
        event = bool(self._event)
        text = media_playlist(segments, self._target, event=event, ended=ended, iframes=iframes)
        validate_media(text, segments, event=event, ended=ended, iframes=iframes)
        write_atomically(self.out_dir / folder / IFRAMES, text.encode())
