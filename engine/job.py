"""One transcode job: the threads of the pipeline, its states and events, cleanup on every path.

A thread of the job's own (for :meth:`Job.run` too, which waits for it) decodes the source once
and feeds every rung; each rung encodes on its own thread; rungs are published lowest first,
each the moment it and every rung below it are complete. The first publication makes the job
READY.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av.video.frame
import m3u8

from engine.audio import (
    AUDIO_FOLDER,
    AUDIO_FOLDERS,
    AudioEncoder,
    AudioSettings,
    audio_folder,
)
from engine.decode import (
    MAX_FRAME_INTERVAL_S,
    PIXEL_FORMAT,
    DecodeProgress,
    DecodeStats,
    decode_source,
    frame_format,
    sound_lead,
    video_time_base,
)
from engine.errors import (
    InvalidOptionsError,
    InvalidSourceError,
    JobCancelledError,
    OutputWriteError,
    RungsError,
)
from engine.fanout import FanOut, FrameCache
from engine.gop import FrameTime, KeyframeSchedule, highest_frame_rate, segment_length
from engine.hwaccel import choose_decoder, choose_encoder, fallback_encoder
from engine.ladder import MAX_FRAME_RATE, LadderOptions, Rung, plan_ladder
from engine.memory import map_large_blocks, trim, usable_memory_bytes
from engine.poster import PosterPicker
from engine.probe import (
    DEFAULT_MAX_DURATION_S,
    DEFAULT_MAX_PIXELS,
    MAX_AUDIO_TRACKS,
    OpenSource,
    SourceInfo,
    open_source,
)
from engine.publish import (
    MEDIA,
    POSTER,
    SUBTITLES_FOLDER,
    Publisher,
    check_output_dir,
    keep_listed,
    lock_output_dir,
    output_dir_error,
)
from engine.rung import (
    EncodedRung,
    EncodeSettings,
    Fallback,
    RungProgress,
    encode_rung,
    encoder_threads,
)
from engine.segment import SEGMENT_TYPES, SegmentRecord
from engine.stall import DecoderWatch, run_watched
from engine.subtitles import (
    MAX_CUES,
    MAX_TRACK_BYTES,
    MAX_TRACKS,
    SubtitleReader,
    SubtitleScan,
)
from engine.tonemap import mapped_as

log = logging.getLogger(__name__)

#: Progress events per second while the job runs.
PROGRESS_HZ = 4
#: How long a job whose decoder is stuck waits for each of its other threads to stop.
_ABANDON_JOIN_S = 10.0
#: How long after the job starts early playback waits for the subtitle pass (a Matroska file
#: is read through, and a film's can be tens of GB): after that, the first rung is listed
#: without them, and the master lists them from the first rung's completion on.
SUBTITLE_WAIT_S = 5.0


class JobState(enum.StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    READY = "READY"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.COMPLETE, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class TranscodeOptions:
    """Everything a caller can choose about a job."""

    ladder: LadderOptions = field(default_factory=LadderOptions)
    segment_seconds: float = 4.0
    #: ``fmp4`` (CMAF) or ``mpegts``.
    segment_type: str = "fmp4"
    #: ``auto`` (a hardware encoder only if it really works here) or an encoder name.
    encoder: str = "auto"
    #: Decode on ``auto`` (a hardware device only if it really decodes here), ``none``, or a
    #: device type such as ``cuda``.
    hwaccel: str = "auto"
    audio: AudioSettings = field(default_factory=AudioSettings)
    #: Memory for decoded frames waiting for slower rungs, used when the whole source fits in it;
    #: otherwise every frame spills to disk (see engine.fanout: with direct I/O a spilled frame
    #: costs little more than a pooled one).
    cache_bytes: int = 64 << 20
    #: Disk for decoded frames that do not fit in ``cache_bytes``; None: half the scratch
    #: directory's free space when the job starts. With the whole source fitting, the slower
    #: rungs encode one after another (see engine.fanout); otherwise all at once, the decoder
    #: waiting for them.
    spill_bytes: int | None = None
    #: The directory the spill file goes in; None: the system's temporary directory. The file
    #: has no name once open (see engine.fanout), so nothing is left there however a job ends.
    scratch_dir: Path | None = None
    #: Replace the contents of a non-empty output directory.
    overwrite: bool = False
    #: List the first rung as soon as its first segment closes (EVENT playlists that grow),
    #: making the job READY then, instead of when the whole rung is complete.
    early_playback: bool = True
    #: How much lower later rungs' threads run than the first rung's (nice increment).
    background_nice: int = 19
    #: Encode the slower rungs at the same time once decoding is done, instead of one after
    #: another: sooner in total (10 s of 4K on two cores: 1-7%), but with every rung's encoder
    #: in memory at once (there: 1.77 GB at the peak instead of 1.40 GB). Each higher rung runs
    #: at a lower priority than the one below it, so they still finish lowest first.
    rungs_at_once: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_duration_s: float = DEFAULT_MAX_DURATION_S

    def check(self) -> None:
        """Raise :class:`InvalidOptionsError` for options that cannot work."""
        self.ladder.check()
        if not 1 <= self.segment_seconds <= 60:
            raise InvalidOptionsError(
                f"segment length must be 1 to 60 seconds, got {self.segment_seconds}")
        if self.segment_type not in SEGMENT_TYPES:
            raise InvalidOptionsError(
                f"segment type must be one of {', '.join(SEGMENT_TYPES)}, "
                f"got {self.segment_type!r}")
        if self.cache_bytes < 0 or (self.spill_bytes or 0) < 0:
            raise InvalidOptionsError("cache and spill sizes must not be negative")
        memory = usable_memory_bytes()
        # A source that fits in the cache is held there whole; the encoders need the rest.
        if memory is not None and self.cache_bytes > memory // 2:
            raise InvalidOptionsError(
                f"a frame cache of {self.cache_bytes >> 20:,} MB is more than half of the "
                f"{memory >> 20:,} MB of memory here")
        if self.scratch_dir is not None and not self.scratch_dir.is_dir():
            raise InvalidOptionsError(
                f"scratch directory {str(self.scratch_dir)!r} does not exist or is not a "
                "directory")


@dataclass(frozen=True)
class JobEvent:
    """Something that happened to a job. ``data`` depends on ``type``."""

    #: queued, running, poster_ready, progress, first_segment (early playback lists the first
    #: rung), rung_published, encoder_fallback, ready, complete, failed, cancelled.
    type: str
    state: JobState
    #: Seconds since the job started running.
    elapsed_s: float
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with a ``type`` field."""
        return {"type": self.type, "state": self.state.value,
                "elapsed_s": round(self.elapsed_s, 3), **self.data}


