// The Rungs player: plays a job's master playlist with hls.js while the job runs, and moves to
// each higher rung the moment it is published, without interrupting playback.
//
// hls.js loads a master playlist once per loadSource(), so a rewritten master never reaches a
// running player. When the job's events say a rung was published that the player's master did
// not list, the media element, its MediaSource and its SourceBuffers are handed to a new Hls
// instance (transferMedia), which loads the new master and goes on from the current position:
// the buffered picture keeps playing meanwhile, so nothing is lost.
//
// Everything measured is kept in window.rungs, for people (the log below the video) and for the
// browser tests.
"use strict";

(function () {
  const jobId = document.body.dataset.job;
  const video = document.getElementById("video");
  // ?loop=1 (the demo's link): a short video plays again and again, so each rung can be seen
  // arriving while it plays.
  video.loop = new URLSearchParams(location.search).get("loop") === "1";
  const now = () => performance.timeOrigin + performance.now(); // epoch ms, comparable across tabs

  const rungs = {
    jobId,
    state: "connecting",
    events: [],          // every job event, as the server sent it
    published: [],       // rung names, in publish order
    levelLoads: [],      // {level, type, live, fragments, at} per media playlist load
    upgrades: [],        // {at, currentTime, levels, onScreenAt, onScreenWidth}
    stalls: [],          // {at, seconds}: time spent waiting for data while playing
    errors: [],          // {fatal, type, details}
    firstFrameAt: null,  // epoch ms of the first frame with currentTime > 0
    firstCurrentTime: null,
    sizes: [],           // {at, width, height} each time the picture size changes
    samples: [],         // {at, currentTime, paused} every 100 ms once playing
    maxRms: 0,
    ended: false,
    hls: null,
  };
  window.rungs = rungs;

  let master = null;
  const bitrates = new Map();  // rung name -> peak bandwidth, from rung_published
  let upgrading = false;
  // Instances that handed the media over, destroyed once their successor has buffered a
  // fragment: until then they keep hls.js's transmuxing worker alive (instances share it, and
  // the last one to go terminates it), which the successor would otherwise start anew, compiling
  // hls.js again in the middle of playback.
  const retired = [];

  function log(text) {
    const line = `${((now() - performance.timeOrigin) / 1000).toFixed(2)}s  ${text}\n`;
    const box = document.getElementById("log");
    box.textContent += line;
    box.scrollTop = box.scrollHeight;
  }

  // -- playback -------------------------------------------------------------------------------

  function newHls(config) {
    const hls = new Hls(Object.assign({ enableWorker: true }, config));
    hls.on(Hls.Events.LEVEL_LOADED, (_, data) => {
      const d = data.details;
      rungs.levelLoads.push({ level: data.level, type: d.type, live: d.live,
                              fragments: d.fragments.length, at: now() });
    });
    hls.on(Hls.Events.LEVEL_SWITCHED, (_, data) => {
      const level = hls.levels[data.level];
      if (level) log(`playing level ${data.level}: ${level.width}x${level.height}`);
    });
    hls.on(Hls.Events.ERROR, (_, data) => {
      if (hls !== rungs.hls) return;  // a retired instance: it loads nothing any more
      rungs.errors.push({ fatal: data.fatal, type: data.type, details: data.details });
      log(`hls.js ${data.fatal ? "fatal " : ""}error: ${data.type} ${data.details}`);
      if (!data.fatal) return;
      if (data.type === Hls.ErrorTypes.MEDIA_ERROR) hls.recoverMediaError();
      else if (data.type === Hls.ErrorTypes.NETWORK_ERROR) hls.startLoad();
    });
    hls.on(Hls.Events.MANIFEST_PARSED, () => maybeUpgrade());
    hls.on(Hls.Events.AUDIO_TRACKS_UPDATED, () => showAudioTracks(hls));
    hls.on(Hls.Events.AUDIO_TRACK_SWITCHED, () => showAudioTracks(hls));
    return hls;
  }

  // The source's audio tracks (languages, commentary), offered where there are several. The
  // choice goes with every upgrade: each new Hls would start on the master's default track.
  const audioMenu = document.getElementById("audio");
  audioMenu.addEventListener("change", () => {
    if (rungs.hls) rungs.hls.audioTrack = Number(audioMenu.value);
  });

  function showAudioTracks(hls) {
    if (hls !== rungs.hls) return;
    const tracks = hls.audioTracks;
    audioMenu.replaceChildren(...tracks.map((track, index) => {
      const label = track.lang && track.lang !== track.name ? `${track.name} (${track.lang})`
                                                            : track.name;
      return new Option(label, String(index), false, index === hls.audioTrack);
    }));
    document.getElementById("sound").hidden = tracks.length < 2;
  }

  function audioChoice(hls) {
    const track = hls.audioTracks[hls.audioTrack];
    return track ? { name: track.name, lang: track.lang } : undefined;
  }

  // The name of the subtitle track shown (the viewer's choice in the video's own menu, or the
  // default), null for none, undefined before hls.js has read them: a new Hls would start on
  // the master's default track.
  function subtitleChoice(hls) {
    if (hls.subtitleTracks.length === 0) return undefined;
    const track = hls.subtitleTracks[hls.subtitleTrack];
    return track ? track.name : null;
  }

  function start(masterUrl) {
    if (rungs.hls || !Hls.isSupported()) {
      if (!Hls.isSupported()) log("this browser has no Media Source Extensions: cannot play");
      return;
    }
    master = masterUrl;
    const hls = newHls({ startPosition: 0 });
    rungs.hls = hls;
    hls.attachMedia(video);
    hls.loadSource(master);
    log(`playing ${master}`);
  }

  // Moves playback to a new Hls that knows every published rung.
  function maybeUpgrade() {
    const hls = rungs.hls;
    if (!hls || upgrading || !hls.levels || hls.levels.length === 0) return;
    if (rungs.published.length <= hls.levels.length) return;
    const keepUntil = switchPoint(hls);
    // Read before the media goes: hls.js forgets the subtitle track shown when it lets go.
    const sound = audioChoice(hls);
    const subtitles = subtitleChoice(hls);
    const media = hls.transferMedia();
    if (!media) return;
    upgrading = true;
    const upgrade = { at: now(), currentTime: video.currentTime, levels: rungs.published.length,
                      keepUntil, onScreenAt: null, onScreenWidth: null };
    rungs.upgrades.push(upgrade);
    const estimate = hls.bandwidthEstimate;
    hls.stopLoad();
    retired.push(hls);
    // hls.js leaves the <track> elements of its subtitle renditions on a media element it hands
    // over, and the new Hls adds its own: each subtitle showed twice, once for each.
    for (const node of video.querySelectorAll("track")) node.remove();
    const next = newHls({
      startPosition: video.currentTime,
      // The master lists rungs lowest first: start on the newest (highest) one, and let ABR
      // step down from there if the network cannot carry it.
      startLevel: rungs.published.length - 1,
      abrEwmaDefaultEstimate: estimate > 0 ? estimate : undefined,
      audioPreference: sound,
    });
    // The old rung's buffered seconds would otherwise play out before the new rung shows. What
    // plays until the new rung's first fragment can arrive is kept; the rest is dropped, at a
    // segment boundary, where every rung has a keyframe at the same time.
    next.once(Hls.Events.MEDIA_ATTACHED, () => {
      if (keepUntil !== null) {
        next.trigger(Hls.Events.BUFFER_FLUSHING,
                     { startOffset: keepUntil, endOffset: Number.POSITIVE_INFINITY, type: null });
      }
    });
    next.once(Hls.Events.MANIFEST_PARSED, () => { upgrading = false; maybeUpgrade(); });
    next.once(Hls.Events.FRAG_BUFFERED, () => {
      for (const old of retired.splice(0)) old.destroy();
      // The new Hls's tracks are on the element now, the default one showing: show the one
      // chosen instead, as the video's menu does (hls.js follows what the element shows).
      if (subtitles !== undefined) {
        for (const track of video.textTracks) {
          // Closed captions (hls.js's track of the CEA-608 in the picture) are not a subtitle
          // rendition: left as the viewer has them, or turning subtitles off hid them too.
          if (track.kind === "captions") continue;
          track.mode = track.label === subtitles ? "showing" : "disabled";
        }
      }
    });
    rungs.hls = next;
    next.attachMedia(media);
    next.loadSource(master);
    log(`upgrading to ${rungs.published.length} rungs at ${upgrade.currentTime.toFixed(2)} s`);
  }

  // The first segment boundary the new rung's first fragment can surely be fetched before
  // playback reaches it (as hls.js reckons a level switch: a second of margin, the time to first
  // byte, and the fragment's download at the measured bandwidth; none while paused); null when
  // none is buffered.
  function switchPoint(hls) {
    const level = hls.levels[hls.currentLevel];
    const fragments = level && level.details ? level.details.fragments : [];
    const top = rungs.published[rungs.published.length - 1];
    const bandwidth = hls.bandwidthEstimate > 0 ? hls.bandwidthEstimate : 1e6;
    const duration = level && level.details ? level.details.targetduration : 4;
    if (video.ended) return 0;  // nothing plays: drop all of it, a replay gets the new rung
    const fetch = video.paused ? 0
      : 1 + hls.ttfbEstimate / 1000 + (bitrates.get(top) || 0) * duration / bandwidth;
    const end = bufferedEnd();
    for (const fragment of fragments) {
      if (fragment.start >= video.currentTime + fetch && fragment.start < end) return fragment.start;
    }
    return null;
  }

  function bufferedEnd() {
    const ranges = video.buffered;
    for (let i = 0; i < ranges.length; i++) {
      if (ranges.start(i) <= video.currentTime + 0.1 && video.currentTime <= ranges.end(i)) {
        return ranges.end(i);
      }
    }
    return video.currentTime;
  }

  video.addEventListener("resize", () => {
    rungs.sizes.push({ at: now(), width: video.videoWidth, height: video.videoHeight });
    document.getElementById("onscreen").textContent = `${video.videoWidth}x${video.videoHeight}`;
    const last = rungs.upgrades[rungs.upgrades.length - 1];
    if (last && last.onScreenAt === null && rungs.sizes.length > 1
        && video.videoWidth > rungs.sizes[rungs.sizes.length - 2].width) {
      last.onScreenAt = now();
      last.onScreenWidth = video.videoWidth;
    }
  });
  video.addEventListener("timeupdate", () => {
    if (rungs.firstFrameAt === null && video.currentTime > 0) {
      rungs.firstFrameAt = now();
      rungs.firstCurrentTime = video.currentTime;
    }
  });
  let waitingSince = null;
  video.addEventListener("waiting", () => { if (waitingSince === null) waitingSince = now(); });
  video.addEventListener("playing", () => {
    if (waitingSince !== null && rungs.firstFrameAt !== null) {
      rungs.stalls.push({ at: waitingSince, seconds: (now() - waitingSince) / 1000 });
    }
    waitingSince = null;
  });
  video.addEventListener("ended", () => { rungs.ended = true; log("ended"); });
  // Playback position against the clock: what the upgrade cost is measured from.
  setInterval(() => {
    if (rungs.firstFrameAt !== null && !rungs.ended) {
      rungs.samples.push({ at: now(), currentTime: video.currentTime, paused: video.paused });
    }
  }, 100);

  // Sound: an analyser on the element proves audio is really decoded and played.
  function listen() {
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) return;
    const context = new Context();
    const analyser = context.createAnalyser();
    analyser.fftSize = 2048;
    context.createMediaElementSource(video).connect(analyser);
    analyser.connect(context.destination);
    const samples = new Float32Array(analyser.fftSize);
    setInterval(() => {
      if (context.state === "suspended") context.resume();
      analyser.getFloatTimeDomainData(samples);
      let sum = 0;
      for (const s of samples) sum += s * s;
      rungs.maxRms = Math.max(rungs.maxRms, Math.sqrt(sum / samples.length));
    }, 100);
  }
  listen();

  function outputUrl(path) {
    return "/out/" + path.split("/").map(encodeURIComponent).join("/");
  }

  // -- the job's progress -----------------------------------------------------------------------

  const rows = new Map();

  function row(name) {
    if (!rows.has(name)) {
      const tr = document.createElement("tr");
      tr.innerHTML = "<td></td><td><progress max=1 value=0></progress></td><td></td>";
      tr.cells[0].textContent = name;
      document.querySelector("#rungs tbody").appendChild(tr);
      rows.set(name, tr);
    }
    return rows.get(name);
  }

  function showState(state) {
    rungs.state = state;
    document.getElementById("state").textContent = state;
  }

  function onEvent(event) {
    rungs.events.push(Object.assign({ receivedAt: now() }, event));
    showState(event.state);
    switch (event.type) {
      case "progress":
        for (const r of event.rungs) {
          const tr = row(r.rung);
          tr.querySelector("progress").value = r.frames_total ? r.frames_done / r.frames_total : 0;
          if (tr.cells[2].textContent !== "published") tr.cells[2].textContent = r.state.toLowerCase();
        }
        break;
      case "ready":
        start(outputUrl(event.master_playlist));
        break;
      case "rung_published":
        if (!rungs.published.includes(event.rung)) rungs.published.push(event.rung);
        bitrates.set(event.rung, event.bandwidth);
        row(event.rung).cells[2].textContent = "published";
        row(event.rung).querySelector("progress").value = 1;
        log(`published ${event.rung} ${event.width}x${event.height}`);
        if (!rungs.hls) start(outputUrl(event.master_playlist));
        maybeUpgrade();
        break;
      case "complete":
        log("complete");
        // What of the source the output leaves out (its sound, damaged packets); protobuf's
        // JSON leaves an empty list out.
        for (const note of event.notes || []) log(`note: ${note}`);
        break;
      case "failed":
        log(`failed: ${event.error.message} (${event.error.code})`);
        break;
      case "cancelled":
        log(`cancelled: ${event.reason}`);
        break;
      default:
        log(event.type);
    }
  }

  const source = new EventSource(`/api/jobs/${encodeURIComponent(jobId)}/events`);
  source.onmessage = (message) => onEvent(JSON.parse(message.data));
  // The stream ends after the job's terminal event; without this EventSource would reconnect.
  source.addEventListener("end", () => source.close());
  source.onerror = () => log("progress stream interrupted; reconnecting");
})();
