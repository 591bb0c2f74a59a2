// Voxgraph browser client: microphone -> server, server messages -> transcript, reply, status, and the
// bot's voice played. Plain JS, no build step. Protocol: protocol.py.
//
// Transport: WebRTC by default (webrtc.js: the microphone as an Opus track with the browser's echo
// cancellation, noise suppression and gain control; the bot's voice as the server's track; the same JSON
// messages on a data channel). The websocket (/ws: 16 kHz PCM up, bot PCM down, played gaplessly here)
// is used when WebRTC is missing or does not connect, or when chosen: the Connection toggle (kept in
// this browser) or ?transport=websocket|webrtc in the address.
//
// Access: GET /api/auth says whether the server needs a session token (server.auth: api_key). If so, a
// page that embeds this script may define window.voxgraphSessionToken() — returning a token, or a
// promise of one, fresh from the site's own backend, which mints it with an API key (POST
// /api/session-token) — and it is called for every conversation. Otherwise the token in the page's
// address (#token=...) is used: it opens one conversation and lists past ones until it expires.
"use strict";

const SAMPLE_RATE = 16000;
const CHUNK_SAMPLES = 320; // 20 ms
const PLAY_AHEAD = 0.05; // seconds of jitter buffer before the first bot chunk plays
const params = new URLSearchParams(location.search);
const RAW_MIC = params.get("raw") === "1"; // tests: no echo cancellation, noise suppression or AGC
const TRANSPORTS = ["webrtc", "websocket"];
const TRANSPORT_KEY = "voxgraph.transport";
const STATS_MS = 1000; // how often the WebRTC link's round-trip time, jitter and loss are read
const DUCK_S = 0.3; // after an interruption, WebRTC audio already in the browser's buffer stays muted
const METER_HISTORY = 6000; // level reports kept per meter (~64 s)
const NEED_TOKEN =
  "This server needs a session token: open the page with #token=… or define window.voxgraphSessionToken()";
const CANNOT_CONNECT = "Cannot reach the server (or it refused the connection)";

// Counters and the conversation as seen by the page, for tests and debugging.
const voxgraph = (window.voxgraph = {
  status: "idle",
  sessionId: null,
  micBytesSent: 0,
  botAudioBytes: 0,
  botAudioChunks: 0,
  transcripts: [],
  interim: "",
  interims: 0,
  replies: [],
  metrics: [],
  errors: [],
  draining: null, // seconds the conversation may go on, once the server said it is draining
  transport: null, // "webrtc" or "websocket", once connected
  fallback: null, // why WebRTC was not used, when the websocket was used instead of it
  link: null, // the WebRTC link's latest stats: rtt_ms, jitter_ms, loss_pct, jitter_buffer_ms ...
  linkHistory: [],
  serverLink: null, // the link as the server measured it (fields of its metrics message)
  marks: {}, // set-up times (page clock, ms): start, offered, answered, open, ready, microphone
  events: [], // server messages as they arrived: {type, at}
  // Meters of the microphone (as captured) and of the bot's voice (as played): levels [time, rms, peak]
  // and onsets, in audio-clock seconds; wallTime() turns those into page-clock ms.
  meters: { mic: { levels: [], onsets: [] }, bot: { levels: [], onsets: [] } },
  clockOffsetMs: null,
  wallTime: (seconds) => seconds * 1000 + voxgraph.clockOffsetMs,
});

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  statusText: $("status-text"),
  latency: $("latency"),
  log: $("log"),
  empty: $("empty"),
  start: $("start"),
  modeFree: $("mode-free"),
  modePtt: $("mode-ptt"),
  ptt: $("ptt"),
  level: $("level"),
  composer: $("composer"),
  text: $("text"),
  conversations: $("conversations"),
  refresh: $("refresh"),
  session: $("session"),
  transportFree: $("transport-webrtc"),
  transportSocket: $("transport-websocket"),
  linkLabel: $("link-label"),
  link: $("link"),
};

const STATUS_TEXT = {
  idle: "Ready",
  connecting: "Connecting…",
  starting: "Loading models…",
  listening: "Listening",
  hearing: "Hearing you",
  thinking: "Thinking…",
  speaking: "Speaking",
  ended: "Conversation saved",
  error: "Error",
};