@dataclass
class RungStatus:
    """What is known of one rung while the job runs."""

    rung: Rung
    encoder: str = ""
    state: str = "PENDING"
    progress: RungProgress = field(default_factory=RungProgress)
    encoded: EncodedRung | None = None
    published_at_s: float | None = None
    bandwidth: int = 0
    average_bandwidth: int = 0


class Job:
    """A transcode of ``source`` into an HLS ladder in ``out_dir``.

    ``on_event`` is called for every event, from the job's threads, one call at a time.
    """

    def __init__(self, source: str | Path, out_dir: str | Path,
                 options: TranscodeOptions | None = None,
                 on_event: Callable[[JobEvent], None] | None = None) -> None:
        self.source = Path(source)
        self.out_dir = Path(out_dir)
        self.options = options or TranscodeOptions()
        self.on_event = on_event
        self.state = JobState.QUEUED
        self.events: list[JobEvent] = []
        self.rungs: list[RungStatus] = []
        self.error: RungsError | None = None
        self.decode_stats: DecodeStats | None = None
        self.decode_progress = DecodeProgress()
        #: What of the source the output leaves out (see :func:`source_notes`), once decoded.
        self.notes: list[str] = []
        #: What the subtitle pass found, once the publisher has its tracks (None until then,
        #: and for a source with no subtitle track).
        self.subtitles: SubtitleScan | None = None
        self._subtitles_lock = threading.Lock()
        self.source_frames = 0
        self.decoder = ""
        self.time_to_ready_s: float | None = None
        self.total_s: float | None = None
        self._frames_total = 0
        self._stop = threading.Event()
        self._ticker_stop = threading.Event()
        self._poster_written = threading.Event()
        self._publisher: Publisher | None = None
        self._results: list[EncodedRung | BaseException | None] = []
        self._cancel_requested = False
        # Reentrant: a state change and its event are made together under it.
        self._emit_lock = threading.RLock()
        self._started = 0.0
        self._thread: threading.Thread | None = None
        #: The pipeline's threads (the rungs', the progress ticker), joined when it ends.
        self._threads: list[threading.Thread] = []
        #: This job made the output directory (it did not exist), so it removes it again if it
        #: ends with nothing in it.
        self._created_output = False
        #: The output folder is this job's (see :meth:`_prepare_output`), held by this lock.
        self._output_taken = False
        self._output_lock: int | None = None
        self._watch = DecoderWatch()
        self._emit("queued")

    # -- control ------------------------------------------------------------------------------

    def start(self) -> None:
        """Run the job on a thread of its own. A job runs once: starting or running it while it
        runs raises RuntimeError (a second run found the first one's output, failed, and
        deleted it); once it has ended, nothing happens."""
        if self._claim():
            self._thread = threading.Thread(target=self._run_watched,
                                            name=f"job-{self.source.name}", daemon=True)
            self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a started job to end; True when it has."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return self.state.terminal

    def cancel(self) -> None:
        """Stop the job from any thread; published rungs stay valid.

        A job that has not started yet ends CANCELLED at once and never runs.
        """
        self._cancel_requested = True
        self._stop.set()
        if self._started:
            return  # The job's threads see the stop and end it (never block a listener here).
        with self._emit_lock:
            if self.state == JobState.QUEUED and not self._started:
                self._set_state(JobState.CANCELLED, "cancelled",
                                {"code": JobCancelledError.code, "message": "cancelled"})

    # -- the pipeline -------------------------------------------------------------------------

    def run(self) -> JobState:
        """Run the whole job; returns the final state (never raises :class:`RungsError`: a
        failure is the FAILED state and ``error``).

        The job's own thread does the work while this one waits for it, watching the decoder:
        one stuck inside FFmpeg ends the job FAILED here, and the stuck thread is left behind
        (see engine.stall). Waiting in Python also lets the main thread take signals.
        Like :meth:`start`, it runs a job once.
        """
        if not self._claim():
            return self.state  # cancelled before it started, or run before
        return self._run_watched()

    def _claim(self) -> bool:
        """Mark the job started; False when it has ended already."""
        with self._emit_lock:
            if self.state.terminal:
                return False
            if self._started:
                raise RuntimeError(f"job {self.source.name!r} is already running")
            self._started = time.monotonic()
            return True

    def _run_watched(self) -> JobState:
        try:
            return run_watched(self._run, self._watch, self.source.name)
        except InvalidSourceError as exc:  # only the watch raises: _run ends every failure
            self._abandon(exc)
            return self.state
        except BaseException:  # a KeyboardInterrupt while waiting: the job's thread stops too
            self.cancel()
            raise

    def _run(self) -> JobState:
        map_large_blocks()
        threads = self._threads
        try:
            self.options.check()  # first: the publisher's target duration needs a sane length
            publisher = self._publisher = Publisher(self.out_dir, self.options.segment_seconds)
            self._set_state(JobState.RUNNING, "running", {"source": str(self.source)})
            if self._stop.is_set():
                raise JobCancelledError("cancelled before it started")
            decoder = choose_decoder(self.options.hwaccel)
            with open_source(self.source, max_pixels=self.options.max_pixels,
                             max_duration_s=self.options.max_duration_s,
                             hwaccel=decoder, watch=self._watch) as source:
                self.decoder = source.info.decoder
                rungs = plan_ladder(source.info, self.options.ladder)
                encoder = choose_encoder(self.options.encoder)
                self.rungs = [RungStatus(r, encoder) for r in rungs]
                self._prepare_output()
                scratch = self.options.scratch_dir or Path(tempfile.gettempdir())
                self._run_pipeline(source, rungs, scratch, publisher, threads)
            self.total_s = self._elapsed()
            self._set_state(JobState.COMPLETE, "complete", self.summary())
        except BaseException as exc:  # every failure ends the job cleanly
            self._stop.set()
            for thread in threads:
                thread.join()
            self._fail(exc)
            if not isinstance(exc, Exception):
                raise
            _drop_tracebacks(exc)  # see the finally clause
        finally:
            if self._output_lock is not None:
                os.close(self._output_lock)  # after the cleanup: the folder is done with
                self._output_lock = None
            # A finished job keeps its errors, not the frames they were raised in: those hold
            # the encoders (x264's threads) and, through the fan-out, the decoder.
            for error in (*self._rung_errors(), self.error):
                _drop_tracebacks(error)
        return self.state

    def _run_pipeline(self, source: OpenSource, rungs: list[Rung], scratch: Path,
                      publisher: Publisher, threads: list[threading.Thread]) -> None:
        info = source.info
        segment = segment_length(self.options.segment_seconds)
        schedule = KeyframeSchedule(segment, MAX_FRAME_RATE, info.frame_rate)
        self.source_frames = info.declared_frames
        self._frames_total = info.declared_frames or round(info.duration_s * float(info.frame_rate))
        if schedule.on_grid:  # the frames the cap keeps
            self._frames_total = math.ceil(self._frames_total * schedule.rate / info.frame_rate)
        spill = self.options.spill_bytes
        if spill is None:
            spill = shutil.disk_usage(scratch).free // 2
        # An HDR source's frames stay 10-bit for the rungs to map (engine.tonemap): twice the
        # room of 8-bit ones in the cache. Where they would not all fit, the later rungs would
        # go at once (60 s of 4K PQ with 29 GB of disk: a peak RSS of 2.3 GB), so the decoder
        # maps them at the source's size instead, and the cache holds 8 bits, as for SDR.
        cache_format = frame_format(info.colour)
        map_to_sdr = info.colour.hdr and len(rungs) > 1 and not FrameCache.holds(
            self._frames_total, info.width, info.height, cache_format, self.options.cache_bytes,
            spill)
        if map_to_sdr:
            cache_format = PIXEL_FORMAT
        # The colour the rungs and the poster get their frames in.
        colour = mapped_as(info.colour) if map_to_sdr else info.colour
        fanout = FanOut(len(rungs), info.width, info.height, self.options.cache_bytes, scratch,
                        self._stop, spill, take_turns=not self.options.rungs_at_once,
                        expected_frames=self._frames_total, pixel_format=cache_format)
        results = self._results = [None] * len(rungs)
        time_base = schedule.timeline_time_base(video_time_base(source))
        settings = EncodeSettings(segment, self.options.segment_type, time_base,
                                  info.orientation, colour=colour)
        # The video's declared length, and the sound the decode leads its first picture in with.
        length = info.duration_s + float(sound_lead(source)) if info.duration_s else math.inf
        audio: list[AudioEncoder] = []
        try:
            for number, track in enumerate(info.audio_tracks, 1):
                audio.append(AudioEncoder(
                    self.out_dir, segment, self.options.segment_type, self.options.audio,
                    length, self._stop, track.language, audio_folder(number), track.name))
        except BaseException:
            for encoder in audio:
                encoder.abort()
            raise
        poster = PosterPicker(rungs[0], info.orientation, info.duration_s, colour)
        subtitles = SubtitleReader(info.path, self._stop) if info.subtitle_streams else None
        if subtitles is not None:
            # Up to the video's declared length, else the longest a job takes.
            publisher.expect_subtitles(min(length, self.options.max_duration_s))
        early = (functools.partial(self._lead_segment_closed, publisher, audio, subtitles)
                 if self.options.early_playback else None)
        try:
            for index, status in enumerate(self.rungs):
                rung_settings = dataclasses.replace(
                    settings,
                    nice=rung_nice(index, len(self.rungs), self.options.background_nice,
                                   self.options.rungs_at_once),
                    threads=encoder_threads(index == 0, status.rung, info.width * info.height))
                thread = threading.Thread(
                    target=self._rung_thread, name=f"rung-{status.rung.name}", daemon=True,
                    args=(index, fanout, rung_settings, results, early if index == 0 else None))
                threads.append(thread)
                thread.start()
            ticker = threading.Thread(target=self._progress_ticker, name="progress", daemon=True)
            threads.append(ticker)
            ticker.start()
            if subtitles is not None:
                threads.append(subtitles.thread)
                subtitles.start()

            try:
                self.decode_stats = self._decode(source, schedule, fanout, poster, publisher,
                                                 map_to_sdr,
                                                 audio)
            except BaseException as exc:
                fanout.finish(exc)
                raise
            fanout.finish()
            source.close()  # the decoder's threads and frames are not needed any more
            trim()
            self._frames_total = self.decode_stats.frames_kept
            # The frames the source shows: an edit list's hidden frames are in both counts (and
            # a damaged header can declare fewer frames than it holds).
            self.source_frames = (max(info.declared_frames, self.decode_stats.video_packets)
                                  - self.decode_stats.hidden_packets)
            for encoder in audio:
                publisher.set_audio(encoder.close(float(self.decode_stats.end_s)))
            self._take_subtitles(publisher, subtitles, wait=True)
            self.notes = source_notes(info, self.decode_stats, audio, self.subtitles,
                                      schedule.rate)
            if not self._poster_written.is_set():
                self._write_poster(publisher, poster.finish())

            frame_rate = highest_frame_rate(rungs[0].frame_rate,
                                            self.decode_stats.peak_frame_rate)
            for index, status in enumerate(self.rungs):
                threads[index].join()
                result = results[index]
                if isinstance(result, BaseException):
                    raise result
                assert result is not None
                # A rung that finished encoding before a cancel must not be published after it:
                # cancel means no further publication, not only no further encoding.
                if self._cancel_requested:
                    raise JobCancelledError(f"cancelled before {status.rung.name} was published")
                self._publish(publisher, status, result, frame_rate)
        finally:
            self._ticker_stop.set()
            if self._stop.is_set():
                for thread in threads:
                    thread.join()
            fanout.close()
            for encoder in audio:
                encoder.abort()  # on a failure at any point; once it is closed, a no-op

    def _decode(self, source: OpenSource, schedule: KeyframeSchedule, fanout: FanOut,
                poster: PosterPicker, publisher: Publisher, map_to_sdr: bool,
                audio: list[AudioEncoder]) -> DecodeStats:
        def on_video(frame: av.video.frame.VideoFrame, when: FrameTime) -> None:
            # The poster first, before any other thread has the frame: PyAV's reformatter
            # sets the colour fields of the frame it scales and restores them after, so two
            # threads scaling one frame at once can read each other's. Handed to the rungs
            # first, an HDR source's poster (8-bit cache) came out too bright in a CI run.
            if not poster.done and poster.offer(frame, when):
                self._write_poster(publisher, poster.finish())
            fanout.put(frame, when)

        return decode_source(source, schedule, on_video, [a.push for a in audio], self._stop,
                             self.options.max_duration_s,
                             on_sound_start=[a.lead_in for a in audio],
                             progress=self.decode_progress, map_to_sdr=map_to_sdr,
                             sound_end=functools.partial(AudioEncoder.sound_end, audio))

    def _write_poster(self, publisher: Publisher, jpeg: bytes) -> None:
        path = publisher.write_poster(jpeg)
        self._poster_written.set()
        self._emit("poster_ready", {"path": str(path)})

    def _take_subtitles(self, publisher: Publisher, reader: SubtitleReader | None,
                        wait: bool) -> None:
        """Give the publisher the subtitle pass's tracks once it is over, timed from the first
        picture (placed by then: the first segment has closed, or decoding is done). Without
        ``wait``, only if the pass is over and no other thread is at it: the first rung's
        encoder must not wait for it."""
        if reader is None or not self._subtitles_lock.acquire(blocking=wait):
            return
        try:
            if self.subtitles is not None or not (wait or reader.done()):
                return
            scan = reader.result()
            empty, scan.cues_too_large = publisher.set_subtitles(
                scan.tracks, self.decode_progress.origin_s or 0.0)
            scan.empty_tracks += empty
            self.subtitles = scan
        finally:
            self._subtitles_lock.release()

    def _lead_segment_closed(self, publisher: Publisher, audio: list[AudioEncoder],
                             subtitles: SubtitleReader | None, segments: list[SegmentRecord],
                             codecs: str, captions: frozenset[str]) -> None:
        """Early playback, on the first rung's thread: list the rung as each segment closes;
        the first listing makes the job READY. Waits for the poster (READY promises one) and,
        up to ``SUBTITLE_WAIT_S``, for the subtitles (players read the first master playlist
        only), and lists nothing once the job is stopping."""
        if self._stop.is_set() or not self._poster_written.is_set():
            return
        self._take_subtitles(publisher, subtitles, wait=False)
        if subtitles is not None and self.subtitles is None \
                and self._elapsed() >= SUBTITLE_WAIT_S:
            publisher.stop_waiting()
        rung = self.rungs[0].rung
        progress = [encoder.progress() for encoder in audio]
        with self._emit_lock:
            if not publisher.publish_early(rung, segments, codecs, captions, rung.frame_rate,
                                           progress):
                return
            self.time_to_ready_s = self._elapsed()
            master = str(publisher.master_path)
            self._emit("first_segment", {"rung": rung.name, "master": master,
                                         "segment_seconds": segments[0].duration_s,
                                         "ready": True})
            self._set_state(JobState.READY, "ready",
                            {"master": master, "rung": rung.name, "early_playback": True})

    def _rung_thread(self, index: int, fanout: FanOut, settings: EncodeSettings,
                     results: list[EncodedRung | BaseException | None],
                     early: Callable[[list[SegmentRecord], str, frozenset[str]], None] | None,
                     ) -> None:
        status = self.rungs[index]
        status.state = "ENCODING"
        try:
            results[index] = encode_rung(
                status.rung, status.encoder, fanout.reader(index), self.out_dir, settings,
                self._stop, status.progress, fallback_encoder(status.encoder),
                self._on_fallback, early)
        except BaseException as exc:  # handed to the job thread
            results[index] = exc
            self._stop.set()
        trim()  # what the encoder freed, before the next rung opens its own
        fanout.done(index)

    def _on_fallback(self, fallback: Fallback) -> None:
        for status in self.rungs:
            if status.rung.name == fallback.rung:
                status.encoder = fallback.encoder
        self._emit("encoder_fallback", {
            "rung": fallback.rung, "failed": fallback.failed, "encoder": fallback.encoder,
            "segment": fallback.segment, "reason": fallback.reason})

    def _publish(self, publisher: Publisher, status: RungStatus, encoded: EncodedRung,
                 frame_rate: Fraction) -> None:
        variant = publisher.publish(encoded, frame_rate)
        fps = encoded.frames / encoded.encode_seconds if encoded.encode_seconds else 0.0
        # Under the emit lock, so no progress event reports the rung published before this one.
        with self._emit_lock:
            status.encoded = encoded
            status.state = "PUBLISHED"
            status.published_at_s = self._elapsed()
            status.bandwidth = variant.bandwidth
            status.average_bandwidth = variant.average_bandwidth
            self._emit("rung_published", {
                "rung": encoded.rung.name, "width": encoded.rung.width,
                "height": encoded.rung.height, "encoder": encoded.encoder,
                "bandwidth": variant.bandwidth, "average_bandwidth": variant.average_bandwidth,
                "codecs": variant.codecs, "frames": encoded.frames, "encode_fps": round(fps, 2),
                "master": str(publisher.master_path),
            })
            if self.state == JobState.RUNNING:
                self.time_to_ready_s = self._elapsed()
                self._set_state(JobState.READY, "ready", {"master": str(publisher.master_path),
                                                          "rung": encoded.rung.name})

    def _progress_ticker(self) -> None:
        while not self._ticker_stop.wait(1 / PROGRESS_HZ):
            if self._stop.is_set():
                return
            with self._emit_lock:
                self._emit("progress", {"rungs": [
                    {"rung": s.rung.name, "frames_done": s.progress.frames_done,
                     "frames_total": self._frames_total, "state": s.state}
                    for s in self.rungs
                ]})

    # -- ends, events, cleanup ----------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """The figures of a finished job (also the CLI's ``summary`` event)."""
        return {
            "time_to_ready_s": _round(self.time_to_ready_s),
            "total_s": _round(self.total_s),
            "frames_decoded": self.decode_progress.frames_decoded,
            "decoder": self.decoder,
            "source_frames": self.source_frames,
            "notes": list(self.notes),
            "audio": [
                {"name": a.name, "language": a.language, "channels": a.channels,
                 "playlist": str(self.out_dir / a.uri)}
                for a in (self._publisher.audio if self._publisher else [])
            ],
            "subtitles": [
                {"name": t.name, "language": t.language, "default": t.default,
                 "forced": t.forced, "playlist": str(self.out_dir / t.uri)}
                for t in (self._publisher.subtitles if self._publisher else [])
            ],
            # The CEA-608 channels the master declares (carried in the pictures, not files).
            "closed_captions": sorted({
                c for v in (self._publisher.variants if self._publisher else [])
                for c in v.captions}),
            "rungs": [
                {"rung": s.rung.name, "width": s.rung.width, "height": s.rung.height,
                 "encoder": s.encoder, "state": s.state,
                 "published_at_s": _round(s.published_at_s),
                 "encode_fps": _round(s.encoded.frames / s.encoded.encode_seconds
                                      if s.encoded and s.encoded.encode_seconds else None),
                 "bandwidth": s.bandwidth, "average_bandwidth": s.average_bandwidth}
                for s in self.rungs
            ],
        }

    def _abandon(self, exc: InvalidSourceError) -> None:
        """The job's thread is stuck in the decoder: end the job from this one. The rungs'
        threads stop as they do for any failure; the stuck thread keeps the source (closing it
        would wait for the decoder too)."""
        log.error("%s; leaving its thread behind", exc.message)
        self._stop.set()
        self._ticker_stop.set()
        for thread in list(self._threads):
            thread.join(_ABANDON_JOIN_S)
        self._fail(exc)
        _drop_tracebacks(exc)

    def _fail(self, exc: BaseException) -> None:
        if self.state.terminal:
            return  # ended already: by the watch, while this thread was stuck in the decoder
        rung_errors = [r for r in self._rung_errors() if not isinstance(r, JobCancelledError)]
        if isinstance(exc, JobCancelledError) and rung_errors:
            exc = rung_errors[0]
        # A source found invalid part way (an index promising frames the file does not hold)
        # is refused like one found invalid at the start: nothing of it stays published.
        try:
            self._remove_unpublished(withdraw=isinstance(exc, InvalidSourceError))
        except OSError as cleanup:  # the job still ends, with its own error, not this one
            log.warning("cannot clean up %s: %s", self.out_dir, cleanup)
        self.total_s = self._elapsed()
        if isinstance(exc, JobCancelledError) and self._cancel_requested:
            self._set_state(JobState.CANCELLED, "cancelled", {"code": exc.code,
                                                              "message": "cancelled"})
            return
        error = exc if isinstance(exc, RungsError) else _unexpected(exc)
        self.error = error
        self._set_state(JobState.FAILED, "failed", {"code": error.code, "message": error.message})

    def _rung_errors(self) -> list[BaseException]:
        return [r for r in self._results if isinstance(r, BaseException)]

    def _prepare_output(self) -> None:
        out = self.out_dir
        keep = [self.source, *([self.options.scratch_dir] if self.options.scratch_dir else [])]
        check_output_dir(out, self.options.overwrite, keep)
        try:
            out.mkdir(parents=True)
            created = True
        except FileExistsError:
            created = False
        except OSError as exc:
            raise output_dir_error(out, exc) from exc
        self._output_lock = lock_output_dir(out)
        # Only now is the folder this job's to clean up, or to remove if it made it.
        self._output_taken, self._created_output = True, created
        check_output_dir(out, self.options.overwrite, keep)  # again: its last holder filled it?
        for child in out.iterdir():  # anything here is to be replaced (checked above)
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def _remove_unpublished(self, withdraw: bool = False) -> None:
        """Delete what no playlist lists, so nothing half-written is left behind. A rung listed
        early keeps the segments its (now ended) playlist lists; with ``withdraw``, nothing is
        kept."""
        if not self._output_taken:
            return  # refused before it took the folder: what is there is another job's
        listed: list[str] = []  # rendition folders whose early playlists were ended
        if self._publisher is not None and not withdraw:
            try:
                listed = self._publisher.end_early()
            except OutputWriteError as exc:
                # The disk that failed the job cannot take the ended playlists either.
                log.warning("cannot end the early playlists, withdrawing the master: %s", exc)
                withdraw = True
        if self._publisher is not None and withdraw:
            self._publisher.withdraw()
        kept = {s.rung.name for s in self.rungs
                if s.rung.name in listed or (s.state == "PUBLISHED" and not withdraw)}
        for status in self.rungs:
            if status.rung.name in listed:
                _keep_listed(self.out_dir / status.rung.name)
            elif status.rung.name not in kept:
                shutil.rmtree(self.out_dir / status.rung.name, ignore_errors=True)
        for name in listed:
            if AUDIO_FOLDERS.fullmatch(name):
                _keep_listed(self.out_dir / name)
        # Subtitles are written whole before a master lists them (or never, after a failure).
        listed_subtitles = (self._publisher.listed_subtitle_folders
                            if self._publisher is not None and kept else set())
        for folder in self.out_dir.glob(f"{SUBTITLES_FOLDER}*"):
            if folder.name not in listed_subtitles:
                shutil.rmtree(folder, ignore_errors=True)
        if not kept:
            for sound in self.out_dir.glob(f"{AUDIO_FOLDER}*"):
                if AUDIO_FOLDERS.fullmatch(sound.name):
                    shutil.rmtree(sound, ignore_errors=True)
            (self.out_dir / POSTER).unlink(missing_ok=True)
            if self._created_output:
                with contextlib.suppress(OSError):  # not empty: someone else's files
                    self.out_dir.rmdir()

    def _elapsed(self) -> float:
        return time.monotonic() - self._started if self._started else 0.0

    def _set_state(self, state: JobState, event: str, data: Mapping[str, Any]) -> None:
        # Under the event lock, so that no other event (a progress tick) carries the new state
        # before its own event does: a listener takes the first terminal state for the end.
        with self._emit_lock:
            if self.state.terminal:
                return  # a job ends once (a thread left stuck in the decoder may come back)
            self.state = state
            self._emit(event, data)

    def _emit(self, event_type: str, data: Mapping[str, Any] | None = None) -> None:
        with self._emit_lock:
            event = JobEvent(event_type, self.state, self._elapsed(), dict(data or {}))
            self.events.append(event)
            if self.on_event is not None:
                try:
                    self.on_event(event)
                except Exception:  # a listener must not break the job
                    log.exception("event listener failed")


