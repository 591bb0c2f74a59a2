// Level meter: posts the RMS and peak of every few render quanta, and an onset the first time the signal
// rises over a threshold after a quiet spell (a click, a word), each stamped with the audio clock so the
// page can place it in wall-clock time. The page shows the level; tests and benchmarks read the rest.
"use strict";

class MeterProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.every = opts.every || 4; // render quanta per report (4 x 128 samples = 10.7 ms at 48 kHz)
    this.threshold = opts.onsetThreshold || 0.05;
    this.quietSamples = Math.round((opts.quietSeconds || 0.3) * sampleRate);
    this.quiet = this.quietSamples; // samples since the last one over the threshold
    this.energy = 0;
    this.peak = 0;
    this.samples = 0;
    this.quanta = 0;
  }

  process(inputs, outputs) {
    const input = inputs[0];
    const frames = input && input.length ? input[0].length : 128;
    for (let i = 0; i < frames; i++) {
      let x = 0;
      if (input && input.length) {
        for (let c = 0; c < input.length; c++) if (Math.abs(input[c][i]) > Math.abs(x)) x = input[c][i];
      }
      const a = Math.abs(x);
      if (a > this.threshold) {
        if (this.quiet >= this.quietSamples) this.port.postMessage({ onset: currentTime + i / sampleRate });
        this.quiet = 0;
      } else {
        this.quiet += 1;
      }
      this.energy += x * x;
      if (a > this.peak) this.peak = a;
    }
    this.samples += frames;
    for (const output of outputs) for (const channel of output) channel.fill(0);
    if (++this.quanta >= this.every) {
      const rms = Math.sqrt(this.energy / Math.max(1, this.samples));
      this.port.postMessage({ time: currentTime + frames / sampleRate, rms, peak: this.peak });
      this.energy = 0;
      this.peak = 0;
      this.samples = 0;
      this.quanta = 0;
    }
    return true;
  }
}

registerProcessor("meter", MeterProcessor);
