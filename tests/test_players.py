"""The outputs in players other than the player page's: Shaka Player (Google's, from npm), and
hls.js as a site that embeds it has it (its defaults), in Debian's Chromium.

A service's users bring their own player, and each reads HLS by its own rules: Shaka has its
own playlist parser and its own MPEG-TS transmuxer, and takes the variants' RESOLUTION,
BANDWIDTH and CODECS as listed. The outputs are served from a plain HTTP server on loopback that
says ``no-store``, as ``rungs serve`` does for playlists, beside a page that plays them.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import m3u8
import pytest

from engine import JobState, LadderOptions
from engine.web import DEFAULT_HLS_JS
from tests import media
from tests.browser import chromium, require_browser
from tests.conftest import LADDER, SEGMENT_SECONDS, options, run_job
from tests.polling import Poller

SHAKA_JS = (Path(__file__).resolve().parents[1]
            / "node_modules/shaka-player/dist/shaka-player.compiled.js")
SOURCE_SECONDS = 4.0
#: Segments the first rung's playlist holds, still growing, when a player opens it.
GROWN_SEGMENTS = 6

#: Plays ``?m=`` (a master playlist) with ``?player=`` (shaka or hls.js) at ``?rate=``; Shaka
#: with its adaptation off and, given ``?height=``, on that variant. ``window.result`` has what
#: the player parsed and where playback started.
PAGE = """<!doctype html><video id="v" muted playsinline></video>
<script src="shaka.js"></script><script src="hls.js"></script><script>
const q = new URLSearchParams(location.search), v = document.getElementById('v');
const r = window.result = {errors: [], ended: false, started: null};
v.addEventListener('ended', () => { r.ended = true; });
async function shakaPlayer() {
  shaka.polyfill.installAll();
  const player = new shaka.Player();
  player.addEventListener('error', e => r.errors.push('shaka ' + e.detail.code));
  await player.attach(v);
  player.configure({abr: {enabled: false}});
  await player.load(q.get('m'));
  const tracks = player.getVariantTracks();
  r.variants = tracks.map(t => [t.width, t.height, t.bandwidth, t.videoCodec + ',' + t.audioCodec]);
  r.texts = player.getTextTracks().map(t => t.language);
  const height = Number(q.get('height'));
  if (height) player.selectVariantTrack(tracks.find(t => t.height === height), true);
}
async function hlsPlayer() {
  const hls = new Hls();
  hls.on(Hls.Events.ERROR, (e, d) => { if (d.fatal) r.errors.push('hls.js ' + d.details); });
  const parsed = new Promise(resolve => hls.once(Hls.Events.MANIFEST_PARSED, resolve));
  hls.loadSource(q.get('m'));
  hls.attachMedia(v);
  await parsed;
}
(async () => {
  try {
    await (q.get('player') === 'shaka' ? shakaPlayer() : hlsPlayer());
    v.playbackRate = Number(q.get('rate') || 1);
    await v.play();
    r.started = v.currentTime;
  } catch (e) { r.errors.push('load ' + (e.code || e.message)); }
})();
</script>"""


class _NoStore(http.server.SimpleHTTPRequestHandler):
    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The page and both players' scripts served over loopback: its address and its folder,
    where the tests write outputs."""
    require_browser(DEFAULT_HLS_JS, SHAKA_JS)
    root = tmp_path_factory.mktemp("site")
    shutil.copy(SHAKA_JS, root / "shaka.js")
    shutil.copy(DEFAULT_HLS_JS, root / "hls.js")
    (root / "page.html").write_text(PAGE)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_NoStore, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, name="site")
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    thread.join()
    server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_browser(DEFAULT_HLS_JS, SHAKA_JS)
    with chromium() as launched:
        yield launched


def _play(browser: Any, url: str, *, to_end: bool) -> dict[str, Any]:
    """Open the page at ``url`` and wait until playback ended (``to_end``) or started, or
    the player reported an error; return ``window.result`` with the element's state."""
    page = browser.new_page()
    try:
        page.goto(url)
        done = "r.ended" if to_end else "r.started !== null"
        page.wait_for_function(f"(r => {done} || r.errors.length)(window.result)",
                               timeout=60_000)
        result: dict[str, Any] = page.evaluate(
            "() => Object.assign({}, window.result, {height: v.videoHeight, time: v.currentTime,"
            " duration: v.duration, frames: v.getVideoPlaybackQuality().totalVideoFrames})")
        return result
    finally:
        page.close()