def source_notes(info: SourceInfo, stats: DecodeStats, audio: Sequence[AudioEncoder],
                 subtitles: SubtitleScan | None = None,
                 frame_rate_cap: Fraction = MAX_FRAME_RATE) -> list[str]:
    """What of the source a complete job's output leaves out or adds, in a line each for its
    user: an output without the source's sound, or with damaged packets left out, must not
    pass for the whole source without a word, nor one longer than its picture or its sound."""
    notes = []
    silent = [encoder for encoder in audio if not encoder.sound_frames]
    if info.audio_streams and not audio:
        notes.append("the source's audio is in a format FFmpeg cannot decode: the output has "
                     "no sound")
    elif audio and len(silent) == len(audio):
        notes.append("all of the source's sound comes before its first picture: the output has "
                     "no sound" if audio[0].early_frames else
                     "the source's audio track holds no sound that decodes: the output has no "
                     "sound")
    else:
        notes += [f"audio track {encoder.name!r} "
                  + ("has all of its sound before the first picture" if encoder.early_frames
                     else "holds no sound that decodes")
                  for encoder in silent]
    if audio and info.audio_undecodable:
        notes.append(f"{_count(info.audio_undecodable, 'audio track')} in a format FFmpeg "
                     "cannot decode not kept")
    if info.audio_elsewhere:
        notes.append(f"{_count(info.audio_elsewhere, 'audio track')} of the source's other "
                     "programmes not kept")
    if over := info.audio_streams - info.audio_undecodable - info.audio_elsewhere - len(audio):
        notes.append(f"{_count(over, 'audio track')} beyond the first {MAX_AUDIO_TRACKS} not "
                     "kept")
    if info.colour.hdr:
        notes.append(f"the source is HDR ({info.colour.dynamic_range}): the output is SDR "
                     "(BT.709), its highlights compressed")
    if info.incredible_sample_aspect is not None:
        sar = info.incredible_sample_aspect
        notes.append(f"the source declares a sample aspect ratio of {sar.numerator}:"
                     f"{sar.denominator}, which is not believed: its pixels are taken as square")
    if info.odd_turn is not None:
        notes.append(f"the source asks to be shown turned {info.odd_turn} degrees clockwise, "
                     "which is not a quarter turn: that turn is not made")
    if info.video_streams > 1:
        notes.append(f"the source has {info.video_streams} video streams: only one is kept "
                     "(the one flagged default, else the largest)")
    if subtitles is not None:
        notes += _subtitle_notes(subtitles)
    if stats.frames_over_cap:
        notes.append(f"{_count(stats.frames_over_cap, 'frame')} of the source left out: the output "
                     f"runs at {_rate(frame_rate_cap)} fps at most")
    if stats.held_for_sound_s:
        notes.append(f"the sound goes on {float(stats.held_for_sound_s):.1f} s past the last "
                     "picture, which is shown until the sound ends")
    notes += [f"audio track {encoder.name!r} ends {encoder.silence_after_s:.1f} s before the "
              "picture: silence to its end" for encoder in audio
              if encoder.sound_frames and encoder.silence_after_s > MAX_FRAME_INTERVAL_S]
    if stats.bad_packets:
        notes.append(f"{_count(stats.bad_packets, 'damaged video packet')} left out")
    if skipped := sum(encoder.skipped_frames for encoder in audio):
        notes.append(f"{_count(skipped, 'damaged audio frame')} left out")
    if damaged := sum(encoder.damaged_samples for encoder in audio):
        notes.append(f"{_count(damaged, 'damaged audio sample')} silenced (not a number, or "
                     "far out of range)")
    return notes


