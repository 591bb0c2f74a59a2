"""The conversation an LLM node keeps: system prompt, turns, and what the user actually heard.

Pure bookkeeping, no I/O, so every ordering question is a unit test. The tricky part is barge-in:

* The LLM streams a reply faster than it is spoken. Output transports report each sentence when its
  audio *starts* playing (``SpokenTextFrame``, upstream), so heard text always lags generated text.
* An interruption reaches the LLM as a system frame, overtaking ``SpokenTextFrame``s still queued
  behind busy nodes (a TTS blocked pushing audio). So ``truncate_to_spoken`` only *marks* the replies
  in progress; their content becomes the heard text when the history is next read, and late
  ``SpokenTextFrame``s keep extending it until then.
* Spoken text is matched to replies by letters and digits only (a TTS may drop markdown or collapse
  spaces); text that continues no pending reply (a greeting injected downstream) is ignored.
* A sentence the TTS failed to speak is never reported, so the next one continues the reply after a
  gap; once the transport has played the reply out (``played_out``), it too keeps only what was heard.
* A session where no ``SpokenTextFrame`` was ever seen has no playing transport: replies are kept as
  generated, since nobody can say what was heard.

Tool calls: a reply that calls tools is kept as the assistant message that asked for them (its text
and ``tool_calls``), one ``tool`` message per call with its result, then the reply's continuation as
a further assistant message. A call message is never dropped for being unheard and trimming never
starts the history between a call and its results: providers reject a call without its result.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Conversation", "Message", "approximate_tokens"]

MESSAGE_OVERHEAD_TOKENS = 4
"""Tokens a chat template adds around each message (role markers, separators)."""
MAX_PENDING = 8
"""Replies still open to spoken-text matching; older ones are settled as they are."""

_NOT_WORD = re.compile(r"[\W_]+")


def approximate_tokens(text: str) -> int:
    """About four characters per token: English text with common BPE tokenizers."""
    return max(1, len(text) // 4)


def _position(text: str, letters: int) -> int:
    """Index in ``text`` of its ``letters``-th letter or digit (as ``_compact`` counts them)."""
    count = 0
    for index, char in enumerate(text):
        if _compact(char):
            if count == letters:
                return index
            count += 1
    return len(text)


def _compact(text: str) -> str:
    """Lower-case letters and digits only: what survives any TTS's text clean-up."""
    return _NOT_WORD.sub("", text.lower())


@dataclass(slots=True, eq=False)
class Message:
    """One turn. An assistant reply also tracks what of it was heard."""

    role: str  # "user", "assistant" or "tool"
    generated: str = ""  # the full text (an assistant reply: as generated so far; a tool: its result)
    heard: str = ""  # assistant replies: the text reported spoken, in order
    generating: bool = False  # assistant replies: tokens may still arrive
    interrupted: bool = False  # a barge-in cut this reply; it keeps only what was heard
    played: bool = False  # played out, yet not all heard (TTS failed a sentence); keeps what was heard
    heard_to: int = 0  # letters of ``generated`` up to the end of the last text heard
    last_heard: tuple[int, str] = (0, "")  # where the last text heard begins, and ``heard`` before it
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # assistant: calls, in OpenAI form
    call_id: str = ""  # tool: the call this is the result of

    def heard_all(self) -> bool:
        """Whether every word of the reply has started playing."""
        return not self.generating and _compact(self.heard) == _compact(self.generated)

    def accepts(self, spoken: str) -> bool:
        """Whether ``spoken`` continues what was heard of this reply."""
        return self.continues(spoken) is not None

    def continues(self, spoken: str, gap: bool = False) -> int | None:
        """Where (in letters of ``generated``) ``spoken`` ends if it continues what was heard, right
        after it or (``gap``) after text that was never played; None if it does not."""
        text, generated = _compact(spoken), _compact(self.generated)
        if not text:
            return None
        if generated.startswith(text, self.heard_to):
            return self.heard_to + len(text)
        at = generated.find(text, self.heard_to) if gap else -1
        return at + len(text) if at >= 0 else None


