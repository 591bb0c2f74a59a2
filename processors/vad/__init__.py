"""Voice activity detection: audio passes through, speaking frames come out.

``vad.silero`` (neural, ignores steady noise, ~0.1-0.4 ms per 32 ms window) suits noisy rooms;
``vad.webrtc`` (a few µs per window, fooled by steady noise) suits many calls on a small CPU. Both
share the hysteresis and true-time stamping of ``processors.vad.base.VadProcessor``.
"""