def _subtitle_notes(scan: SubtitleScan) -> list[str]:
    notes = []
    if scan.failure is not None:
        notes.append(f"the source's subtitle tracks could not be read ({scan.failure}): none is "
                     "kept")
    if scan.picture_tracks:
        notes.append(f"{_count(scan.picture_tracks, 'subtitle track')} not in text (DVD, Blu-ray "
                     "or DVB pictures, teletext) not kept: the output's subtitles are text")
    if scan.tracks_over:
        notes.append(f"{_count(scan.tracks_over, 'subtitle track')} beyond the first "
                     f"{MAX_TRACKS} not kept")
    notes += [f"subtitle track {name!r} shows no text during the video: not kept"
              for name in scan.empty_tracks]
    if scan.damaged_cues:
        notes.append(f"{_count(scan.damaged_cues, 'damaged subtitle cue')} left out")
    if scan.cues_over:
        notes.append(f"{_count(scan.cues_over, 'subtitle cue')} beyond the first "
                     f"{MAX_CUES:,} left out")
    if scan.cues_too_large:
        notes.append(f"{_count(scan.cues_too_large, 'subtitle cue')} left out: a subtitle "
                     f"track's WebVTT is {MAX_TRACK_BYTES >> 20} MB at most")
    return notes


def _rate(rate: Fraction) -> str:
    return str(rate.numerator) if rate.denominator == 1 else f"{float(rate):.2f}"


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}{'' if number == 1 else 's'}"


def rung_nice(index: int, rungs: int, background: int, at_once: bool) -> int:
    """The nice increment of rung ``index`` of ``rungs``: the first at normal priority, the
    slower ones ``background`` lower; encoding at once, each a step lower than the one below
    it, up to ``background`` for the highest."""
    if index == 0:
        return 0
    if not at_once:
        return background
    return round(background * index / (rungs - 1))


def _keep_listed(folder: Path) -> None:
    keep_listed(folder, m3u8.loads((folder / MEDIA).read_text()))


def _drop_tracebacks(error: BaseException | None) -> None:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        error.__traceback__ = None
        if error.__cause__ is not None:
            _drop_tracebacks(error.__cause__)
        error = error.__context__


def _unexpected(exc: BaseException) -> RungsError:
    log.error("unexpected failure", exc_info=exc)
    return RungsError(f"internal error: {type(exc).__name__}: {exc}")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)

