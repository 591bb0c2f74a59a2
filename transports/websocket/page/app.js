// Voxgraph browser client: microphone -> /ws (16 kHz PCM), server messages -> transcript, reply,
// status and gapless playback of bot audio. Plain JS, no build step. Protocol: protocol.py.
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
  ws: null,
  ctx: null,
  stream: null,
  capture: null,
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

function playPcm(buffer) {
  voxgraph.botAudioBytes += buffer.byteLength;
  voxgraph.botAudioChunks += 1;
  const ctx = state.ctx;
  if (!ctx || buffer.byteLength < 2) return;
  const ints = new Int16Array(buffer, 0, buffer.byteLength >> 1);
  const floats = new Float32Array(ints.length);
  for (let i = 0; i < ints.length; i++) floats[i] = ints[i] / 32768;
  const audio = ctx.createBuffer(1, floats.length, state.botRate);
  audio.copyToChannel(floats, 0);
  const source = ctx.createBufferSource();
  source.buffer = audio;
  source.connect(ctx.destination);
  const now = ctx.currentTime;
  if (state.nextTime < now + 0.01) state.nextTime = now + PLAY_AHEAD; // (re)start after a gap
  source.start(state.nextTime);
  state.nextTime += audio.duration;
  state.playing.add(source);
  source.onended = () => state.playing.delete(source);
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
}

// --- server messages ------------------------------------------------------------------------------

function onMessage(event) {
  if (event.data instanceof ArrayBuffer) {
    playPcm(event.data);
    return;
  }
  let message;
  try {
    message = JSON.parse(event.data);
  } catch (_) {
    return;
  }
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

// --- connection and microphone --------------------------------------------------------------------

function send(message) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(message));
}

async function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = new URL(`${scheme}://${location.host}/ws`);
  if (await authRequired()) url.searchParams.set("token", await socketToken());
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    let opened = false;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      opened = true;
      resolve(ws);
    };
    ws.onmessage = onMessage;
    ws.onclose = (event) => {
      if (opened) onClosed(ws, event);
      else whyRefused().then((reason) => reject(new Error(reason || CANNOT_CONNECT)));
    };
  });
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
  // Load the worklet first so the capture chain is connected the moment the microphone opens.
  await ctx.audioWorklet.addModule("/static/capture-worklet.js");
  const processing = !RAW_MIC;
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: {
      channelCount: 1,
      echoCancellation: processing,
      noiseSuppression: processing,
      autoGainControl: processing,
    },
  });
  const capture = new AudioWorkletNode(ctx, "capture", {
    numberOfInputs: 1,
    numberOfOutputs: 0,
    processorOptions: { targetRate: SAMPLE_RATE, chunkSamples: CHUNK_SAMPLES },
  });
  ctx.createMediaStreamSource(stream).connect(capture);
  capture.port.onmessage = (event) => onMicChunk(event.data);
  state.stream = stream;
  state.capture = capture;
}

function onMicChunk({ pcm, samples, level }) {
  ui.level.style.width = `${Math.min(100, Math.round(Math.sqrt(level) * 160))}%`;
  const ws = state.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  const gated = state.mode === "ptt" && !state.held;
  // Gated audio is sent as silence so the server's clock (and its VAD) keeps running.
  const chunk = gated ? new ArrayBuffer(samples * 2) : pcm;
  ws.send(chunk);
  voxgraph.micBytesSent += chunk.byteLength;
}

async function start() {
  if (state.running) return;
  if (state.starting) return state.starting;
  state.starting = (async () => {
    setStatus("connecting");
    state.ctx = new AudioContext();
    await state.ctx.resume();
    try {
      state.ws = await connect();
    } catch (error) {
      setStatus("error");
      const hint = error.message === CANNOT_CONNECT ? ". Is the server running?" : "";
      systemNote(`${error.message}${hint}`, "error");
      teardown();
      return;
    }
    state.running = true;
    updateControls();
    sendMode();
    // Open the microphone once the conversation is ready (models loaded): nothing said is lost.
    await new Promise((resolve) => (state.onReady = resolve));
    if (!state.running) return;
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

function onClosed(ws, event) {
  if (ws !== state.ws) return;
  if (event.code === 1013 || event.code === 1001 || event.code === 1011 || event.code === 1009) {
    if (voxgraph.status !== "ended") setStatus("error");
  } else if (voxgraph.status !== "error") {
    setStatus("ended");
  }
  teardown();
  loadConversations();
}

function releaseMicrophone() {
  if (state.stream) state.stream.getTracks().forEach((track) => track.stop());
  if (state.capture) state.capture.port.onmessage = null;
  state.stream = null;
  state.capture = null;
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
  if (state.ctx) state.ctx.close().catch(() => {});
  state.ctx = null;
  state.ws = null;
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
  if (state.mode === "free") send({ type: "start" });
  else send({ type: "ptt", pressed: state.held });
}

async function press() {
  if (state.held) return;
  if (state.mode !== "ptt") setMode("ptt");
  state.held = true;
  ui.ptt.setAttribute("aria-pressed", "true");
  stopPlayback(); // talking over the bot: silence it here at once
  if (!state.running) await start();
  if (state.held) send({ type: "ptt", pressed: true });
}

function release() {
  if (!state.held) return;
  state.held = false;
  ui.ptt.setAttribute("aria-pressed", "false");
  send({ type: "ptt", pressed: false });
}

function updateControls() {
  ui.start.disabled = false;
  ui.start.textContent = state.running ? "Stop" : "Start";
  ui.start.classList.toggle("danger", state.running);
  ui.ptt.classList.toggle("active-mode", state.mode === "ptt");
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

setStatus("idle");
updateControls();
loadConversations();
