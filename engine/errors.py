"""The one error tree for everything a user of Rungs can be told.

Each error carries a stable ``code``, shown to users and stored with failed jobs. The CLI and the
gRPC service map these classes to exit codes and status codes in one place each; nothing else
in the engine imports gRPC.
"""

from __future__ import annotations


class RungsError(Exception):
    """Base of every error Rungs reports to a user."""

    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidSourceError(RungsError, ValueError):
    """The source is not a decodable video: empty, not media, no video stream, too large."""

    code = "INVALID_SOURCE"


class UnsupportedSourceError(InvalidSourceError):
    """The source is media, but of a kind Rungs refuses (codec, container, limits)."""

    code = "UNSUPPORTED_SOURCE"


class InvalidOptionsError(RungsError, ValueError):
    """Transcode options that cannot work (bad ladder, segment length, encoder name)."""

    code = "INVALID_OPTIONS"


class OutputExistsError(RungsError, FileExistsError):
    """The output directory exists and is not empty, and overwrite was not asked for; or a file
    stands where it, or one of its parents, should be."""

    code = "OUTPUT_EXISTS"


class EncoderError(RungsError):
    """An encoder failed to open or failed mid-stream."""

    code = "ENCODER_FAILED"


class OutputWriteError(RungsError, OSError):
    """Writing the output, or the frame cache's scratch file, failed (disk full, permissions)."""

    code = "OUTPUT_WRITE_FAILED"


class DecodeError(InvalidSourceError):
    """The source turned out too damaged to decode part way through: found while decoding,
    not by the probe, so it keeps a code of its own."""

    code = "DECODE_FAILED"


class JobCancelledError(RungsError):
    """The job was cancelled; raised inside pipeline threads to unwind them."""

    code = "CANCELLED"


# -- raised by the job service (engine.manager, engine.service) ----------------------------


class InvalidRequestError(RungsError, ValueError):
    """A request field that is missing or malformed (not a source or transcode option)."""

    code = "INVALID_REQUEST"


class JobNotFoundError(RungsError, LookupError):
    """No job has this id."""

    code = "JOB_NOT_FOUND"


class PathOutsideRootError(RungsError, PermissionError):
    """A source or output path that leads outside its root ('..', absolute, or a symlink)."""

    code = "PATH_OUTSIDE_ROOT"


class QueueFullError(RungsError):
    """As many jobs are waiting as the server queues."""

    code = "QUEUE_FULL"


class OutputInUseError(OutputExistsError):
    """Another queued or running job writes this output directory (or one inside or above it)."""

    code = "OUTPUT_IN_USE"


class RequestIdReusedError(RungsError):
    """A request_id already used by a request that asked for something else."""

    code = "REQUEST_ID_REUSED"


class ShuttingDownError(RungsError):
    """The server is stopping and takes no new jobs."""

    code = "SHUTTING_DOWN"


class DataDirInUseError(RungsError):
    """Another server process holds the data directory."""

    code = "DATA_DIR_IN_USE"


class TooManyWatchersError(RungsError):
    """Every thread the server keeps for Watch streams is streaming."""

    code = "TOO_MANY_WATCHERS"


def error_class(code: str) -> type[RungsError]:
    """The class whose errors carry ``code``; :class:`RungsError` for a code this version does
    not know (a newer server's, or one the service sets without raising, INTERRUPTED)."""
    pending: list[type[RungsError]] = [RungsError]
    while pending:
        cls = pending.pop()
        if cls.code == code:
            return cls
        pending.extend(cls.__subclasses__())
    return RungsError
