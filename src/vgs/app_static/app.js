// vgs search page: record / upload / type a query, show the top-k images with heatmaps, and
// word-by-word localization for a clicked image.  Plain JS, no build step, nothing loaded from elsewhere.
//
// Audio: the server reads WAV/FLAC/OGG (libsndfile), not the webm/opus that MediaRecorder makes,
// so every recording and file is decoded here (Web Audio decodeAudioData), downmixed to mono,
// resampled to 16 kHz and sent as a 16-bit WAV.
"use strict";

(() => {
  const RATE = 16000;
  const $ = (id) => document.getElementById(id);
  const state = {
    limits: { max_upload_bytes: 5 * 1024 * 1024, max_audio_seconds: 20, max_text_chars: 300, max_k: 50 },
    query: null,      // {kind: "audio", wav: Blob, samples: Float32Array} | {kind: "text", text, voice}
    serial: 0,        // drops answers to superseded requests
    detailSerial: 0,
    recorder: null,
  };

  // ------------------------------------------------------------------ messages and requests

  function say(text, isError = false) {
    const el = $("message");
    el.textContent = text || "";
    el.classList.toggle("error", !!isError);
  }

  async function api(path, options) {
    let response;
    try {
      response = await fetch(path, options);
    } catch (err) {
      throw new Error(`cannot reach the server (${err.message})`);
    }
    let body = null;
    try { body = await response.json(); } catch (err) { body = null; }
    if (!response.ok) {
      const detail = body && typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`;
      throw new Error(detail);
    }
    return body;
  }

  // ------------------------------------------------------------------ audio: decode, downmix, resample, WAV

  async function decodeTo16k(arrayBuffer) {
    const Offline = window.OfflineAudioContext || window.webkitOfflineAudioContext;
    if (!Offline) throw new Error("this browser has no Web Audio API to decode audio");
    let decoded;
    try {  // decodeAudioData resamples to the context's rate: 16 kHz directly
      decoded = await new Offline(1, 1, RATE).decodeAudioData(arrayBuffer.slice(0));
    } catch (first) {
      const Context = window.AudioContext || window.webkitAudioContext;
      if (!Context) throw first;
      const context = new Context();
      try { decoded = await context.decodeAudioData(arrayBuffer.slice(0)); } finally { context.close(); }
    }
    const mono = downmix(decoded);
    return decoded.sampleRate === RATE ? mono : resample(mono, decoded.sampleRate);
  }

  function downmix(buffer) {
    const channels = buffer.numberOfChannels;
    if (channels === 1) return new Float32Array(buffer.getChannelData(0));
    const mono = new Float32Array(buffer.length);
    for (let c = 0; c < channels; c++) {
      const data = buffer.getChannelData(c);
      for (let i = 0; i < data.length; i++) mono[i] += data[i] / channels;
    }
    return mono;
  }

  async function resample(mono, rate) {
    const Offline = window.OfflineAudioContext || window.webkitOfflineAudioContext;
    const frames = Math.max(1, Math.round(mono.length * RATE / rate));
    const context = new Offline(1, frames, RATE);
    const buffer = context.createBuffer(1, mono.length, rate);
    buffer.copyToChannel(mono, 0);
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(context.destination);
    source.start();
    return (await context.startRendering()).getChannelData(0);
  }

  function encodeWav(samples, rate = RATE) {
    const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
    const text = (offset, s) => { for (let i = 0; i < s.length; i++) view.setUint8(offset + i, s.charCodeAt(i)); };
    text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE");
    text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
    view.setUint32(24, rate, true); view.setUint32(28, rate * 2, true); view.setUint16(32, 2, true); view.setUint16(34, 16, true);
    text(36, "data"); view.setUint32(40, samples.length * 2, true);
    for (let i = 0; i < samples.length; i++) {
      const s = Math.max(-1, Math.min(1, samples[i] || 0));
      view.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
    }
    return new Blob([view], { type: "audio/wav" });
  }

  // A recording or file -> the query (a 16 kHz WAV), then search.  Files the browser cannot
  // decode are sent as they are: the server may still read them (FLAC, OGG).
  async function audioQuery(blob, what) {
    say(`decoding the ${what}…`);
    let samples = null;
    let note = "";
    try {
      samples = await decodeTo16k(await blob.arrayBuffer());
    } catch (err) {
      samples = null;
    }
    let wav;
    if (samples) {
      const max = Math.floor(state.limits.max_audio_seconds * RATE);
      if (samples.length > max) {
        samples = samples.slice(0, max);
        note = ` (only its first ${state.limits.max_audio_seconds} s)`;
      }
      if (samples.length < RATE / 20) { clearResults(); say(`the ${what} is too short; speak for at least a second`, true); return; }
      wav = encodeWav(samples);
    } else {
      if (blob.size > state.limits.max_upload_bytes) {
        clearResults();
        say(`this browser cannot decode the ${what}, and it is too large to send as it is`, true);
        return;
      }
      wav = blob;  // let the server try (WAV/FLAC/OGG)
    }
    state.query = { kind: "audio", wav, samples };
    showQueryAudio(wav);
    await runSearch(note);
  }

  function showQueryAudio(blob, keepText = false) {
    const player = $("query-audio");
    if (player.dataset.url) URL.revokeObjectURL(player.dataset.url);
    const url = URL.createObjectURL(blob);
    player.dataset.url = url;
    player.src = url;
    player.hidden = false;
    if (!keepText) $("query-text").textContent = "";
    $("query-info").hidden = false;
  }

  function playSegment(start, end) {
    const q = state.query;
    if (!q || q.kind !== "audio" || !q.samples) return;
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) return;
    const piece = q.samples.subarray(Math.floor(start * RATE), Math.ceil(end * RATE));
    if (!piece.length) return;
    const context = new Context();
    const buffer = context.createBuffer(1, piece.length, RATE);
    buffer.copyToChannel(piece, 0);
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(context.destination);
    source.onended = () => context.close();
    source.start();
  }

  // ------------------------------------------------------------------ recording

  async function toggleRecording() {
    if (state.recorder && state.recorder.state === "recording") { state.recorder.stop(); return; }
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.MediaRecorder) {
      say("recording needs a browser with microphone access, on localhost or over HTTPS; upload a file instead", true);
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true } });
    } catch (err) {
      say(`no microphone (${err.message || err.name}); upload a file or type instead`, true);
      return;
    }
    const chunks = [];
    const recorder = new MediaRecorder(stream);
    state.recorder = recorder;
    const button = $("record-button");
    const started = Date.now();
    const timer = setInterval(() => {
      const seconds = (Date.now() - started) / 1000;
      $("record-timer").textContent = `${seconds.toFixed(1)} s`;
      if (seconds >= state.limits.max_audio_seconds && recorder.state === "recording") recorder.stop();
    }, 100);
    recorder.ondataavailable = (event) => { if (event.data && event.data.size) chunks.push(event.data); };
    recorder.onstop = async () => {
      clearInterval(timer);
      stream.getTracks().forEach((track) => track.stop());
      button.textContent = "● Record";
      button.classList.remove("recording");
      $("record-timer").textContent = "";
      await audioQuery(new Blob(chunks, { type: recorder.mimeType || "audio/webm" }), "recording");
    };
    recorder.start(250);
    button.textContent = "■ Stop";
    button.classList.add("recording");
    say("recording… press Stop when done");
  }

  // ------------------------------------------------------------------ search

  function kValue() {
    const k = parseInt($("k").value, 10);
    return Math.max(1, Math.min(state.limits.max_k, Number.isFinite(k) ? k : 12));
  }

  async function runSearch(note = "") {
    const q = state.query;
    if (!q) return;
    const serial = ++state.serial;
    closeDetail();
    say("searching…");
    try {
      let result;
      if (q.kind === "audio") {
        const form = new FormData();
        form.append("file", q.wav, "query.wav");
        form.append("k", String(kValue()));
        result = await api("/api/search/audio", { method: "POST", body: form });
      } else {
        result = await api("/api/search/text", {
          method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ text: q.text, k: kValue(), voice: q.voice }),
        });
      }
      if (serial !== state.serial) return;
      showResults(result);
      const n = result.hits.length;
      say(`${n} image${n === 1 ? "" : "s"} for ${result.query.duration.toFixed(1)} s of speech${note}, in ${Math.round(result.elapsed_ms)} ms. Click one to see where each ${q.kind === "text" ? "word" : "stretch of speech"} lands.`);
    } catch (err) {
      if (serial === state.serial) { clearResults(); say(err.message, true); }
    }
  }

  // A failed query leaves nothing of the previous one on screen: no old results, no empty player.
  function clearResults() {
    closeDetail();
    $("grid").replaceChildren();
    const player = $("query-audio");
    if (player.dataset.url) URL.revokeObjectURL(player.dataset.url);
    delete player.dataset.url;
    player.removeAttribute("src");
    player.hidden = true;
    $("query-text").textContent = "";
    $("query-info").hidden = true;
    $("legend").hidden = true;
  }

  // The speech a typed query was searched with, in the player beside the text.
  async function speakQuery(text, voice, serial) {
    try {
      const response = await fetch("/api/speak", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ text, voice }),
      });
      if (!response.ok || serial !== state.serial) return;
      const blob = await response.blob();
      if (serial === state.serial) showQueryAudio(blob, true);
    } catch (err) {
      /* the search reports problems; the player is a bonus */
    }
  }

  // Long file names keep their start and their end: "IMG_2024…_0042.jpg" (the full name is the tooltip).
  function shortName(name, max = 26) {
    if (name.length <= max) return name;
    const tail = Math.floor((max - 1) / 2);
    return `${name.slice(0, max - 1 - tail)}…${name.slice(name.length - tail)}`;
  }

  function showResults(result) {
    const grid = $("grid");
    grid.replaceChildren();
    $("legend").hidden = result.hits.length === 0;
    if (result.query.kind === "text" && result.query.words) {
      $("query-text").textContent = `“${result.query.text}”`;
    }
    for (const hit of result.hits) {
      const card = document.createElement("button");
      card.type = "button";
      card.className = "hit";
      card.dataset.image = String(hit.image);
      card.title = `${hit.name}: score ${hit.score.toFixed(4)}`;
      const { frame, canvas } = figure(hit.image_url + "?size=384", hit.name, 96);
      paintLater(canvas, hit.heatmap, frame.querySelector("img"));
      const meta = document.createElement("div");
      meta.className = "meta";
      const rank = document.createElement("span");
      rank.textContent = `#${hit.rank} · ${hit.score.toFixed(3)}`;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = shortName(hit.name);
      name.title = hit.name;
      meta.append(rank, name);
      card.append(frame, meta);
      card.addEventListener("click", () => openDetail(hit, card));
      grid.append(card);
    }
  }

  function figure(src, alt, size) {
    const frame = document.createElement("div");
    frame.className = "frame";
    const img = document.createElement("img");
    img.src = src;
    img.alt = alt;
    img.decoding = "async";
    const canvas = document.createElement("canvas");
    canvas.className = "heat";
    canvas.width = size;
    canvas.height = size;
    frame.append(img, canvas);
    return { frame, canvas };
  }

  // ------------------------------------------------------------------ heatmaps

  function jet(v) {
    const c = (x) => Math.max(0, Math.min(1, x)) * 255;
    return [c(1.5 - Math.abs(4 * v - 3)), c(1.5 - Math.abs(4 * v - 2)), c(1.5 - Math.abs(4 * v - 1))];
  }

  // Bilinear upsampling of the region grid (as torch's align_corners=False), coloured, alpha by heat.
  function paint(canvas, heatmap, marker = false) {
    canvas._heatmap = heatmap;
    canvas._marker = marker;
    const ctx = canvas.getContext("2d");
    const { width, height } = canvas;
    const { rows, cols, values } = heatmap;
    const opacity = Number($("opacity").value) / 100;
    const image = ctx.createImageData(width, height);
    const px = image.data;
    for (let y = 0; y < height; y++) {
      const sy = Math.min(Math.max((y + 0.5) * rows / height - 0.5, 0), rows - 1);
      const y0 = Math.floor(sy), y1 = Math.min(y0 + 1, rows - 1), fy = sy - y0;
      for (let x = 0; x < width; x++) {
        const sx = Math.min(Math.max((x + 0.5) * cols / width - 0.5, 0), cols - 1);
        const x0 = Math.floor(sx), x1 = Math.min(x0 + 1, cols - 1), fx = sx - x0;
        const v = (values[y0][x0] * (1 - fx) + values[y0][x1] * fx) * (1 - fy)
                + (values[y1][x0] * (1 - fx) + values[y1][x1] * fx) * fy;
        const [r, g, b] = jet(v);
        const o = (y * width + x) * 4;
        px[o] = r; px[o + 1] = g; px[o + 2] = b;
        px[o + 3] = Math.round(255 * opacity * (0.2 + 0.8 * v));
      }
    }
    ctx.putImageData(image, 0, 0);
    if (marker) {
      const [fx, fy] = heatmap.peak;
      const x = fx * width, y = fy * height, r = Math.max(4, width / 24);
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = Math.max(1.5, width / 128);
      ctx.beginPath();
      ctx.moveTo(x - r, y); ctx.lineTo(x + r, y); ctx.moveTo(x, y - r); ctx.lineTo(x, y + r);
      ctx.stroke();
    }
    canvas.dataset.drawn = "1";
  }

  // Match the canvas to the image's aspect once it is known (the grid covers the whole image).
  function paintLater(canvas, heatmap, img, marker = false) {
    const draw = () => {
      if (img.naturalWidth && img.naturalHeight) {
        const size = canvas.width;
        canvas.height = Math.max(1, Math.round(size * img.naturalHeight / img.naturalWidth));
      }
      paint(canvas, heatmap, marker);
    };
    paint(canvas, heatmap, marker);
    if (img.complete && img.naturalWidth) draw(); else img.addEventListener("load", draw, { once: true });
  }

  function repaintAll() {
    document.querySelectorAll("canvas.heat").forEach((canvas) => {
      if (canvas._heatmap) paint(canvas, canvas._heatmap, canvas._marker);
    });
  }

  // ------------------------------------------------------------------ word-by-word view

  function closeDetail() {
    state.detailSerial++;
    $("detail").hidden = true;
    document.querySelectorAll(".hit.selected").forEach((el) => el.classList.remove("selected"));
  }

  async function openDetail(hit, card) {
    const q = state.query;
    if (!q) return;
    const serial = ++state.detailSerial;
    document.querySelectorAll(".hit.selected").forEach((el) => el.classList.remove("selected"));
    card.classList.add("selected");
    const detail = $("detail");
    detail.hidden = false;
    $("detail-title").textContent = `#${hit.rank}: ${hit.name}`;
    $("detail-hint").textContent = "localizing…";
    $("segments").replaceChildren();
    const img = $("detail-image");
    img.src = hit.image_url + "?size=768";
    img.alt = hit.name;
    paintLater($("detail-canvas"), hit.heatmap, img, true);
    $("detail-caption").textContent = "whole query";
    try {
      let result;
      if (q.kind === "audio") {
        const form = new FormData();
        form.append("image", String(hit.image));
        form.append("file", q.wav, "query.wav");
        form.append("window", "0.5");
        result = await api("/api/localize/audio", { method: "POST", body: form });
      } else {
        result = await api("/api/localize/text", {
          method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ image: hit.image, text: q.text, voice: q.voice }),
        });
      }
      if (serial !== state.detailSerial) return;
      showSegments(result, hit);
    } catch (err) {
      if (serial === state.detailSerial) $("detail-hint").textContent = `localization failed: ${err.message}`;
    }
    detail.scrollIntoView({ behavior: "smooth", block: "nearest" });
  }

  // Each heatmap arrives min-max normalized with its raw range (low, high); put a query's words or
  // windows on one shared scale, so a silent window stays cold instead of lighting up on its own range.
  function onOneScale(segments) {
    if (!segments.length) return segments;
    const low = Math.min(...segments.map((s) => s.heatmap.low));
    const high = Math.max(...segments.map((s) => s.heatmap.high));
    const span = high - low || 1;
    return segments.map((s) => {
      const h = s.heatmap;
      const values = h.values.map((row) => row.map((v) => (h.low + v * (h.high - h.low) - low) / span));
      return { ...s, heatmap: { ...h, values, low, high } };
    });
  }

  function showSegments(result, hit) {
    const words = result.segment_kind === "word";
    $("detail-hint").textContent = words
      ? "Each word's heatmap (word times from the speech synthesizer). Click a word to show it large."
      : `Word times are unknown for recorded speech: one heatmap per ${(result.segments[0] ? result.segments[0].end - result.segments[0].start : 0.5).toFixed(1)} s of audio. Click one to show it large and hear it.`;
    const big = $("detail-canvas");
    const img = $("detail-image");
    const list = $("segments");
    list.replaceChildren();
    const choose = (button, heatmap, caption) => {
      list.querySelectorAll(".segment.active").forEach((el) => el.classList.remove("active"));
      button.classList.add("active");
      paintLater(big, heatmap, img, true);
      $("detail-caption").textContent = caption;
    };
    const entries = [{ label: "whole query", start: 0, end: result.query.duration, heatmap: result.whole, whole: true }]
      .concat(onOneScale(result.segments));
    entries.forEach((segment) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "segment" + (segment.whole ? " whole" : " word");
      button.dataset.label = segment.label;
      const { frame, canvas } = figure(hit.image_url + "?size=384", segment.label, 64);
      paintLater(canvas, segment.heatmap, frame.querySelector("img"));
      const meta = document.createElement("div");
      meta.className = "meta";
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = segment.label;
      const time = document.createElement("span");
      time.className = "time";
      time.textContent = `${segment.start.toFixed(2)}–${segment.end.toFixed(2)}s`;
      meta.append(label, time);
      button.append(frame, meta);
      const caption = segment.whole ? "whole query"
        : `“${segment.label}” (${segment.start.toFixed(2)}–${segment.end.toFixed(2)} s)`;
      button.addEventListener("click", () => {
        choose(button, segment.heatmap, caption);
        if (!segment.whole) playSegment(segment.start, segment.end);
      });
      list.append(button);
      if (segment.whole) button.classList.add("active");
    });
    $("detail-caption").textContent = `whole query · score ${result.score.toFixed(3)}`;
  }

  // ------------------------------------------------------------------ wiring

  function selectTab(name) {
    document.querySelectorAll(".tabs [role=tab]").forEach((tab) => {
      const on = tab.dataset.tab === name;
      tab.setAttribute("aria-selected", String(on));
      $(`panel-${tab.dataset.tab}`).hidden = !on;
    });
  }

  async function init() {
    document.querySelectorAll(".tabs [role=tab]").forEach((tab) => tab.addEventListener("click", () => selectTab(tab.dataset.tab)));
    $("record-button").addEventListener("click", toggleRecording);
    $("audio-file").addEventListener("change", async (event) => {
      const file = event.target.files && event.target.files[0];
      if (file) await audioQuery(file, "file");
    });
    $("panel-text").addEventListener("submit", async (event) => {
      event.preventDefault();
      const text = $("text-input").value.trim();
      if (!text) { say("type what is in the photo you are looking for", true); return; }
      state.query = { kind: "text", text, voice: $("voice").value };
      $("query-audio").hidden = true;
      $("query-text").textContent = `“${text}”`;
      $("query-info").hidden = false;
      const search = runSearch();
      speakQuery(text, state.query.voice, state.serial);
      await search;
    });
    $("k").addEventListener("change", () => { if (state.query) runSearch(); });
    $("show-heatmaps").addEventListener("change", (event) => document.body.classList.toggle("hide-heat", !event.target.checked));
    $("opacity").addEventListener("input", repaintAll);
    $("detail-close").addEventListener("click", closeDetail);
    try {
      const health = await api("/api/health");
      state.limits = health.limits;
      $("k").max = String(health.limits.max_k);
      $("text-input").maxLength = health.limits.max_text_chars;
      document.querySelectorAll(".max-seconds").forEach((el) => { el.textContent = String(health.limits.max_audio_seconds); });
      $("status").textContent = `${health.images} images indexed · ${health.checkpoint || "untrained model"}`;
      document.body.dataset.ready = "1";
    } catch (err) {
      $("status").textContent = `server unavailable: ${err.message}`;
    }
  }

  // exposed for tests and the console
  window.vgs = { encodeWav, decodeTo16k, state, onOneScale, shortName };
  init();
})();
