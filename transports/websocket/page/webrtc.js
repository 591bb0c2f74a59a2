// WebRTC link to the server: the microphone as an Opus track, the bot's voice as the server's track, and
// the /ws JSON messages on a data channel labelled "voxgraph". Signalling is one HTTP exchange:
// POST /api/offer {sdp, type: "offer"} -> {sdp, type: "answer", session}, with the page's full ICE
// candidate list in the offer (the server answers with all of its own). A ping every second on the
// data channel tells the server the page is still there: a tab that vanishes is noticed in seconds,
// not after ICE's ~30 s consent timeout.
"use strict";

(() => {
  const GATHER_TIMEOUT_MS = 2000; // loopback gathers in ~130 ms; a real network may need STUN replies
  const CONNECT_TIMEOUT_MS = 8000; // offer answered -> data channel open, else the websocket is used
  const HEARTBEAT_MS = 1000;

  // This browser or server cannot do WebRTC (or it did not connect): the websocket should be tried.
  class FallBack extends Error {}

  // The server answered the offer with a refusal (busy, draining, loading, no token): not a reason to
  // try the websocket, which would be refused the same way.
  class Refused extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  function gathered(pc, timeoutMs) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        pc.removeEventListener("icegatheringstatechange", check);
        resolve(); // on timeout, offer what was gathered so far
      };
      const check = () => pc.iceGatheringState === "complete" && done();
      const timer = setTimeout(done, timeoutMs);
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  async function exchange(pc, token, marks) {
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    let response;
    try {
      response = await fetch("/api/offer", {
        method: "POST",
        headers,
        cache: "no-store",
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
      });
    } catch (error) {
      throw new FallBack(`the offer did not reach the server (${error.message})`);
    }
    marks.answered = now();
    if (response.status === 404 || response.status === 405 || response.status === 501) {
      throw new FallBack("this server does not take WebRTC");
    }
    if (!response.ok) {
      let reason = "";
      try {
        const body = await response.json();
        reason = body.error || body.reason || body.message || "";
      } catch (_) {
        // not JSON
      }
      throw new Refused(reason || `the server refused the call (HTTP ${response.status})`, response.status);
    }
    return response.json();
  }

  function now() {
    return performance.timeOrigin + performance.now();
  }

  function opened(channel, pc, timeoutMs) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => fail("no connection within " + timeoutMs / 1000 + " s"), timeoutMs);
      function fail(why) {
        clearTimeout(timer);
        reject(new FallBack(why));
      }
      channel.addEventListener("open", () => {
        clearTimeout(timer);
        resolve();
      });
      pc.addEventListener("connectionstatechange", () => {
        if (pc.connectionState === "failed") fail("the connection failed (ICE or DTLS)");
      });
    });
  }

  // Opens a conversation. `handlers`: onMessage(text), onTrack(stream), onClose(reason, link) with
  // reason "closed" or "failed". Resolves to the link once the data channel is open; rejects with FallBack or Refused.
  async function open({ token, iceServers, handlers }) {
    if (typeof RTCPeerConnection !== "function") throw new FallBack("this browser has no WebRTC");
    const marks = { offer: now() };
    const pc = new RTCPeerConnection({ iceServers: iceServers || [] });
    // A transceiver now, the microphone later (replaceTrack needs no renegotiation): the microphone
    // opens once the conversation is ready, as on the websocket, so nothing said is lost to loading.
    const transceiver = pc.addTransceiver("audio", { direction: "sendrecv" });
    const channel = pc.createDataChannel("voxgraph", { ordered: true });
    pc.ontrack = (event) => handlers.onTrack(event.streams[0] || new MediaStream([event.track]));
    let answer;
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc, GATHER_TIMEOUT_MS);
      marks.offered = now();
      answer = await exchange(pc, token, marks);
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      await opened(channel, pc, CONNECT_TIMEOUT_MS);
    } catch (error) {
      pc.close();
      throw error instanceof FallBack || error instanceof Refused ? error : new FallBack(error.message);
    }
    marks.open = now();
    return new Link(pc, channel, transceiver.sender, answer.session || null, marks, handlers);
  }

  class Link {
    constructor(pc, channel, sender, session, marks, handlers) {
      this.kind = "webrtc";
      this.pc = pc;
      this.channel = channel;
      this.sender = sender;
      this.session = session;
      this.marks = marks;
      this.pings = []; // send times of pings not yet answered
      this.heartbeatRtt = null;
      this.closed = false;
      this.previous = null; // the last stats sample, for per-interval loss
      channel.onmessage = (event) => {
        if (typeof event.data !== "string") return;
        if (event.data.includes('"pong"') && this.onPong(event.data)) return;
        handlers.onMessage(event.data);
      };
      const end = (reason) => {
        if (this.closed) return;
        this.close();
        handlers.onClose(reason, this);
      };
      channel.onclose = () => end("closed");
      pc.addEventListener("connectionstatechange", () => {
        if (pc.connectionState === "failed") end("failed");
        else if (pc.connectionState === "closed") end("closed");
      });
      this.heartbeat = setInterval(() => {
        if (this.pings.length < 10) this.pings.push(now());
        this.send({ type: "ping" });
      }, HEARTBEAT_MS);
    }

    onPong(text) {
      let message;
      try {
        message = JSON.parse(text);
      } catch (_) {
        return false;
      }
      if (!message || message.type !== "pong") return false;
      const sent = this.pings.shift();
      if (sent !== undefined) this.heartbeatRtt = now() - sent;
      return true;
    }

    isOpen() {
      return !this.closed && this.channel.readyState === "open";
    }

    send(message) {
      if (this.isOpen()) this.channel.send(JSON.stringify(message));
    }

    // The microphone's track (or null): sent from now on, without a new offer.
    async setMicrophone(track) {
      await this.sender.replaceTrack(track);
    }

    close() {
      if (this.closed) return;
      this.closed = true;
      clearInterval(this.heartbeat);
      try {
        this.channel.close();
      } catch (_) {
        // already closed
      }
      this.pc.close();
    }

    // Round-trip time, jitter and loss from the peer connection's stats (null where not known yet).
    async stats() {
      const report = await this.pc.getStats();
      let pair = null;
      let inbound = null;
      let remote = null;
      report.forEach((s) => {
        if (s.type === "transport" && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
        else if (s.type === "inbound-rtp" && s.kind === "audio") inbound = s;
        else if (s.type === "remote-inbound-rtp" && s.kind === "audio") remote = s;
      });
      if (!pair) {
        report.forEach((s) => {
          if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
        });
      }
      const ms = (seconds) => (typeof seconds === "number" ? seconds * 1000 : null);
      const sample = {
        at: now(),
        rtt_ms: ms(pair && pair.currentRoundTripTime) ?? ms(remote && remote.roundTripTime),
        jitter_ms: ms(inbound && inbound.jitter),
        packets_received: inbound ? inbound.packetsReceived : null,
        packets_lost: inbound ? inbound.packetsLost : null,
        jitter_buffer_ms: null,
        loss_pct: null, // of the bot's packets, over the last interval
        sent_loss_pct: remote && typeof remote.fractionLost === "number" ? remote.fractionLost * 100 : null,
        heartbeat_rtt_ms: this.heartbeatRtt,
      };
      const before = this.previous;
      if (inbound && before && before.inbound) {
        const received = inbound.packetsReceived - before.inbound.packetsReceived;
        const lost = inbound.packetsLost - before.inbound.packetsLost;
        if (received + lost > 0) sample.loss_pct = (100 * Math.max(0, lost)) / (received + lost);
        const emitted = inbound.jitterBufferEmittedCount - before.inbound.jitterBufferEmittedCount;
        if (emitted > 0) {
          sample.jitter_buffer_ms = ((inbound.jitterBufferDelay - before.inbound.jitterBufferDelay) / emitted) * 1000;
        }
      }
      this.previous = { inbound };
      return sample;
    }
  }

  window.VoxgraphWebRTC = { open, FallBack, Refused, now };
})();