const state = {
  link: null, // the connection: webrtc.js's Link or the websocket's (same send/close/isOpen)
  transport: chosenTransport(),
  ctx: null,
  stream: null,
  capture: null,
  micMeter: null,
  bus: null, // every bot sound goes through this gain, metered, to the speakers
  botMeter: null,
  remote: null, // WebRTC: the <audio> element holding the bot's track (Chrome feeds WebAudio only then)
  statsTimer: null,
  running: false,
  starting: null, // the promise of a start in progress
  onReady: null, // resolves the start's wait for the conversation to be ready
  mode: "free", // "free" (hands-free) or "ptt" (hold to talk)
  held: false,
  botRate: 24000,
  nextTime: 0,
  playing: new Set(),
  userBubble: null, // the user's utterance being transcribed
  botBubble: null, // the reply being streamed
  pendingLatency: null,
};

// --- access: session tokens, when the server asks for them ---------------------------------------

const access = {
  required: null, // whether the server needs a token (null until /api/auth has answered)
  token: null, // the latest token: it reads the API until it expires
  fromUrl: new URLSearchParams(location.hash.slice(1)).get("token"), // opens one conversation
};
if (access.fromUrl) history.replaceState(null, "", location.pathname + location.search); // out of sight

async function authRequired() {
  if (access.required === null) {
    try {
      const response = await fetch("/api/auth", { cache: "no-store" });
      access.required = response.ok && (await response.json()).auth !== "none";
    } catch (_) {
      access.required = false; // an older server: no auth
    }
  }
  return access.required;
}

async function hookToken() {
  if (typeof window.voxgraphSessionToken !== "function") return null;
  const token = await window.voxgraphSessionToken();
  return typeof token === "string" && token ? token : null;
}

// A token for /ws: each is good for one conversation.
async function socketToken() {
  let token = await hookToken();
  if (!token && access.fromUrl) {
    token = access.fromUrl;
    access.fromUrl = null;
  }
  if (!token) throw new Error(NEED_TOKEN);
  access.token = token;
  return token;
}

// A token for reading the API (a used one still reads until it expires); `fresh` asks the hook anew.
async function readToken(fresh) {
  if (!fresh && (access.token || access.fromUrl)) return access.token || access.fromUrl;
  const token = await hookToken();
  if (token) access.token = token;
  return token || access.token || access.fromUrl;
}

async function apiFetch(path) {
  if (!(await authRequired())) return fetch(path, { cache: "no-store" });
  const get = (token) =>
    fetch(path, { cache: "no-store", headers: token ? { Authorization: `Bearer ${token}` } : {} });
  const response = await get(await readToken(false));
  if (response.status !== 401 || typeof window.voxgraphSessionToken !== "function") return response;
  return get(await readToken(true)); // expired: one more try with a fresh token
}

// A download link carries the token in its query (a link cannot send a header).
function withToken(href) {
  const token = access.required ? access.token || access.fromUrl : null;
  return token ? `${href}?token=${encodeURIComponent(token)}` : href;
}

// --- status and conversation log ------------------------------------------------------------------

function setStatus(name) {
  voxgraph.status = name;
  ui.status.dataset.state = name;
  ui.statusText.textContent = STATUS_TEXT[name] || name;
}

function bubble(role, text, extraClass) {
  ui.empty.hidden = true;
  const row = document.createElement("div");
  row.className = `msg ${role}${extraClass ? " " + extraClass : ""}`;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "user" ? "You" : role === "bot" ? "Assistant" : "";
  const body = document.createElement("div");
  body.className = "body";
  body.textContent = text;
  const meta = document.createElement("div");
  meta.className = "meta";
  row.append(who, body, meta);
  ui.log.append(row);
  scrollDown();
  return row;
}

function scrollDown() {
  ui.log.scrollTop = ui.log.scrollHeight;
}

function systemNote(text, kind) {
  const row = bubble("note", text, kind);
  row.querySelector(".who").remove();
  return row;
}

function showTranscript(text, final) {
  if (!state.userBubble) state.userBubble = bubble("user", "", "interim");
  const row = state.userBubble;
  row.querySelector(".body").textContent = text;
  if (final) {
    row.classList.remove("interim");
    state.userBubble = null;
    voxgraph.transcripts.push(text);
    voxgraph.interim = "";
  } else {
    voxgraph.interim = text;
    voxgraph.interims += 1;
  }
  scrollDown();
}

