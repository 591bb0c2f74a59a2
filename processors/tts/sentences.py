"""Cut streamed LLM text into pieces a TTS engine can speak one at a time.

Engines synthesise whole sentences (prosody needs them), so audio can start only once the first
sentence is complete. Rules, in order of preference:

* End of sentence: ``.`` ``!`` ``?`` (and closing quotes or brackets) followed by whitespace — but not
  after a known abbreviation ("Dr.", "e.g.") or a single initial ("J."); "3.5" never has the space.
* A newline always ends a piece (lists, paragraphs).
* ``;`` or ``:`` followed by whitespace, once the piece is ``long_chars`` long.
* Fast first audio: the first piece of a reply may end at a comma once it holds
  ``first_chunk_min_words`` words, so the engine starts before the LLM has finished the sentence;
  with ``first_chunk_max_words`` it ends after that many words even without a comma (fastest first
  audio; the seam after it may be heard).
* A piece with no break at all is cut at its last space past ``max_chars``.

A boundary is decided only once the character after it has arrived, so a chunk ending in "3." or
"Dr." waits for the next one.
"""

from __future__ import annotations

import itertools
import re

__all__ = ["SentenceChunker"]

ABBREVIATIONS = frozenset(
    ["mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "e.g", "i.e", "cf", "approx", "fig"]
)
"""Words whose full stop does not end the sentence (lower case, no final dot). Kept short: a wrong
split costs a pause, a missed one delays audio; so "a.m.", "etc." and "no." end sentences."""

_CLOSERS = "\"')]}\u201d\u2019\u00bb"  # quotes and brackets that may follow a full stop
_WORD = re.compile(r"\S+(?=\s)")  # a word known to be complete: whitespace follows it
_BREAK = re.compile(rf"[.!?]+[{re.escape(_CLOSERS)}]*(?=\s)|\n|[;:](?=\s)|,(?=\s)")


class SentenceChunker:
    """Streaming splitter: ``feed`` returns finished pieces, ``flush`` the rest of the reply."""

    def __init__(
        self,
        first_chunk_min_words: int = 6,
        long_chars: int = 80,
        max_chars: int = 250,
        first_chunk_max_words: int = 0,
    ) -> None:
        self.first_chunk_min_words = first_chunk_min_words  # 0 disables comma cuts
        self.first_chunk_max_words = first_chunk_max_words  # 0: the first piece waits for punctuation
        self.long_chars = long_chars  # ";" and ":" split pieces at least this long
        self.max_chars = max_chars  # a piece without any break is cut at a space past this length
        self._buffer = ""
        self._first = True  # no piece of this reply has been returned yet

    def feed(self, text: str) -> list[str]:
        """Add streamed text; return the pieces it completed (stripped, non-empty)."""
        self._buffer += text
        pieces = []
        while (cut := self._next_cut()) is not None:
            piece, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if piece:
                pieces.append(piece)
                self._first = False
        return pieces

    def flush(self) -> str | None:
        """The text left at the end of a reply, if any; the next ``feed`` starts a new reply."""
        rest, self._buffer = self._buffer.strip(), ""
        self._first = True
        return rest or None

    def clear(self) -> None:
        """Forget buffered text (barge-in) and start a new reply."""
        self._buffer = ""
        self._first = True

    def _next_cut(self) -> int | None:
        """Index just past the first boundary in the buffer, or None if no piece is complete yet."""
        cuts = [cut for cut in (self._break_cut(), self._first_words_cut()) if cut is not None]
        return min(cuts) if cuts else None

    def _break_cut(self) -> int | None:
        """Just past the first punctuation (or forced) boundary, if one is complete."""
        buffer = self._buffer
        for match in _BREAK.finditer(buffer):
            end = match.end()
            mark = match.group()[0]
            if mark in ".!?":
                if mark == "." and self._abbreviation(buffer[: match.start() + 1]):
                    continue
                return end
            if mark == "\n":
                return end
            piece = buffer[:end].strip()
            if mark in ";:" and len(piece) >= self.long_chars:
                return end
            if mark == "," and self._first and 0 < self.first_chunk_min_words <= len(piece.split()):
                return end
        if len(buffer) > self.max_chars:
            space = buffer.rfind(" ", 0, self.max_chars)
            return space if space > 0 else self.max_chars
        return None

    def _first_words_cut(self) -> int | None:
        """Just past word ``first_chunk_max_words`` of a reply's first piece, once that word is complete."""
        if not self._first or self.first_chunk_max_words <= 0:
            return None
        words = list(itertools.islice(_WORD.finditer(self._buffer), self.first_chunk_max_words))
        return words[-1].end() if len(words) == self.first_chunk_max_words else None

    @staticmethod
    def _abbreviation(head: str) -> bool:
        """Whether the dot ending ``head`` belongs to an abbreviation or an initial."""
        word = head.rsplit(None, 1)[-1].lstrip(_CLOSERS + "(\"'")[:-1]
        if word.lower() in ABBREVIATIONS:
            return True
        return len(word) == 1 and word.isupper() and word not in "AI"  # "J. Smith", not "So am I."
