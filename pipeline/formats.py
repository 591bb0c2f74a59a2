"""Audio formats and the capabilities processors declare, for negotiation before a graph runs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """One concrete PCM s16le format on an edge."""

    sample_rate: int
    channels: int = 1

    def __str__(self) -> str:
        layout = "mono" if self.channels == 1 else f"{self.channels} channels"
        return f"{self.sample_rate} Hz {layout}"


@dataclass(frozen=True, slots=True)
class AudioCaps:
    """The audio formats a processor accepts. ``None`` means any value is fine."""

    rates: frozenset[int] | None = None
    channels: frozenset[int] | None = None

    @classmethod
    def of(
        cls, rates: int | tuple[int, ...] | None = None, channels: int | tuple[int, ...] | None = None
    ) -> AudioCaps:
        """Build caps from plain ints or tuples: ``AudioCaps.of(16000, 1)``."""
        return cls(_as_set(rates), _as_set(channels))

    def allows(self, fmt: AudioFormat) -> bool:
        """Whether audio in ``fmt`` can be given to the processor unchanged."""
        rate_ok = self.rates is None or fmt.sample_rate in self.rates
        channels_ok = self.channels is None or fmt.channels in self.channels
        return rate_ok and channels_ok

    def closest(self, fmt: AudioFormat) -> AudioFormat:
        """The accepted format nearest to ``fmt`` (what a resampler should convert to)."""
        rate = fmt.sample_rate
        if self.rates is not None and rate not in self.rates:
            rate = min(self.rates, key=lambda r: (abs(r - fmt.sample_rate), -r))
        channels = fmt.channels
        if self.channels is not None and channels not in self.channels:
            channels = min(self.channels, key=lambda c: (abs(c - fmt.channels), c))
        return AudioFormat(rate, channels)

    def __str__(self) -> str:
        rates = "any rate" if self.rates is None else " or ".join(f"{r} Hz" for r in sorted(self.rates))
        if self.channels is None:
            layout = "any channels"
        elif self.channels == frozenset({1}):
            layout = "mono"
        else:
            layout = " or ".join(str(c) for c in sorted(self.channels)) + " channels"
        return f"{rates} {layout}"


ANY_AUDIO = AudioCaps()


def _as_set(value: int | tuple[int, ...] | None) -> frozenset[int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return frozenset({value})
    return frozenset(value)