function showReply(text, final) {
  if (!state.botBubble) state.botBubble = bubble("bot", "", "streaming");
  const row = state.botBubble;
  const body = row.querySelector(".body");
  body.textContent = final ? text : body.textContent + text;
  if (state.pendingLatency !== null) showLatency(row, state.pendingLatency);
  if (final) {
    row.classList.remove("streaming");
    voxgraph.replies.push(text);
    state.botBubble = null;
  }
  scrollDown();
}

function showLatency(row, ms) {
  row.querySelector(".meta").textContent = `${Math.round(ms)} ms voice to voice`;
  state.pendingLatency = null;
}

function onMetrics(ms) {
  voxgraph.metrics.push(ms);
  ui.latency.textContent = `${Math.round(ms)} ms`;
  const rows = ui.log.querySelectorAll(".msg.bot");
  const last = rows[rows.length - 1];
  // The reply's text usually streams before its first audio: label that reply, or the next one.
  if (last && (last === state.botBubble || !last.querySelector(".meta").textContent)) showLatency(last, ms);
  else state.pendingLatency = ms;
}

// --- bot audio ------------------------------------------------------------------------------------

// Every bot sound (websocket PCM, or the WebRTC track) goes through one gain node, metered, to the
// speakers: an interruption silences both the same way, and the meter hears what the user hears.
async function setUpAudio(ctx) {
  await ctx.audioWorklet.addModule("/static/meter-worklet.js");
  state.bus = ctx.createGain();
  state.bus.connect(ctx.destination);
  state.botMeter = meter(ctx, "bot");
  state.bus.connect(state.botMeter);
}

// A level meter feeding voxgraph.meters[name]; its silent output keeps the audio graph pulling it.
function meter(ctx, name) {
  const node = new AudioWorkletNode(ctx, "meter", { numberOfInputs: 1, numberOfOutputs: 1 });
  const mute = ctx.createGain();
  mute.gain.value = 0;
  node.connect(mute).connect(ctx.destination);
  const into = voxgraph.meters[name];
  node.port.onmessage = ({ data }) => {
    if (typeof data.onset === "number") {
      into.onsets.push(data.onset);
      return;
    }
    // The audio clock -> page clock: the smallest offset seen is the one with the least message delay.
    const offset = now() - data.time * 1000;
    if (voxgraph.clockOffsetMs === null || offset < voxgraph.clockOffsetMs) voxgraph.clockOffsetMs = offset;
    into.levels.push([data.time, data.rms, data.peak]);
    if (into.levels.length > 2 * METER_HISTORY) into.levels.splice(0, METER_HISTORY);
    if (name === "mic") ui.level.style.width = `${Math.min(100, Math.round(Math.sqrt(data.rms) * 160))}%`;
  };
  return node;
}

function now() {
  return performance.timeOrigin + performance.now();
}

function playPcm(buffer) {
  voxgraph.botAudioBytes += buffer.byteLength;
  voxgraph.botAudioChunks += 1;
  const ctx = state.ctx;
  if (!ctx || !state.bus || buffer.byteLength < 2) return;
  const ints = new Int16Array(buffer, 0, buffer.byteLength >> 1);
  const floats = new Float32Array(ints.length);
  for (let i = 0; i < ints.length; i++) floats[i] = ints[i] / 32768;
  const audio = ctx.createBuffer(1, floats.length, state.botRate);
  audio.copyToChannel(floats, 0);
  const source = ctx.createBufferSource();
  source.buffer = audio;
  source.connect(state.bus);
  const now = ctx.currentTime;
  if (state.nextTime < now + 0.01) state.nextTime = now + PLAY_AHEAD; // (re)start after a gap
  source.start(state.nextTime);
  state.nextTime += audio.duration;
  state.playing.add(source);
  source.onended = () => state.playing.delete(source);
}

// WebRTC: the server's track plays through the bus. Chrome gives WebAudio silence from a remote track
// that no media element holds, so a muted <audio> element holds it too.
function playTrack(stream) {
  const ctx = state.ctx;
  if (!ctx || !state.bus) return;
  const element = new Audio();
  element.muted = true;
  element.srcObject = stream;
  element.play().catch(() => {});
  state.remote = element;
  ctx.createMediaStreamSource(stream).connect(state.bus);
}

function stopPlayback() {
  for (const source of state.playing) {
    try {
      source.stop();
    } catch (_) {
      /* already stopped */
    }
  }
  state.playing.clear();
  state.nextTime = 0;
  // WebRTC: the server has dropped what it had not sent; what already reached this browser is muted.
  if (state.bus && state.link && state.link.kind === "webrtc") {
    const t = state.ctx.currentTime;
    state.bus.gain.cancelScheduledValues(t);
    state.bus.gain.setValueAtTime(0, t);
    state.bus.gain.setValueAtTime(1, t + DUCK_S);
  }
}