@pytest.mark.parametrize("segment_type", ["fmp4", "mpegts"])
def test_every_rung_plays_to_its_end_in_shaka_player(
        site: tuple[str, Path], browser: Any, tmp_path: Path, segment_type: str) -> None:
    """Shaka reads the master as written (each variant's size, bandwidth and codecs, the
    subtitles) and plays each rung, chosen by its listed height, from start to end."""
    url, root = site
    source = media.make_subtitled(
        media.make_video(tmp_path / "main.mp4", seconds=SOURCE_SECONDS), tmp_path / "talk.mkv",
        [media.SubtitleSpec([(0.5, 1.5, "Hello")], language="eng")])
    out = root / segment_type
    transcode = options(segment_type=segment_type, early_playback=True)
    assert run_job(source, out, transcode).state is JobState.COMPLETE
    master = m3u8.load(str(out / "master.m3u8"))
    listed = sorted([*v.stream_info.resolution, v.stream_info.bandwidth, v.stream_info.codecs]
                    for v in master.playlists)
    assert [height for _, height, _, _ in listed] == list(LADDER)
    for height in LADDER:
        result = _play(browser, f"{url}/page.html?player=shaka&m={segment_type}/master.m3u8"
                                f"&height={height}&rate=4", to_end=True)
        assert result["errors"] == [] and result["ended"], result
        assert sorted(result["variants"]) == listed
        assert result["texts"] == ["en"]
        assert result["height"] == height
        assert result["time"] == pytest.approx(SOURCE_SECONDS, abs=0.1)
        assert result["frames"] >= 0.9 * SOURCE_SECONDS * 30, result


class _Snapshot(Poller):
    """Copies the output as a player finds it the first time the master lists the first rung
    alone, its playlist holding ``GROWN_SEGMENTS`` segments and still growing: the master,
    each playlist it lists and each file those list."""

    interval_s = 0.005

    def __init__(self, out: Path, to: Path) -> None:
        self.out, self.to, self.taken = out, to, False

    def poll(self) -> None:
        if self.taken or not (self.out / "master.m3u8").exists():
            return
        master_text = (self.out / "master.m3u8").read_text()
        master = m3u8.loads(master_text)
        uris = [item.uri for item in (*master.playlists, *master.media,
                                      *master.iframe_playlists) if item.uri]
        texts = {uri: (self.out / uri).read_text() for uri in uris}
        first = m3u8.loads(texts[master.playlists[0].uri])
        if (len(master.playlists) > 1 or first.is_endlist
                or len(first.segments) < GROWN_SEGMENTS):
            return
        for uri, text in texts.items():
            playlist = m3u8.loads(text)
            (self.to / uri).parent.mkdir(parents=True, exist_ok=True)
            (self.to / uri).write_text(text)
            files = {segment.uri for segment in playlist.segments} | {
                segment.init_section.uri for segment in playlist.segments
                if segment.init_section}
            for name in files:
                shutil.copy((self.out / uri).parent / name, (self.to / uri).parent / name)
        (self.to / "master.m3u8").write_text(master_text)
        self.taken = True


@pytest.fixture(scope="module")
def growing(site: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The output of a job while its first rung is still growing, copied into the site at
    that instant: the folder's name."""
    _, root = site
    base = tmp_path_factory.mktemp("growing")
    # Longer than the snapshot needs, so the rung is seen growing past it.
    source = media.make_video(base / "long.mp4", width=320, height=180,
                              seconds=2.5 * GROWN_SEGMENTS * SEGMENT_SECONDS)
    with _Snapshot(base / "out", root / "growing") as snapshot:
        run = run_job(source, base / "out", options(ladder=LadderOptions(heights=(180,)),
                                                    early_playback=True))
    assert run.state is JobState.COMPLETE
    assert snapshot.taken, "the first rung was never seen growing with enough segments"
    return "growing"


@pytest.mark.parametrize("player", ["shaka", "hls.js"])
def test_a_rung_still_growing_plays_from_its_beginning(
        site: tuple[str, Path], browser: Any, growing: str, player: str) -> None:
    """Opened while the first rung is still encoding (an EVENT playlist with no end yet),
    playback starts at 0, not near the end of what is encoded so far, as players start live
    playlists. Shaka used to start 6 s into the 12 s listed: it ignores ``EXT-X-START`` at 0."""
    url, _ = site
    result = _play(browser, f"{url}/page.html?player={player}&m={growing}/master.m3u8",
                   to_end=False)
    assert result["errors"] == [], result
    assert result["started"] < 0.1, result

