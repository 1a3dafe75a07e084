"""HTTP beside the gRPC service (``rungs serve --http-port``): the outputs, a player, progress.

Routes, all GET (and HEAD for files):

- ``/out/PATH``: a file a job wrote inside the output root (playlists, segments, init segments,
  posters; any other file there is 404). Playlists are ``Cache-Control: no-store`` (they
  grow and change while a job runs); segments and init segments are immutable with a year's
  max-age (a segment is never listed before it is complete, and never changes after). Single byte
  ranges are answered 206. A playlist goes gzip-compressed to a client that accepts it (Apple's
  authoring specification, 10.1, asks for it), a range of one uncompressed. A ``..`` (also
  percent-encoded), a NUL, or a symlink leading out of the root is 403; anything else that is
  not a file there is 404.
- ``/jobs/ID``: the player page of a job; ``/player.js`` and ``/hls.js`` (from npm) beside it.
- ``/api/jobs/ID``: the job as JSON, shaped like ``rungs status --json``.
- ``/api/jobs/ID/events``: server-sent events bridging Watch: each job event as JSON (shaped like
  ``rungs watch --json``) with its sequence as the event id, so a reconnecting ``EventSource``
  resumes after the last one it had (``Last-Event-ID``, or ``?after=N``); an ``end`` event
  follows the terminal one. At most ``MAX_EVENT_STREAMS`` are open at once (503 beyond).
- ``/``: the latest jobs, each linked to its player.

The server reads jobs through the :class:`~engine.manager.JobManager` the gRPC service uses, in
the same process; it never writes anything.
"""

from __future__ import annotations

import contextlib
import gzip
import html
import json
import logging
import os
import re
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from io import BufferedIOBase
from pathlib import Path
from typing import IO
from urllib.parse import parse_qs, unquote, urlsplit

from engine.client import event_json, job_json
from engine.errors import JobNotFoundError, TooManyWatchersError
from engine.manager import EventStream, JobManager
from engine.rpc import transcoder_pb2 as pb

log = logging.getLogger(__name__)

#: hls.js as ``npm ci`` installs it beside the package (the Makefile runs it).
DEFAULT_HLS_JS = Path(__file__).resolve().parents[1] / "node_modules/hls.js/dist/hls.min.js"

#: The files a job writes (and nothing else: not a source that happens to lie in the output
#: root, not the muxer's hidden scratch playlist), what each is, and how long a browser or proxy
#: may keep it.
_PLAYLIST_CACHE = "no-store"
_PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
_SEGMENT_CACHE = "public, max-age=31536000, immutable"
_OUTPUT_FILES = (
    (re.compile(r"(master|index|iframes)\.m3u8"), _PLAYLIST_TYPE, _PLAYLIST_CACHE),
    (re.compile(r"seg_\d+\.m4s"), "video/iso.segment", _SEGMENT_CACHE),
    (re.compile(r"seg_\d+\.ts"), "video/mp2t", _SEGMENT_CACHE),
    (re.compile(r"seg_\d+\.vtt"), "text/vtt; charset=utf-8", _SEGMENT_CACHE),
    (re.compile(r"init(_\d+)?\.mp4"), "video/mp4", _SEGMENT_CACHE),
    # Written once, before READY; revalidated so an overwritten job shows its own.
    (re.compile(r"poster\.jpg"), "image/jpeg", "no-cache"),
)
_JOB_ID = re.compile(r"[0-9a-f]{16}")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_COPY_CHUNK = 256 * 1024
#: Jobs the index page lists.
_INDEX_JOBS = 50
#: Event streams open at once; each holds a thread for as long as its job runs.
MAX_EVENT_STREAMS = 64


class WebServer:
    """The HTTP server of one :class:`JobManager`, on its own threads; :meth:`stop` joins them."""

    def __init__(self, manager: JobManager, host: str = "127.0.0.1", port: int = 0,
                 hls_js: Path = DEFAULT_HLS_JS) -> None:
        self.manager = manager
        self.hls_js = hls_js
        self._streams: set[EventStream] = set()
        self._lock = threading.Lock()
        self._httpd = _HTTPServer((host, port), _Handler, self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="http",
                                        kwargs={"poll_interval": 0.2})

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, end every event stream, and close the socket."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.close()
        self._httpd.server_close()

    def open_stream(self, job_id: str, after: int) -> EventStream:
        with self._lock:
            if len(self._streams) >= MAX_EVENT_STREAMS:
                raise TooManyWatchersError("too many event streams; try again later")
            stream = self.manager.watch(job_id, after)
            self._streams.add(stream)
        return stream

    def close_stream(self, stream: EventStream) -> None:
        stream.close()
        with self._lock:
            self._streams.discard(stream)