// --- server messages ------------------------------------------------------------------------------

function onMessage(event) {
  if (event.data instanceof ArrayBuffer) {
    playPcm(event.data);
    return;
  }
  onText(event.data);
}

function onText(text) {
  let message;
  try {
    message = JSON.parse(text);
  } catch (_) {
    return;
  }
  if (voxgraph.events.length < 2000) voxgraph.events.push({ type: message.type, at: now() });
  switch (message.type) {
    case "session":
      voxgraph.sessionId = message.session_id;
      ui.session.textContent = `Session ${message.session_id}`;
      break;
    case "status":
      if (message.state === "draining") {
        onDraining(message.deadline_s);
        break;
      }
      setStatus(message.state);
      if (message.state !== "starting") ready();
      break;
    case "audio_format":
      state.botRate = message.sample_rate;
      break;
    case "transcript":
      showTranscript(message.text, message.final);
      break;
    case "assistant_text":
      showReply(message.text, message.final);
      break;
    case "interrupted":
      stopPlayback();
      if (state.botBubble) {
        state.botBubble.classList.add("cut");
        state.botBubble.classList.remove("streaming");
        state.botBubble = null;
      }
      break;
    case "metrics":
      if (typeof message.voice_to_voice_ms === "number") onMetrics(message.voice_to_voice_ms);
      onServerLink(message);
      break;
    case "error":
      voxgraph.errors.push(message.message);
      systemNote(message.message, "error");
      break;
  }
}

// The server is restarting: this conversation goes on until the deadline; the next one goes elsewhere.
function onDraining(seconds) {
  voxgraph.draining = seconds;
  const left = typeof seconds === "number" ? ` for up to ${seconds} s` : "";
  systemNote(`The server is restarting; this conversation can go on${left}.`, "draining");
}

// --- link quality (WebRTC) ------------------------------------------------------------------------

const LINK_FIELDS = ["rtt_ms", "jitter_ms", "loss", "packets_lost"];

// The server's view of the link, when its metrics message carries one.
function onServerLink(message) {
  const seen = {};
  for (const name of LINK_FIELDS) if (typeof message[name] === "number") seen[name] = message[name];
  if (Object.keys(seen).length) voxgraph.serverLink = seen;
}

async function readStats() {
  const link = state.link;
  if (!link || link.kind !== "webrtc" || !link.isOpen()) return;
  const sample = await link.stats();
  voxgraph.link = sample;
  voxgraph.linkHistory.push(sample);
  if (voxgraph.linkHistory.length > 600) voxgraph.linkHistory.splice(0, 300);
  showLink(sample);
}

function showLink(sample) {
  const parts = [];
  const round = (value, digits = 0) => Number(value).toFixed(digits);
  if (sample.rtt_ms !== null) parts.push(`RTT ${round(sample.rtt_ms)} ms`);
  if (sample.jitter_ms !== null) parts.push(`jitter ${round(sample.jitter_ms)} ms`);
  if (sample.loss_pct !== null) parts.push(`loss ${round(sample.loss_pct, 1)}%`);
  ui.link.textContent = parts.length ? parts.join(" · ") : "—";
}

function showTransport(kind) {
  voxgraph.transport = kind;
  ui.linkLabel.textContent = kind === "webrtc" ? "WebRTC" : kind === "websocket" ? "WebSocket" : "Link";
  if (kind !== "webrtc") ui.link.textContent = kind ? "" : "—";
}

// --- connection and microphone --------------------------------------------------------------------

function chosenTransport() {
  const asked = params.get("transport") === "ws" ? "websocket" : params.get("transport");
  if (TRANSPORTS.includes(asked)) return asked;
  try {
    const kept = localStorage.getItem(TRANSPORT_KEY);
    if (TRANSPORTS.includes(kept)) return kept;
  } catch (_) {
    // storage blocked
  }
  return "webrtc";
}

function setTransport(kind) {
  if (state.running || state.starting) return;
  state.transport = kind;
  try {
    localStorage.setItem(TRANSPORT_KEY, kind);
  } catch (_) {
    // storage blocked: the choice lasts for this page
  }
  updateControls();
}

