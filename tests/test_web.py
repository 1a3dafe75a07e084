"""``rungs serve --http-port``: the outputs, the player page and the progress stream over real
HTTP on loopback (raw requests through http.client, so paths reach the server as sent)."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import m3u8
import pytest

from engine import web
from engine.rpc import transcoder_pb2 as pb
from engine.rpc import transcoder_pb2_grpc
from engine.server import RungsServer, create_server
from engine.web import DEFAULT_HLS_JS
from tests import media


@dataclass
class Served:
    server: RungsServer
    stub: Any
    output: Path
    jobs: dict[str, pb.Job]

    def get(self, path: str, headers: dict[str, str] | None = None,
            method: str = "GET") -> tuple[http.client.HTTPResponse, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.server.http_port, timeout=30)
        try:
            connection.request(method, path, headers=headers or {})
            response = connection.getresponse()
            return response, response.read()
        finally:
            connection.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("web")
    source, output = base / "src", base / "out"
    source.mkdir()
    output.mkdir()
    plain = media.make_video(base / "plain.mp4", width=640, height=360, seconds=4)
    media.make_subtitled(plain, source / "clip.mp4", [
        media.SubtitleSpec([(0.5, 1.5, "Hello")], codec="mov_text", language="eng")])
    (base / "secret.txt").write_text("not for the web\n")
    (output / "escape").symlink_to(base)
    (output / "notes.txt").write_text("not an output\n")
    media.make_video(output / "upload.mp4", width=64, height=64, seconds=1)
    server, port = create_server("127.0.0.1:0", data_dir=base / "data", source_root=source,
                                 output_root=output, http_port=0)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    # Stopped however the setup ends: a server left running (its job worker and HTTP threads)
    # kept pytest from exiting after a failed job here, so a failing run hung instead of failing.
    try:
        stub = transcoder_pb2_grpc.TranscoderStub(channel)
        jobs = {}
        for name, kind in (("fmp4", pb.FMP4), ("mpegts", pb.MPEGTS)):
            job = stub.Transcode(pb.TranscodeRequest(
                source="clip.mp4", output=name, options=pb.TranscodeOptions(
                    ladder=[180, 360], segment_seconds=2, segment_type=kind)), timeout=30)
            list(stub.Watch(pb.WatchRequest(job_id=job.id), timeout=60))
            jobs[name] = stub.Status(pb.StatusRequest(job_id=job.id), timeout=10)
            assert jobs[name].state == pb.COMPLETE
        yield Served(server, stub, output, jobs)
    finally:
        channel.close()
        server.stop(grace=1)


def test_playlists_are_never_cached_and_match_the_files(served: Served) -> None:
    master_path = served.jobs["fmp4"].master_playlist
    response, body = served.get(f"/out/{master_path}")
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/vnd.apple.mpegurl"
    assert response.getheader("Cache-Control") == "no-store"
    assert body == (served.output / master_path).read_bytes()
    master = m3u8.loads(body.decode())
    assert [p.stream_info.resolution for p in master.playlists] == [(320, 180), (640, 360)]
    response, body = served.get(f"/out/fmp4/{master.playlists[0].uri}")
    assert response.status == 200 and response.getheader("Cache-Control") == "no-store"
    assert m3u8.loads(body.decode()).is_endlist
    # The I-frame playlists too, and the byte ranges they list (a player fetches only those).
    for trick in master.iframe_playlists:
        response, body = served.get(f"/out/fmp4/{trick.uri}")
        assert response.status == 200 and response.getheader("Cache-Control") == "no-store"
        assert response.getheader("Content-Type") == "application/vnd.apple.mpegurl"
        iframe = m3u8.loads(body.decode()).segments[0]
        length, offset = map(int, iframe.byterange.split("@"))
        folder = trick.uri.rsplit("/", 1)[0]
        response, body = served.get(f"/out/fmp4/{folder}/{iframe.uri}",
                                    {"Range": f"bytes={offset}-{offset + length - 1}"})
        assert response.status == 206 and len(body) == length
    assert len(master.iframe_playlists) == 2


@pytest.mark.parametrize(("accept", "compressed"), [
    ("gzip, deflate, br", True), ("br;q=1.0, *;q=0.5", True), ("GZIP", True),
    ("gzip;q=0", False), ("deflate, *;q=0.5, gzip;q=0", False), (None, False)])
def test_playlists_go_gzipped_to_a_client_that_takes_them(
        served: Served, accept: str | None, compressed: bool) -> None:
    """Apple's authoring specification (10.1) asks for playlists delivered gzip-compressed;
    browsers and players ask for it, and a client that does not gets the file as it is."""
    master_path = served.jobs["fmp4"].master_playlist
    on_disk = (served.output / master_path).read_bytes()
    for path, data in ((master_path, on_disk),
                       ("fmp4/360p/index.m3u8", (served.output / "fmp4/360p/index.m3u8")
                        .read_bytes())):
        response, body = served.get(f"/out/{path}", {"Accept-Encoding": accept} if accept else {})
        assert response.status == 200
        assert response.getheader("Content-Encoding") == ("gzip" if compressed else None)
        assert (gzip.decompress(body) if compressed else body) == data
        assert int(response.getheader("Content-Length")) == len(body)
        assert response.getheader("Cache-Control") == "no-store"
    # A range is of the file as it is; segments go as they are.
    response, body = served.get(f"/out/{master_path}", {"Accept-Encoding": "gzip",
                                                         "Range": "bytes=0-6"})
    assert response.status == 206 and body == on_disk[:7]
    assert response.getheader("Content-Encoding") is None
    response, _ = served.get("/out/fmp4/360p/seg_00000.m4s", {"Accept-Encoding": "gzip"})
    assert response.status == 200 and response.getheader("Content-Encoding") is None


@pytest.mark.parametrize(("job", "path", "content_type"), [
    ("fmp4", "360p/init.mp4", "video/mp4"),
    ("fmp4", "360p/seg_00000.m4s", "video/iso.segment"),
    ("mpegts", "360p/seg_00000.ts", "video/mp2t"),
    ("mpegts", "subtitles1/seg_00000.vtt", "text/vtt; charset=utf-8"),
    ("fmp4", "poster.jpg", "image/jpeg"),
])
def test_media_files_have_their_type_and_segments_are_immutable(
        served: Served, job: str, path: str, content_type: str) -> None:
    response, body = served.get(f"/out/{job}/{path}")
    assert response.status == 200
    assert response.getheader("Content-Type") == content_type
    assert body == (served.output / job / path).read_bytes()
    assert response.getheader("Accept-Ranges") == "bytes"
    if path != "poster.jpg":
        assert response.getheader("Cache-Control") == "public, max-age=31536000, immutable"


def test_byte_ranges(served: Served) -> None:
    path = "fmp4/360p/seg_00001.m4s"
    data = (served.output / path).read_bytes()
    size = len(data)
    for header, start, end in (("bytes=10-99", 10, 99), ("bytes=100-", 100, size - 1),
                               ("bytes=-50", size - 50, size - 1),
                               (f"bytes=0-{size * 2}", 0, size - 1)):
        response, body = served.get(f"/out/{path}", {"Range": header})
        assert response.status == 206, header
        assert response.getheader("Content-Range") == f"bytes {start}-{end}/{size}"
        assert body == data[start:end + 1], header
    response, body = served.get(f"/out/{path}", {"Range": f"bytes={size}-"})
    assert response.status == 416 and response.getheader("Content-Range") == f"bytes */{size}"
    # Several ranges at once: the whole file is a valid answer.
    response, body = served.get(f"/out/{path}", {"Range": "bytes=0-1,5-6"})
    assert response.status == 200 and body == data


def test_head_sends_headers_only(served: Served) -> None:
    path = "fmp4/180p/seg_00000.m4s"
    response, body = served.get(f"/out/{path}", method="HEAD")
    assert response.status == 200 and body == b""
    assert int(response.getheader("Content-Length") or -1) == (served.output / path).stat().st_size


@pytest.mark.parametrize(("path", "status"), [
    ("/out/../secret.txt", 403),
    ("/out/%2e%2e/secret.txt", 403),
    ("/out/fmp4/%2E%2E/%2E%2E/secret.txt", 403),
    ("/out/fmp4%2f..%2f..%2fsecret.txt", 403),
    ("/out/./fmp4/master.m3u8", 403),
    ("/out/escape/secret.txt", 403),            # a symlink out of the output root
    ("/out//etc/passwd", 403),                  # an absolute path
    ("/out/" + "x" * 5000 + "/master.m3u8", 404),  # a name the system refuses
    ("/out/fmp4/master.m3u8%00.jpg", 403),
    ("/out/notes.txt", 404),                    # inside, but not an output file
    ("/out/upload.mp4", 404),                   # a video, but not one a job wrote
    ("/out/fmp4/360p/.muxer.m3u8", 404),        # the muxer's own scratch playlist
    ("/out/fmp4", 404),                         # a directory
    ("/out/fmp4/360p/seg_99999.m4s", 404),
    ("/out/%252e%252e/secret.txt", 404),        # decoded once only: a name, not a '..'
    ("/etc/passwd", 404),
    ("/jobs/../../etc/passwd", 404),
])
def test_nothing_outside_the_output_root_is_served(served: Served, path: str,
                                                   status: int) -> None:
    response, body = served.get(path)
    assert response.status == status, (path, body)
    assert b"not for the web" not in body


def test_job_pages_and_status(served: Served) -> None:
    job = served.jobs["fmp4"]
    response, body = served.get(f"/jobs/{job.id}")
    assert response.status == 200 and response.getheader("Content-Type", "").startswith("text/html")
    page = body.decode()
    assert f'data-job="{job.id}"' in page
    assert '<script src="/hls.js">' in page and '<script src="/player.js">' in page
    response, body = served.get("/player.js")
    assert response.status == 200 and b"transferMedia" in body
    if DEFAULT_HLS_JS.exists() or os.environ.get("CI"):  # make test installs it
        response, body = served.get("/hls.js")
        assert response.status == 200 and body == DEFAULT_HLS_JS.read_bytes()
    response, body = served.get(f"/api/jobs/{job.id}")
    status = json.loads(body)
    assert response.status == 200 and status["id"] == job.id and status["state"] == "COMPLETE"
    assert status["master_playlist"] == job.master_playlist
    response, body = served.get("/")
    assert response.status == 200 and job.id.encode() in body
    for unknown in ("/jobs/0123456789abcdef", "/api/jobs/nothing", "/api/jobs/0000/events"):
        assert served.get(unknown)[0].status == 404, unknown


def _sse(body: bytes) -> list[tuple[str, str, str]]:
    """(event, id, data) of each message of a server-sent event stream."""
    messages = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        messages.append((fields.get("event", "message"), fields.get("id", ""), fields["data"]))
    return messages


def test_progress_stream_bridges_watch_and_resumes(served: Served) -> None:
    job = served.jobs["mpegts"]
    watched = list(served.stub.Watch(pb.WatchRequest(job_id=job.id), timeout=30))
    response, body = served.get(f"/api/jobs/{job.id}/events")
    assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
    messages = _sse(body)
    assert messages[-1][0] == "end"
    events = [json.loads(data) for kind, _, data in messages if kind == "message"]
    assert [int(i) for _, i, _ in messages[:-1]] == [e.sequence for e in watched]
    assert [e["type"] for e in events] == [e.WhichOneof("kind") for e in watched]
    assert events[-1]["type"] == "complete" and events[-1]["state"] == "COMPLETE"
    # An EventSource reconnecting sends the last id it had; a page may also ask with ?after=.
    for headers, query, first in (({"Last-Event-ID": "3"}, "", 4), ({}, "?after=5", 6)):
        response, body = served.get(f"/api/jobs/{job.id}/events{query}", headers)
        ids = [int(i) for kind, i, _ in _sse(body) if kind == "message"]
        assert ids == list(range(first, watched[-1].sequence + 1))


def test_progress_stream_past_the_end_head_and_a_cap(served: Served,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    job = served.jobs["fmp4"]
    # Past the last event, even past what SQLite's INTEGER holds: an empty stream, then end.
    for after in ("1000", str(2**64)):
        response, body = served.get(f"/api/jobs/{job.id}/events?after={after}")
        assert response.status == 200 and _sse(body) == [("end", "", "{}")]
    response, body = served.get(f"/api/jobs/{job.id}/events", {"Last-Event-ID": str(2**70)})
    assert response.status == 200 and _sse(body) == [("end", "", "{}")]
    response, body = served.get(f"/api/jobs/{job.id}/events", method="HEAD")
    assert response.status == 200 and body == b""
    assert response.getheader("Content-Type") == "text/event-stream"
    # Every stream holds a thread while its job runs: beyond the cap, 503.
    monkeypatch.setattr(web, "MAX_EVENT_STREAMS", 0)
    response, body = served.get(f"/api/jobs/{job.id}/events")
    assert response.status == 503 and b"too many event streams" in body


def test_a_taken_http_port_is_refused_and_releases_the_data_dir(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            create_server("127.0.0.1:0", data_dir=tmp_path / "data", source_root=tmp_path,
                          output_root=tmp_path / "out", http_port=taken.getsockname()[1])
    # The failed attempt left the data directory unlocked: the next server can use it.
    server, _ = create_server("127.0.0.1:0", data_dir=tmp_path / "data", source_root=tmp_path,
                              output_root=tmp_path / "out", http_port=0)
    server.start()
    server.stop(grace=0)
