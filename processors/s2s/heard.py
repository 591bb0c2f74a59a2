"""How much of the bot's audio the user has heard: the playout position behind a barge-in's truncate.

A speech-to-speech provider streams a reply's audio much faster than it plays, and remembers all of
it. After a barge-in it must forget what the user never heard (OpenAI Realtime:
``conversation.item.truncate`` at ``audio_end_ms``), so the node needs the playout position, which only
the output transport knows. It tells two things upstream, and ``PlayoutClock`` turns them into
milliseconds of the audio the node sent:

* ``SpokenTextFrame``: the audio after a ``TTSTextFrame`` *starts* playing. The node marks each text
  it sends at its position in the bot's audio, so a report pins the playout to that position.
* ``BotStartedSpeakingFrame`` / ``BotStoppedSpeakingFrame``: playback runs at wall-clock speed from
  the last pin while the bot speaks; once it stops, everything sent has played.

Pure bookkeeping on one timeline of every bot audio millisecond sent, items placed on it in order;
times come from the caller, so every case is a unit test. Without any report (no playing transport
in the graph) all audio sent counts as heard, as nobody can say otherwise.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["PlayoutClock"]

MAX_MARKS = 256
"""Text marks awaiting their report; older ones are forgotten (a transport that reports nothing)."""


@dataclass(slots=True)
class _Item:
    """One provider item's audio on the timeline (milliseconds)."""

    item_id: str
    start: float
    end: float


class PlayoutClock:
    """Bot audio sent vs heard, in milliseconds on one timeline (see the module docstring)."""

    def __init__(self) -> None:
        self.sent = 0.0  # milliseconds of bot audio sent so far
        self.reported = False  # a transport has reported playout at least once
        self._anchor = 0.0  # a position known heard ...
        self._anchor_at: float | None = None  # ... at this time (seconds), playing on since; None: paused
        self._marks: deque[tuple[str, float]] = deque(maxlen=MAX_MARKS)  # (text, position) not yet reported
        self._items: deque[_Item] = deque(maxlen=64)

    def add_audio(self, item_id: str, ms: float) -> None:
        """``ms`` of ``item_id``'s audio was sent after all audio before it."""
        last = self._items[-1] if self._items else None
        if last is not None and last.item_id == item_id and last.end == self.sent:
            last.end += ms
        else:
            self._items.append(_Item(item_id, self.sent, self.sent + ms))
        self.sent += ms

    def mark(self, text: str) -> None:
        """``text`` is sent now: the audio sent next speaks it."""
        self._marks.append((text, self.sent))

    def spoken(self, text: str, now: float) -> None:
        """The transport started playing the audio after ``text``."""
        self.reported = True
        while self._marks:
            marked, position = self._marks.popleft()
            if marked == text:
                self._anchor, self._anchor_at = max(self._anchor, position), now
                return

    def started(self, now: float) -> None:
        """The bot began to speak: playout runs on from what was heard."""
        self.reported = True
        self._anchor = self.heard(now)
        self._anchor_at = now

    def stopped(self, now: float) -> None:
        """The bot fell silent: what was sent has played (or was cut: see ``cut``)."""
        self.reported = True
        self._anchor, self._anchor_at = self.sent, None

    def heard(self, now: float) -> float:
        """The playout position now, in milliseconds of the audio sent."""
        if not self.reported:
            return self.sent
        if self._anchor_at is None:
            return min(self._anchor, self.sent)
        return min(self.sent, self._anchor + max(0.0, now - self._anchor_at) * 1000.0)

    def playing(self, now: float) -> bool:
        """Whether some audio sent has not been heard yet."""
        return self.heard(now) < self.sent

    def forget_items(self) -> None:
        """A new provider session knows none of the items sent so far: they are never truncated."""
        self._items.clear()

    def cut(self, now: float) -> list[tuple[str, int]]:
        """Barge-in: the audio beyond the playout position is dropped. Returns ``(item_id,
        audio_end_ms)`` for each item not heard to its end, and moves the timeline to the cut."""
        position = self.heard(now)
        cuts = [
            (item.item_id, max(0, round(position - item.start)))
            for item in self._items
            if item.end > position and item.item_id
        ]
        self._items.clear()
        self._marks.clear()
        self.sent = position
        self._anchor, self._anchor_at = position, None
        return cuts