function send(message) {
  if (state.link && state.link.isOpen()) state.link.send(message);
}

// The websocket as a link: the same send/close/isOpen as WebRTC's, plus the microphone's PCM.
function socketLink(ws) {
  return {
    kind: "websocket",
    ws,
    isOpen: () => ws.readyState === WebSocket.OPEN,
    send: (message) => ws.readyState === WebSocket.OPEN && ws.send(JSON.stringify(message)),
    close: () => ws.close(),
  };
}

async function connectSocket() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = new URL(`${scheme}://${location.host}/ws`);
  if (await authRequired()) url.searchParams.set("token", await socketToken());
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const link = socketLink(ws);
    let opened = false;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      opened = true;
      voxgraph.marks.open = now();
      resolve(link);
    };
    ws.onmessage = onMessage;
    ws.onclose = (event) => {
      if (opened) onClosed(link, event.code === 1013 || event.code === 1001 || event.code === 1011 || event.code === 1009);
      else whyRefused().then((reason) => reject(new Error(reason || CANNOT_CONNECT)));
    };
  });
}

async function connectWebRTC() {
  const token = (await authRequired()) ? await socketToken() : null;
  const iceServers = typeof window.voxgraphIceServers === "function" ? await window.voxgraphIceServers() : [];
  const rtc = window.VoxgraphWebRTC;
  const handlers = {
    onMessage: onText,
    onTrack: playTrack,
    onClose: (reason, link) => onClosed(link, reason === "failed"),
  };
  const link = await rtc.open({ token, iceServers, handlers });
  Object.assign(voxgraph.marks, link.marks);
  state.statsTimer = setInterval(() => readStats().catch(() => {}), STATS_MS);
  return link;
}

// WebRTC first unless the websocket was chosen; the websocket when WebRTC cannot be had. A server that
// refuses the call (busy, draining, loading, no token) is not asked again over the websocket.
async function connect() {
  const rtc = window.VoxgraphWebRTC;
  if (state.transport === "webrtc" && rtc) {
    try {
      return await connectWebRTC();
    } catch (error) {
      if (!(error instanceof rtc.FallBack)) {
        const reason = error.status === 503 ? await whyRefused() : null;
        throw new Error(reason || error.message);
      }
      voxgraph.fallback = error.message;
      systemNote(`WebRTC unavailable (${error.message}): using the websocket.`, "fallback");
    }
  }
  return connectSocket();
}

// A handshake that fails (close 1006, no session) tells the page nothing: a server that refused it
// with HTTP 503 (loading, draining, full) says why on /readyz. A proxy may hide /readyz: then null.
async function whyRefused() {
  try {
    const response = await fetch("/readyz", { cache: "no-store" });
    const body = await response.json();
    const reason = response.status === 503 && body.reason ? body.reason : "";
    if (reason.startsWith("full: ")) return `Server busy: ${reason.slice(6)}; try again shortly`;
    if (reason) return `Server not ready (${reason}); try again shortly`;
  } catch (_) {
    // unreachable, or not a Voxgraph answer
  }
  return null;
}

async function openMicrophone() {
  const ctx = state.ctx;
  const link = state.link;
  // Load the worklet first so the capture chain is connected the moment the microphone opens.
  if (link.kind === "websocket") await ctx.audioWorklet.addModule("/static/capture-worklet.js");
  const processing = !RAW_MIC;
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: {
      channelCount: 1,
      echoCancellation: processing,
      noiseSuppression: processing,
      autoGainControl: processing,
    },
  });
  voxgraph.marks.microphone = now();
  const source = ctx.createMediaStreamSource(stream);
  state.micMeter = meter(ctx, "mic");
  source.connect(state.micMeter);
  state.stream = stream;
  if (link.kind === "webrtc") {
    gateMicrophone();
    await link.setMicrophone(stream.getAudioTracks()[0]);
    return;
  }
  const capture = new AudioWorkletNode(ctx, "capture", {
    numberOfInputs: 1,
    numberOfOutputs: 0,
    processorOptions: { targetRate: SAMPLE_RATE, chunkSamples: CHUNK_SAMPLES },
  });
  source.connect(capture);
  capture.port.onmessage = (event) => onMicChunk(event.data);
  state.capture = capture;
}

