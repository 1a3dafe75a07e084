"""The ``rungs.v1.Transcoder`` gRPC service: RPCs in, :class:`~engine.manager.JobManager` calls,
and the one place errors become status codes (:func:`status_code`).

Every RPC answers with a status, never by taking the server down: a :class:`RungsError` becomes
its mapped code with the error's message as details and its ``code`` in the trailing metadata
``rungs-error-code``; anything else is logged and answered INTERNAL.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import NoReturn, TypeVar

import grpc

from engine.errors import (
    InvalidOptionsError,
    InvalidRequestError,
    InvalidSourceError,
    JobCancelledError,
    JobNotFoundError,
    OutputExistsError,
    PathOutsideRootError,
    QueueFullError,
    RequestIdReusedError,
    RungsError,
    ShuttingDownError,
    TooManyWatchersError,
)
from engine.manager import JobManager
from engine.rpc import transcoder_pb2 as pb

log = logging.getLogger(__name__)

#: Full name of the service, as reflection and health checks know it.
SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Transcoder"].full_name
#: Trailing metadata key holding the error's stable code (INVALID_SOURCE, QUEUE_FULL, ...).
ERROR_CODE_KEY = "rungs-error-code"

T = TypeVar("T")


def status_code(error: RungsError) -> grpc.StatusCode:
    """The gRPC status for ``error``: the one mapping from the error tree to status codes."""
    match error:
        case InvalidSourceError() | InvalidOptionsError() | InvalidRequestError():
            return grpc.StatusCode.INVALID_ARGUMENT
        case PathOutsideRootError():
            return grpc.StatusCode.PERMISSION_DENIED
        case JobNotFoundError():
            return grpc.StatusCode.NOT_FOUND
        case QueueFullError() | TooManyWatchersError():
            return grpc.StatusCode.RESOURCE_EXHAUSTED
        case OutputExistsError() | RequestIdReusedError():  # OutputInUseError included
            return grpc.StatusCode.ALREADY_EXISTS
        case ShuttingDownError():
            return grpc.StatusCode.UNAVAILABLE
        case JobCancelledError():
            return grpc.StatusCode.CANCELLED
        case _:
            return grpc.StatusCode.INTERNAL


class TranscoderService:
    """Implements ``rungs.v1.Transcoder`` (registered with ``add_TranscoderServicer_to_server``).

    Each Watch holds one of the server's worker threads while it streams; at most
    ``max_watchers`` run at once, so unary calls always find a thread.
    """

    def __init__(self, manager: JobManager, max_watchers: int) -> None:
        self._manager = manager
        self._watch_slots = threading.BoundedSemaphore(max_watchers)

    def Transcode(self, request: pb.TranscodeRequest, context: grpc.ServicerContext) -> pb.Job:
        return _answer(context, lambda: self._manager.submit(request))

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.Job:
        return _answer(context, lambda: self._manager.status(request.job_id))

    def Cancel(self, request: pb.CancelRequest, context: grpc.ServicerContext) -> pb.Job:
        return _answer(context, lambda: self._manager.cancel(request.job_id))

    def ListJobs(self, request: pb.ListJobsRequest,
                 context: grpc.ServicerContext) -> pb.ListJobsResponse:
        def page() -> pb.ListJobsResponse:
            jobs, token = self._manager.list_jobs(request.page_size, request.page_token,
                                                  list(request.states))
            return pb.ListJobsResponse(jobs=jobs, next_page_token=token)
        return _answer(context, page)

    def Watch(self, request: pb.WatchRequest,
              context: grpc.ServicerContext) -> Iterator[pb.JobEvent]:
        if not self._watch_slots.acquire(blocking=False):
            _abort(context, TooManyWatchersError("too many Watch streams; try again later"))
        try:
            stream = _answer(context, lambda: self._manager.watch(request.job_id,
                                                                  request.after_sequence))
            # A client hanging up (or the server stopping) wakes the stream so it ends at once.
            if not context.add_callback(stream.close):  # the RPC has already ended
                stream.close()
                return
            yield from _guarded(context, iter(stream))
        finally:
            self._watch_slots.release()


def _answer(context: grpc.ServicerContext, call: Callable[[], T]) -> T:
    """``call()``, with every failure turned into a status on ``context``."""
    try:
        return call()
    except RungsError as exc:
        _abort(context, exc)
    except Exception:
        log.exception("RPC failed")
        context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server's log)")


def _guarded(context: grpc.ServicerContext, events: Iterator[T]) -> Iterator[T]:
    """``events``, with a failure while streaming turned into a status like :func:`_answer`."""
    try:
        yield from events
    except RungsError as exc:
        _abort(context, exc)
    except Exception:
        log.exception("stream failed")
        context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server's log)")


def _abort(context: grpc.ServicerContext, error: RungsError) -> NoReturn:
    context.set_trailing_metadata(((ERROR_CODE_KEY, error.code),))
    context.abort(status_code(error), error.message)
