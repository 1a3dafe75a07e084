import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    QUEUED: _ClassVar[JobState]
    RUNNING: _ClassVar[JobState]
    READY: _ClassVar[JobState]
    COMPLETE: _ClassVar[JobState]
    FAILED: _ClassVar[JobState]
    CANCELLED: _ClassVar[JobState]

class RungState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUNG_STATE_UNSPECIFIED: _ClassVar[RungState]
    PENDING: _ClassVar[RungState]
    ENCODING: _ClassVar[RungState]
    PUBLISHED: _ClassVar[RungState]

class SegmentType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEGMENT_TYPE_UNSPECIFIED: _ClassVar[SegmentType]
    FMP4: _ClassVar[SegmentType]
    MPEGTS: _ClassVar[SegmentType]
JOB_STATE_UNSPECIFIED: JobState
QUEUED: JobState
RUNNING: JobState
READY: JobState
COMPLETE: JobState
FAILED: JobState
CANCELLED: JobState
RUNG_STATE_UNSPECIFIED: RungState
PENDING: RungState
ENCODING: RungState
PUBLISHED: RungState
SEGMENT_TYPE_UNSPECIFIED: SegmentType
FMP4: SegmentType
MPEGTS: SegmentType

class TranscodeOptions(_message.Message):
    __slots__ = ("ladder", "encoder", "segment_seconds", "segment_type", "overwrite", "early_playback")
    LADDER_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    EARLY_PLAYBACK_FIELD_NUMBER: _ClassVar[int]
    ladder: _containers.RepeatedScalarFieldContainer[int]
    encoder: str
    segment_seconds: float
    segment_type: SegmentType
    overwrite: bool
    early_playback: bool
    def __init__(self, ladder: _Optional[_Iterable[int]] = ..., encoder: _Optional[str] = ..., segment_seconds: _Optional[float] = ..., segment_type: _Optional[_Union[SegmentType, str]] = ..., overwrite: _Optional[bool] = ..., early_playback: _Optional[bool] = ...) -> None: ...