function onMicChunk({ pcm, samples }) {
  const link = state.link;
  if (!link || link.kind !== "websocket" || !link.isOpen()) return;
  // Gated audio is sent as silence so the server's clock (and its VAD) keeps running.
  const chunk = gated() ? new ArrayBuffer(samples * 2) : pcm;
  link.ws.send(chunk);
  voxgraph.micBytesSent += chunk.byteLength;
}

function gated() {
  return state.mode === "ptt" && !state.held;
}

// WebRTC: a disabled track sends silence, as the websocket sends zeros while hold-to-talk is released.
function gateMicrophone() {
  const track = state.stream && state.link && state.link.kind === "webrtc" && state.stream.getAudioTracks()[0];
  if (track) track.enabled = !gated();
}

async function start() {
  if (state.running) return;
  if (state.starting) return state.starting;
  state.starting = (async () => {
    setStatus("connecting");
    voxgraph.marks = { start: now() };
    voxgraph.fallback = null;
    state.ctx = new AudioContext();
    await state.ctx.resume();
    try {
      await setUpAudio(state.ctx);
      state.link = await connect();
    } catch (error) {
      setStatus("error");
      const hint = error.message === CANNOT_CONNECT ? ". Is the server running?" : "";
      systemNote(`${error.message}${hint}`, "error");
      teardown();
      return;
    }
    showTransport(state.link.kind);
    state.running = true;
    updateControls();
    sendMode();
    // Open the microphone once the conversation is ready (models loaded): nothing said is lost.
    await new Promise((resolve) => (state.onReady = resolve));
    if (!state.running) return;
    voxgraph.marks.ready = now();
    try {
      await openMicrophone();
    } catch (error) {
      systemNote(`Microphone unavailable (${error.message}). You can still type.`, "error");
    }
  })();
  try {
    await state.starting;
  } finally {
    state.starting = null;
  }
}

function stop() {
  if (!state.running) return;
  send({ type: "stop" }); // the server finishes the reply's text, saves, then closes
  releaseMicrophone();
  stopPlayback(); // stopping means silence now
  ui.start.disabled = true;
}

// The server closed the conversation (after a stop, an idle timeout or a drain), or the link failed.
function onClosed(link, failed) {
  if (!link || link !== state.link) return;
  if (failed) {
    if (voxgraph.status !== "ended") setStatus("error");
    if (link.kind === "webrtc") systemNote("The connection was lost.", "error");
  } else if (voxgraph.status !== "error") {
    setStatus("ended");
  }
  teardown();
  loadConversations();
}

function releaseMicrophone() {
  if (state.stream) state.stream.getTracks().forEach((track) => track.stop());
  if (state.capture) state.capture.port.onmessage = null;
  if (state.micMeter) state.micMeter.port.onmessage = null;
  state.stream = null;
  state.capture = null;
  state.micMeter = null;
  ui.level.style.width = "0%";
}

function ready() {
  const resolve = state.onReady;
  state.onReady = null;
  if (resolve) resolve();
}

function teardown() {
  state.running = false;
  ready(); // a start still waiting for the conversation gives up
  releaseMicrophone();
  stopPlayback();
  clearInterval(state.statsTimer);
  state.statsTimer = null;
  if (state.link) state.link.close();
  if (state.remote) state.remote.srcObject = null;
  if (state.ctx) state.ctx.close().catch(() => {});
  state.ctx = null;
  state.bus = null;
  state.botMeter = null;
  state.remote = null;
  state.link = null;
  state.held = false;
  state.userBubble = null;
  state.botBubble = null;
  updateControls();
}

// --- hands-free / hold to talk --------------------------------------------------------------------

function setMode(mode) {
  state.mode = mode;
  ui.modeFree.setAttribute("aria-checked", String(mode === "free"));
  ui.modePtt.setAttribute("aria-checked", String(mode === "ptt"));
  sendMode();
  updateControls();
}

function sendMode() {
  gateMicrophone();
  if (state.mode === "free") send({ type: "start" });
  else send({ type: "ptt", pressed: state.held });
}

async function press() {
  if (state.held) return;
  if (state.mode !== "ptt") setMode("ptt");
  state.held = true;
  gateMicrophone();
  ui.ptt.setAttribute("aria-pressed", "true");
  stopPlayback(); // talking over the bot: silence it here at once
  if (!state.running) await start();
  if (state.held) send({ type: "ptt", pressed: true });
}

function release() {
  if (!state.held) return;
  state.held = false;
  gateMicrophone();
  ui.ptt.setAttribute("aria-pressed", "false");
  send({ type: "ptt", pressed: false });
}

