"""WebRTC for the browser: the page's microphone and the bot's voice as Opus over UDP, control and
events on a data channel, signalling on the websocket server (``POST /api/offer``).

* ``signalling`` — the offer route, run through the server's one session path;
* ``peer`` — ``PeerSession``: one peer connection bound to one graph's connection nodes;
* ``tracks`` — the bot's paced, clearable track and the microphone reader;
* ``channel`` — the data channel's messages (the ``/ws`` protocol plus a heartbeat);
* ``jitter`` — an Opus receive buffer without aiortc's fixed delay and its lag after a loss;
* ``nodes`` — ``webrtc.input`` / ``webrtc.output``;
* ``client`` — a peer in Python (tests, benchmarks, a command-line check).

Everything but ``nodes`` and ``signalling`` needs the ``webrtc`` extra (aiortc).
"""
