// Microphone capture: mixes to mono, resamples to 16 kHz with a windowed-sinc low-pass (no aliasing
// from 44.1/48 kHz), and posts whole chunks of Int16 PCM (20 ms = 320 samples) with their level.
"use strict";

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.outRate = opts.targetRate || 16000;
    this.chunkSamples = opts.chunkSamples || 320;
    this.step = sampleRate / this.outRate; // input samples per output sample
    // Cut-off as a fraction of the input rate: a little under the output's Nyquist frequency.
    this.cutoff = 0.5 * Math.min(1, this.outRate / sampleRate) * 0.92;
    this.half = Math.ceil(4 / this.cutoff); // kernel half-width in input samples (~8 zero crossings)
    this.buf = new Float32Array(8192);
    this.len = this.half; // start with half a kernel of silence so the first output is defined
    this.start = -this.half; // absolute input index of buf[0]
    this.pos = 0; // absolute input position of the next output sample
    this.chunk = new Int16Array(this.chunkSamples);
    this.filled = 0;
    this.energy = 0;
  }

  kernel(d) {
    const h = this.half;
    if (d <= -h || d >= h) return 0;
    const x = 2 * this.cutoff * d;
    const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
    const w = 0.42 + 0.5 * Math.cos((Math.PI * d) / h) + 0.08 * Math.cos((2 * Math.PI * d) / h);
    return sinc * w;
  }

  append(input) {
    const frames = input[0].length;
    if (this.len + frames > this.buf.length) {
      const bigger = new Float32Array(Math.max(this.buf.length * 2, this.len + frames));
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    const channels = input.length;
    for (let i = 0; i < frames; i++) {
      let sum = 0;
      for (let c = 0; c < channels; c++) sum += input[c][i];
      this.buf[this.len + i] = sum / channels;
    }
    this.len += frames;
  }

  emit(sample) {
    const s = Math.max(-1, Math.min(1, sample));
    this.chunk[this.filled++] = s < 0 ? s * 32768 : s * 32767;
    this.energy += s * s;
    if (this.filled === this.chunkSamples) {
      const level = Math.sqrt(this.energy / this.chunkSamples);
      const pcm = this.chunk.buffer;
      // The transferred buffer is detached after posting: its length travels separately.
      this.port.postMessage({ pcm, samples: this.chunkSamples, level }, [pcm]);
      this.chunk = new Int16Array(this.chunkSamples);
      this.filled = 0;
      this.energy = 0;
    }
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0 || input[0].length === 0) return true;
    this.append(input);
    const h = this.half;
    const end = this.start + this.len; // one past the last absolute index held
    while (this.pos + h < end) {
      const first = Math.ceil(this.pos - h);
      const last = Math.floor(this.pos + h);
      let acc = 0;
      let norm = 0;
      for (let n = first; n <= last; n++) {
        const w = this.kernel(this.pos - n);
        acc += w * this.buf[n - this.start];
        norm += w;
      }
      this.emit(norm > 0 ? acc / norm : 0);
      this.pos += this.step;
    }
    // Keep only what the next outputs still need.
    const keepFrom = Math.floor(this.pos - h) - 1 - this.start;
    if (keepFrom > 0) {
      this.buf.copyWithin(0, keepFrom, this.len);
      this.len -= keepFrom;
      this.start += keepFrom;
    }
    return true;
  }
}

registerProcessor("capture", CaptureProcessor);