class TranscodeRequest(_message.Message):
    __slots__ = ("source", "output", "options", "request_id")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    source: str
    output: str
    options: TranscodeOptions
    request_id: str
    def __init__(self, source: _Optional[str] = ..., output: _Optional[str] = ..., options: _Optional[_Union[TranscodeOptions, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("job_id", "after_sequence")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_sequence: int
    def __init__(self, job_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "states")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    states: _containers.RepeatedScalarFieldContainer[JobState]
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., states: _Optional[_Iterable[_Union[JobState, str]]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Rung(_message.Message):
    __slots__ = ("name", "width", "height", "state", "frames_done", "frames_total", "encoder", "bandwidth", "average_bandwidth", "published_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DONE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_BANDWIDTH_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    width: int
    height: int
    state: RungState
    frames_done: int
    frames_total: int
    encoder: str
    bandwidth: int
    average_bandwidth: int
    published_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., state: _Optional[_Union[RungState, str]] = ..., frames_done: _Optional[int] = ..., frames_total: _Optional[int] = ..., encoder: _Optional[str] = ..., bandwidth: _Optional[int] = ..., average_bandwidth: _Optional[int] = ..., published_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "state", "source", "output", "options", "request_id", "rungs", "master_playlist", "poster", "created_at", "started_at", "ready_at", "completed_at", "ended_at", "frames_decoded", "source_frames", "error", "last_sequence", "notes", "subtitles", "audio", "closed_captions")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RUNGS_FIELD_NUMBER: _ClassVar[int]
    MASTER_PLAYLIST_FIELD_NUMBER: _ClassVar[int]
    POSTER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    READY_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DECODED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FRAMES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    SUBTITLES_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    CLOSED_CAPTIONS_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: JobState
    source: str
    output: str
    options: TranscodeOptions
    request_id: str
    rungs: _containers.RepeatedCompositeFieldContainer[Rung]
    master_playlist: str
    poster: str
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    ready_at: _timestamp_pb2.Timestamp
    completed_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    frames_decoded: int
    source_frames: int
    error: Error
    last_sequence: int
    notes: _containers.RepeatedScalarFieldContainer[str]
    subtitles: _containers.RepeatedCompositeFieldContainer[SubtitleTrack]
    audio: _containers.RepeatedCompositeFieldContainer[AudioTrack]
    closed_captions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., source: _Optional[str] = ..., output: _Optional[str] = ..., options: _Optional[_Union[TranscodeOptions, _Mapping]] = ..., request_id: _Optional[str] = ..., rungs: _Optional[_Iterable[_Union[Rung, _Mapping]]] = ..., master_playlist: _Optional[str] = ..., poster: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ready_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., frames_decoded: _Optional[int] = ..., source_frames: _Optional[int] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., last_sequence: _Optional[int] = ..., notes: _Optional[_Iterable[str]] = ..., subtitles: _Optional[_Iterable[_Union[SubtitleTrack, _Mapping]]] = ..., audio: _Optional[_Iterable[_Union[AudioTrack, _Mapping]]] = ..., closed_captions: _Optional[_Iterable[str]] = ...) -> None: ...

class AudioTrack(_message.Message):
    __slots__ = ("name", "language", "channels", "playlist")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    PLAYLIST_FIELD_NUMBER: _ClassVar[int]
    name: str
    language: str
    channels: int
    playlist: str
    def __init__(self, name: _Optional[str] = ..., language: _Optional[str] = ..., channels: _Optional[int] = ..., playlist: _Optional[str] = ...) -> None: ...

class SubtitleTrack(_message.Message):
    __slots__ = ("name", "language", "default", "forced", "playlist")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    PLAYLIST_FIELD_NUMBER: _ClassVar[int]
    name: str
    language: str
    default: bool
    forced: bool
    playlist: str
    def __init__(self, name: _Optional[str] = ..., language: _Optional[str] = ..., default: _Optional[bool] = ..., forced: _Optional[bool] = ..., playlist: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "sequence", "time", "state", "elapsed_seconds", "queued", "running", "poster_ready", "progress", "rung_published", "ready", "complete", "failed", "cancelled", "first_segment", "encoder_fallback")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    POSTER_READY_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RUNG_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    sequence: int
    time: _timestamp_pb2.Timestamp
    state: JobState
    elapsed_seconds: float
    queued: QueuedEvent
    running: RunningEvent
    poster_ready: PosterReadyEvent
    progress: ProgressEvent
    rung_published: RungPublishedEvent
    ready: ReadyEvent
    complete: CompleteEvent
    failed: FailedEvent
    cancelled: CancelledEvent
    first_segment: FirstSegmentEvent
    encoder_fallback: EncoderFallbackEvent
    def __init__(self, job_id: _Optional[str] = ..., sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., elapsed_seconds: _Optional[float] = ..., queued: _Optional[_Union[QueuedEvent, _Mapping]] = ..., running: _Optional[_Union[RunningEvent, _Mapping]] = ..., poster_ready: _Optional[_Union[PosterReadyEvent, _Mapping]] = ..., progress: _Optional[_Union[ProgressEvent, _Mapping]] = ..., rung_published: _Optional[_Union[RungPublishedEvent, _Mapping]] = ..., ready: _Optional[_Union[ReadyEvent, _Mapping]] = ..., complete: _Optional[_Union[CompleteEvent, _Mapping]] = ..., failed: _Optional[_Union[FailedEvent, _Mapping]] = ..., cancelled: _Optional[_Union[CancelledEvent, _Mapping]] = ..., first_segment: _Optional[_Union[FirstSegmentEvent, _Mapping]] = ..., encoder_fallback: _Optional[_Union[EncoderFallbackEvent, _Mapping]] = ...) -> None: ...

class QueuedEvent(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RunningEvent(_message.Message):
    __slots__ = ("source",)
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    source: str
    def __init__(self, source: _Optional[str] = ...) -> None: ...

class PosterReadyEvent(_message.Message):
    __slots__ = ("poster",)
    POSTER_FIELD_NUMBER: _ClassVar[int]
    poster: str
    def __init__(self, poster: _Optional[str] = ...) -> None: ...

class RungProgress(_message.Message):
    __slots__ = ("rung", "frames_done", "frames_total", "state")
    RUNG_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DONE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    rung: str
    frames_done: int
    frames_total: int
    state: RungState
    def __init__(self, rung: _Optional[str] = ..., frames_done: _Optional[int] = ..., frames_total: _Optional[int] = ..., state: _Optional[_Union[RungState, str]] = ...) -> None: ...

class ProgressEvent(_message.Message):
    __slots__ = ("rungs",)
    RUNGS_FIELD_NUMBER: _ClassVar[int]
    rungs: _containers.RepeatedCompositeFieldContainer[RungProgress]
    def __init__(self, rungs: _Optional[_Iterable[_Union[RungProgress, _Mapping]]] = ...) -> None: ...

class RungPublishedEvent(_message.Message):
    __slots__ = ("rung", "width", "height", "encoder", "bandwidth", "average_bandwidth", "codecs", "frames", "encode_fps", "master_playlist")
    RUNG_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_BANDWIDTH_FIELD_NUMBER: _ClassVar[int]
    CODECS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    ENCODE_FPS_FIELD_NUMBER: _ClassVar[int]
    MASTER_PLAYLIST_FIELD_NUMBER: _ClassVar[int]
    rung: str
    width: int
    height: int
    encoder: str
    bandwidth: int
    average_bandwidth: int
    codecs: str
    frames: int
    encode_fps: float
    master_playlist: str
    def __init__(self, rung: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., encoder: _Optional[str] = ..., bandwidth: _Optional[int] = ..., average_bandwidth: _Optional[int] = ..., codecs: _Optional[str] = ..., frames: _Optional[int] = ..., encode_fps: _Optional[float] = ..., master_playlist: _Optional[str] = ...) -> None: ...

class ReadyEvent(_message.Message):
    __slots__ = ("master_playlist", "rung", "early_playback")
    MASTER_PLAYLIST_FIELD_NUMBER: _ClassVar[int]
    RUNG_FIELD_NUMBER: _ClassVar[int]
    EARLY_PLAYBACK_FIELD_NUMBER: _ClassVar[int]
    master_playlist: str
    rung: str
    early_playback: bool
    def __init__(self, master_playlist: _Optional[str] = ..., rung: _Optional[str] = ..., early_playback: _Optional[bool] = ...) -> None: ...

class FirstSegmentEvent(_message.Message):
    __slots__ = ("rung", "master_playlist", "segment_seconds")
    RUNG_FIELD_NUMBER: _ClassVar[int]
    MASTER_PLAYLIST_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    rung: str
    master_playlist: str
    segment_seconds: float
    def __init__(self, rung: _Optional[str] = ..., master_playlist: _Optional[str] = ..., segment_seconds: _Optional[float] = ...) -> None: ...

class EncoderFallbackEvent(_message.Message):
    __slots__ = ("rung", "failed", "encoder", "segment", "reason")
    RUNG_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    rung: str
    failed: str
    encoder: str
    segment: int
    reason: str
    def __init__(self, rung: _Optional[str] = ..., failed: _Optional[str] = ..., encoder: _Optional[str] = ..., segment: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class CompleteEvent(_message.Message):
    __slots__ = ("time_to_ready_seconds", "total_seconds", "frames_decoded", "source_frames", "notes", "subtitles", "audio", "closed_captions")
    TIME_TO_READY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DECODED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FRAMES_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    SUBTITLES_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    CLOSED_CAPTIONS_FIELD_NUMBER: _ClassVar[int]
    time_to_ready_seconds: float
    total_seconds: float
    frames_decoded: int
    source_frames: int
    notes: _containers.RepeatedScalarFieldContainer[str]
    subtitles: _containers.RepeatedCompositeFieldContainer[SubtitleTrack]
    audio: _containers.RepeatedCompositeFieldContainer[AudioTrack]
    closed_captions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, time_to_ready_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ..., frames_decoded: _Optional[int] = ..., source_frames: _Optional[int] = ..., notes: _Optional[_Iterable[str]] = ..., subtitles: _Optional[_Iterable[_Union[SubtitleTrack, _Mapping]]] = ..., audio: _Optional[_Iterable[_Union[AudioTrack, _Mapping]]] = ..., closed_captions: _Optional[_Iterable[str]] = ...) -> None: ...

class FailedEvent(_message.Message):
    __slots__ = ("error",)
    ERROR_FIELD_NUMBER: _ClassVar[int]
    error: Error
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class CancelledEvent(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...