@dataclass(slots=True)
class Conversation:
    """System prompt plus alternating user and assistant turns, trimmed to a token budget."""

    system_prompt: str
    history: list[Message] = field(default_factory=list)
    playout_seen: bool = False  # a SpokenTextFrame arrived: some transport plays the replies
    _pending: list[Message] = field(default_factory=list, init=False, repr=False)  # not yet heard in full
    _current: Message | None = field(default=None, init=False, repr=False)  # the reply being generated

    def add_user(self, text: str) -> None:
        """A user turn. Replies nobody interrupted are settled as generated: the user let them finish."""
        self._pending = [m for m in self._pending if m.interrupted or m.played]
        self.history.append(Message("user", text))

    def begin_assistant(self) -> None:
        """Start a reply; ``append`` adds its tokens."""
        self.finish()
        self._current = Message("assistant", generating=True)
        self.history.append(self._current)
        self._pending.append(self._current)
        del self._pending[:-MAX_PENDING]

    def append(self, chunk: str) -> None:
        """Add generated text to the reply in progress."""
        if self._current is not None:
            self._current.generated += chunk

    def add_tool_calls(self, calls: list[dict[str, Any]]) -> None:
        """The reply in progress asks for ``calls`` (OpenAI form: ``{"id", "type": "function",
        "function": {"name", "arguments"}}``); each needs its ``add_tool_result`` after ``finish``."""
        if self._current is None:
            self.begin_assistant()
        assert self._current is not None
        self._current.tool_calls.extend(calls)

    def add_tool_result(self, call_id: str, result: str) -> Message:
        """The result of call ``call_id``; kept in order after the message that made the call. The
        message returned may be given its final result later (``set_tool_result``)."""
        message = Message("tool", result, call_id=call_id)
        self.history.append(message)
        return message

    def set_tool_result(self, message: Message, result: str) -> bool:
        """Replace a result given before (a tool that went on in the background has finished);
        False when the history has dropped it since."""
        message.generated = result
        return any(m is message for m in self.history)

    def finish(self) -> None:
        """The reply in progress is complete (or was cancelled); an empty one is dropped."""
        current, self._current = self._current, None
        if current is None:
            return
        current.generating = False
        if not current.generated.strip() and not current.tool_calls:
            self._forget(current)
        elif current.heard_all():
            self._pending.remove(current)

    def append_spoken(self, text: str) -> None:
        """A transport started playing ``text``: credit it to the oldest reply it continues."""
        self.playout_seen = True
        for gap in (False, True):
            for message in self._pending:
                end = message.continues(text, gap)
                if end is not None:
                    message.last_heard = (end - len(_compact(text)), message.heard)
                    message.heard = f"{message.heard} {text}".strip()
                    message.heard_to = end
                    if message.heard_all():
                        self._pending.remove(message)
                    return

    def played_out(self) -> None:
        """The transport fell silent after a reply (``BotStoppedSpeakingFrame``): every complete reply
        not yet heard in full keeps only what was (a sentence the TTS failed to speak was not). Like a
        barge-in it only marks them: this system frame may overtake their last ``SpokenTextFrame``s,
        and a reply still waiting to play regains what is heard of it later."""
        for message in self._pending:
            if not message.generating:
                message.played = True

    def truncate_to_spoken(self) -> None:
        """Barge-in: every reply not yet heard in full keeps only what was (or is later) reported heard."""
        for message in self._pending:
            message.interrupted = True

    def resume_interrupted(self, repeat: bool = False) -> str:
        """A barge-in brought no words: reopen the last reply if a barge-in cut it and no turn came
        since, and return the text to speak again — from the start of the piece that was playing when
        it was cut (the whole reply with ``repeat``). Empty when there is nothing to resume."""
        last = self.history[-1] if self.history else None
        if last is None or last.role != "assistant" or not last.interrupted or last.generating:
            return ""
        start, heard_before = (0, "") if repeat else last.last_heard
        text = last.generated[_position(last.generated, start) :].strip()
        if not text:
            return ""
        last.interrupted = last.played = False
        last.heard, last.heard_to, last.last_heard = heard_before, start, (start, heard_before)
        if last not in self._pending:
            self._pending.append(last)
        return text

    def content(self, message: Message) -> str:
        """The text a message contributes to the history."""
        cut = message.interrupted or (message.played and not message.heard_all())
        if message.role == "assistant" and cut and self.playout_seen:
            return message.heard
        return message.generated.strip()

    def trim(
        self,
        budget: int,
        count_tokens: Callable[[str], int] = approximate_tokens,
        target: int | None = None,
    ) -> None:
        """When the history is over ``budget`` tokens, drop the oldest turns until it fits ``target``
        (default: the budget; the system prompt is not counted and always kept). The newest user
        turn and what follows it (its reply) are always kept; the history never starts with an
        assistant turn, as some chat templates require."""
        self._drop_unheard()
        sizes = [
            count_tokens(self.content(m) + _calls_text(m)) + MESSAGE_OVERHEAD_TOKENS for m in self.history
        ]
        total = sum(sizes)
        goal = total if total <= budget else budget if target is None else min(target, budget)
        users = [index for index, message in enumerate(self.history) if message.role == "user"]
        newest = users[-1] if users else len(self.history) - 1  # kept, with all that follows it
        start = 0
        while start < newest and total > goal:
            total -= sizes[start]
            start += 1
        while start < newest and self.history[start].role != "user":
            start += 1
        for message in self.history[:start]:
            self._forget(message)

    def messages(self) -> list[dict[str, Any]]:
        """The chat in OpenAI form: ``[{"role": "system", ...}, {"role": "user", ...}, ...]``."""
        self._drop_unheard()
        chat: list[dict[str, Any]] = []
        if self.system_prompt:
            chat.append({"role": "system", "content": self.system_prompt})
        chat.extend(self._chat_message(m) for m in self.history)
        return chat

    def _chat_message(self, message: Message) -> dict[str, Any]:
        if message.role == "tool":
            return {"role": "tool", "tool_call_id": message.call_id, "content": message.generated}
        if message.tool_calls:
            text = self.content(message)
            return {"role": "assistant", "content": text or None, "tool_calls": list(message.tool_calls)}
        return {"role": message.role, "content": self.content(message)}

    def _drop_unheard(self) -> None:
        """Interrupted replies of which nothing was heard leave the history (not while generating, and
        never one that called tools: its results would be left without their call)."""
        for message in list(self.history):
            if (
                message.role == "assistant"
                and not message.generating
                and not message.tool_calls
                and not self.content(message).strip()
            ):
                self._forget(message)

    def _forget(self, message: Message) -> None:
        self.history = [m for m in self.history if m is not message]
        if message in self._pending:
            self._pending.remove(message)
        if message is self._current:
            self._current = None


def _calls_text(message: Message) -> str:
    """The tool calls of a message as the text a provider is sent (for the token budget)."""
    return "".join(f"{c['function']['name']}{c['function']['arguments']}" for c in message.tool_calls)