function updateControls() {
  ui.start.disabled = false;
  ui.start.textContent = state.running ? "Stop" : "Start";
  ui.start.classList.toggle("danger", state.running);
  ui.ptt.classList.toggle("active-mode", state.mode === "ptt");
  const busy = state.running || Boolean(state.starting);
  ui.transportFree.setAttribute("aria-checked", String(state.transport === "webrtc"));
  ui.transportSocket.setAttribute("aria-checked", String(state.transport === "websocket"));
  ui.transportFree.disabled = busy;
  ui.transportSocket.disabled = busy;
}

// --- past conversations ---------------------------------------------------------------------------

function formatTime(value) {
  if (value === null || value === undefined || value === "") return null;
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

function describeConversation(item) {
  const started = formatTime(item.start_time);
  const ended = formatTime(item.end_time);
  const when = started ? started.toLocaleString([], { dateStyle: "medium", timeStyle: "short" }) : item.id;
  const parts = [`${item.messages} message${item.messages === 1 ? "" : "s"}`];
  if (started && ended && ended >= started) {
    const seconds = Math.round((ended - started) / 1000);
    parts.push(seconds >= 60 ? `${Math.floor(seconds / 60)} min ${seconds % 60} s` : `${seconds} s`);
  }
  return { when, detail: parts.join(" · ") };
}

function link(href, text) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  return a;
}

async function loadConversations() {
  let items;
  try {
    const response = await apiFetch("/api/conversations");
    if (response.status === 401) throw new Error("Past conversations need a fresh session token.");
    if (!response.ok) throw new Error("Cannot load conversations.");
    items = await response.json();
  } catch (error) {
    ui.conversations.replaceChildren(Object.assign(document.createElement("li"), {
      className: "muted",
      textContent: error.message.startsWith("Past") ? error.message : "Cannot load conversations.",
    }));
    return;
  }
  if (!items.length) {
    ui.conversations.replaceChildren(Object.assign(document.createElement("li"), {
      className: "muted",
      textContent: "None yet: finished conversations appear here.",
    }));
    return;
  }
  ui.conversations.replaceChildren(
    ...items.map((item) => {
      const li = document.createElement("li");
      const { when, detail } = describeConversation(item);
      const title = Object.assign(document.createElement("div"), { className: "conv-title", textContent: when });
      const info = Object.assign(document.createElement("div"), { className: "conv-detail", textContent: detail });
      const links = Object.assign(document.createElement("div"), { className: "conv-links" });
      const base = `/api/conversations/${encodeURIComponent(item.id)}`;
      links.append(link(withToken(base), "transcript"));
      for (const file of item.audio) {
        links.append(link(withToken(`${base}/audio/${encodeURIComponent(file)}`), file));
      }
      li.append(title, info, links);
      return li;
    }),
  );
}

// --- wiring ---------------------------------------------------------------------------------------

ui.start.addEventListener("click", () => (state.running ? stop() : start()));
ui.modeFree.addEventListener("click", () => setMode("free"));
ui.modePtt.addEventListener("click", () => setMode("ptt"));
ui.ptt.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  ui.ptt.setPointerCapture(event.pointerId);
  press();
});
for (const name of ["pointerup", "pointercancel", "lostpointercapture"]) ui.ptt.addEventListener(name, release);
document.addEventListener("keydown", (event) => {
  if (event.code !== "Space" || event.repeat || event.target === ui.text) return;
  event.preventDefault();
  press();
});
document.addEventListener("keyup", (event) => {
  if (event.code !== "Space" || event.target === ui.text) return;
  event.preventDefault();
  release();
});
window.addEventListener("blur", release);
ui.composer.addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = ui.text.value.trim();
  if (!text) return;
  ui.text.value = "";
  if (!state.running) await start();
  if (!state.running) return;
  const row = bubble("user", text, "typed");
  row.querySelector(".meta").textContent = "typed";
  send({ type: "text", text });
});
ui.refresh.addEventListener("click", loadConversations);
ui.transportFree.addEventListener("click", () => setTransport("webrtc"));
ui.transportSocket.addEventListener("click", () => setTransport("websocket"));
// Leaving the page ends a WebRTC call at once (the server would otherwise wait for the heartbeat).
window.addEventListener("pagehide", () => state.link && state.link.kind === "webrtc" && state.link.close());

setStatus("idle");
showTransport(null);
updateControls();
loadConversations();