class _HTTPServer(ThreadingHTTPServer):
    # Connection threads are daemons: a browser holding a keep-alive connection open must not
    # keep the process alive after stop().
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[_Handler], web: WebServer) -> None:
        self.web = web
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hangs up between requests is routine, not worth a traceback.
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.debug("HTTP client %s: %s", client_address, error)
        else:
            log.error("HTTP request from %s failed", client_address, exc_info=error)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, which players rely on for segment after segment
    server: _HTTPServer
    server_version = "rungs"
    #: Seconds a connection may sit idle, or a client leave a write unread, before it is closed.
    timeout = 60

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # -- routing ------------------------------------------------------------------------------

    def _route(self, head: bool) -> None:
        url = urlsplit(self.path)
        path = url.path
        try:
            if path.startswith("/out/"):
                self._output_file(path[len("/out/"):], head)
            elif path == "/":
                self._send_text(_index_page(self.server.web.manager), "text/html", head)
            elif path == "/hls.js":
                self._static(self.server.web.hls_js, "text/javascript", head)
            elif path == "/player.js":
                self._send_text(_asset("player.js"), "text/javascript", head)
            elif match := re.fullmatch(r"/jobs/([^/]+)", path):
                job = self._job(match.group(1))
                page = _asset("player.html").replace("{{JOB_ID}}", html.escape(job.id))
                self._send_text(page, "text/html", head)
            elif match := re.fullmatch(r"/api/jobs/([^/]+)", path):
                body = json.dumps(job_json(self._job(match.group(1))))
                self._send_text(body, "application/json", head)
            elif match := re.fullmatch(r"/api/jobs/([^/]+)/events", path):
                self._events(match.group(1), url.query, head)
            else:
                self._error(HTTPStatus.NOT_FOUND, "not found")
        except JobNotFoundError as exc:
            self._error(HTTPStatus.NOT_FOUND, exc.message)
        except TooManyWatchersError as exc:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, exc.message)
        except OSError:
            # The client went away, or stopped reading for longer than ``timeout``.
            self.close_connection = True
        except Exception:  # a bug: answered 500, logged, and the server goes on
            log.exception("HTTP %s %s failed", self.command, self.path)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")

    def _job(self, job_id: str) -> pb.Job:
        if not _JOB_ID.fullmatch(job_id):
            raise JobNotFoundError(f"no job {job_id!r}")
        return self.server.web.manager.status(job_id)

    # -- files --------------------------------------------------------------------------------

    def _output_file(self, raw: str, head: bool) -> None:
        root = self.server.web.manager.roots.output
        relative = unquote(raw)
        parts = relative.split("/")
        # Decoded first, so %2e%2e is refused like '..'.
        if "\0" in relative or any(part in ("..", ".") for part in parts):
            self._error(HTTPStatus.FORBIDDEN, "forbidden")
            return
        try:
            path = (root / relative).resolve()
            is_file = path.is_file()
        except (OSError, RuntimeError):  # a name too long, a symlink loop
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        if not path.is_relative_to(root):  # an absolute path, or a symlink leading out
            self._error(HTTPStatus.FORBIDDEN, "forbidden")
            return
        kind = next(((content_type, cache) for name, content_type, cache in _OUTPUT_FILES
                     if name.fullmatch(path.name)), None)
        if kind is None or not is_file:
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        if kind[0] == _PLAYLIST_TYPE and self.headers.get("Range") is None \
                and _accepts_gzip(self.headers.get("Accept-Encoding", "")):
            self._gzipped(path, *kind, head)
            return
        self._file(path, *kind, head)

    def _gzipped(self, path: Path, content_type: str, cache: str, head: bool) -> None:
        """A small text file (a playlist), compressed whole."""
        try:
            body = gzip.compress(path.read_bytes(), compresslevel=6)
        except OSError:
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Vary", "Accept-Encoding")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _static(self, path: Path, content_type: str, head: bool) -> None:
        if not path.is_file():
            self._error(HTTPStatus.SERVICE_UNAVAILABLE,
                        f"{path.name} is not installed: run 'npm ci' in the project")
            return
        self._file(path, content_type, "no-cache", head)

    def _file(self, path: Path, content_type: str, cache: str, head: bool) -> None:
        try:
            file = path.open("rb")
        except OSError:
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        with file:
            size = os.fstat(file.fileno()).st_size
            start, end = 0, size - 1
            status = HTTPStatus.OK
            wanted = self.headers.get("Range")
            if wanted is not None and (span := _byte_range(wanted, size)) is not None:
                if span == (-1, -1):
                    self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, end = span
                status = HTTPStatus.PARTIAL_CONTENT
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Cache-Control", cache)
            if status == HTTPStatus.PARTIAL_CONTENT:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if not head:
                _copy(file, self.wfile, start, end - start + 1)

    # -- progress -----------------------------------------------------------------------------

    def _events(self, job_id: str, query: str, head: bool) -> None:
        self._job(job_id)
        after = _after(self.headers.get("Last-Event-ID"), parse_qs(query).get("after", [""])[0])
        web = self.server.web
        stream = None if head else web.open_stream(job_id, after)
        self.close_connection = True  # the stream ends with the connection
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            if stream is None:
                return  # HEAD: the headers alone
            for event in stream:
                data = json.dumps(event_json(event))
                self.wfile.write(f"id: {event.sequence}\ndata: {data}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"event: end\ndata: {}\n\n")
            self.wfile.flush()
        finally:
            if stream is not None:
                web.close_stream(stream)

    # -- answers ------------------------------------------------------------------------------

    def _send_text(self, text: str, content_type: str, head: bool) -> None:
        body = text.encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: HTTPStatus, message: str) -> None:
        body = f"{message}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _accepts_gzip(header: str) -> bool:
    """Whether an ``Accept-Encoding`` header takes gzip (named, or ``*``, without ``q=0``)."""
    accepted: dict[str, bool] = {}
    for item in header.split(","):
        coding, *params = [part.strip() for part in item.split(";")]
        quality = next((param[2:] for param in params if param.startswith("q=")), "1")
        try:
            accepted[coding.lower()] = float(quality) > 0
        except ValueError:  # a malformed weight takes nothing
            accepted[coding.lower()] = False
    return accepted.get("gzip", accepted.get("*", False))


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive span a ``Range`` header asks of a ``size``-byte file: ``None`` to send the
    whole file (no single byte range asked), ``(-1, -1)`` when it cannot be satisfied."""
    match = _RANGE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None  # several ranges, or another unit: the whole file is a valid answer
    first, last = match.groups()
    if first == "":  # the last N bytes
        count = int(last)
        if count == 0 or size == 0:
            return (-1, -1)
        return (max(0, size - count), size - 1)
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size or end < start:
        return (-1, -1)
    return (start, end)


def _after(last_event_id: str | None, query_after: str) -> int:
    for text in (last_event_id, query_after):
        if text and text.isdigit():
            return int(text)
    return 0


def _copy(source: IO[bytes], target: BufferedIOBase, start: int, count: int) -> None:
    source.seek(start)
    while count > 0:
        chunk = source.read(min(_COPY_CHUNK, count))
        if not chunk:
            break
        target.write(chunk)
        count -= len(chunk)


def _asset(name: str) -> str:
    return resources.files("engine").joinpath("player", name).read_text(encoding="utf-8")


def _index_page(manager: JobManager) -> str:
    jobs, _ = manager.list_jobs(_INDEX_JOBS, "", [])
    rows = "\n".join(
        f'<li><a href="/jobs/{job.id}">{html.escape(job.id)}</a> '
        f"{pb.JobState.Name(job.state)} {html.escape(job.source)} &rarr; "
        f"{html.escape(job.output)}</li>" for job in jobs)
    return (f"<!doctype html><meta charset=utf-8><title>Rungs</title><h1>Rungs jobs</h1>"
            f"<ul>{rows or '<li>none yet</li>'}</ul>\n")


__all__ = ["DEFAULT_HLS_JS", "WebServer"]
