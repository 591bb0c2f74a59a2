"""ChatLLM: frames per turn, history, tool calls, barge-in and keeping only what was heard."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from pipeline.frames import (
    UPSTREAM,
    AudioFrame,
    BotTextFrame,
    InterimTranscriptFrame,
    InterruptionFrame,
    LLMResponseEndFrame,
    LLMTextFrame,
    LLMToolCallFrame,
    SpokenTextFrame,
    TextFrame,
    TranscriptFrame,
    TTSTextFrame,
    UserAudioFrame,
    UserTextFrame,
)
from pipeline.graph import Graph
from pipeline.testing import Captured, Collector, run_graph, run_processor
from processors.llm.base import (
    PASS_THROUGH_FRAMES,
    ChatLLM,
    ResumeReplyFrame,
    TentativeReplyFrame,
    TentativeTurnFrame,
    ToolCall,
)
from tests.drivers import Driver, Step

HOLD = object()
"""In a scripted reply: wait here until cancelled."""


class ScriptedLLM(ChatLLM):
    """Replies with scripted chunks and records each request and how each stream ended."""

    def __init__(self, replies: Sequence[Sequence[object]], **params: Any) -> None:
        super().__init__(name="llm", **params)
        self.replies = [list(r) for r in replies]
        self.requests: list[list[dict[str, Any]]] = []
        self.finished = 0  # streams that yielded everything
        self.closed = 0  # streams whose finally ran (stop flag for a real engine)
        self.holding = asyncio.Event()

    async def stream_reply(self, messages: list[dict[str, Any]]) -> AsyncIterator[str | ToolCall]:
        self.requests.append([dict(m) for m in messages])
        try:
            for item in self.replies.pop(0):
                if item is HOLD:
                    self.holding.set()
                    await asyncio.Event().wait()
                assert isinstance(item, str | ToolCall)
                yield item
            self.finished += 1
        finally:
            self.closed += 1


def roles(request: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in request]


async def converse(llm: ScriptedLLM, steps: Callable[[Collector, Collector], Sequence[Step]]) -> Captured:
    """driver -> tap -> llm -> out; ``steps`` may use the tap (upstream) and out (downstream)."""
    tap, out = Collector(name="tap"), Collector(name="out")
    driver = Driver([])
    driver.steps = steps(tap, out)
    graph = Graph(
        {"driver": driver, "tap": tap, "llm": llm, "out": out},
        [("driver", "tap"), ("tap", "llm"), ("llm", "out")],
    )
    return await run_graph(graph)


async def test_a_turn_streams_between_start_and_end_after_the_transcript() -> None:
    llm = ScriptedLLM([["Hello", " there."]])
    out = await run_processor(llm, [TranscriptFrame(text="Hi!")])
    assert out.kinds == ["transcript", "llm_response_start", "llm_text", "llm_text", "llm_response_end"]
    assert [f.text for f in out.of(LLMTextFrame)] == ["Hello", " there."]
    assert roles(llm.requests[0])[1:] == [("user", "Hi!")]
    assert llm.metrics.samples["ttfb"]
    assert not out.errors


async def test_typed_user_text_is_a_turn_and_other_text_passes_by() -> None:
    llm = ScriptedLLM([["Yes."]])
    others = [
        LLMTextFrame(text="a"),
        TTSTextFrame(text="b"),
        BotTextFrame(text="c"),
        InterimTranscriptFrame(text="partial"),
        TextFrame(text="nobody's turn"),
    ]
    out = await run_processor(llm, [*others, UserTextFrame(text="typed")])
    assert out.down == [*others, UserTextFrame(text="typed"), *out.down[len(others) + 1 :]]
    assert out.kinds[len(others) + 1 :] == ["llm_response_start", "llm_text", "llm_response_end"]
    assert [roles(request)[1:] for request in llm.requests] == [[("user", "typed")]]


async def test_blank_transcripts_get_no_reply() -> None:
    llm = ScriptedLLM([])
    out = await run_processor(llm, [TranscriptFrame(text="  ")])
    assert out.kinds == ["transcript"]


async def test_history_carries_the_system_prompt_and_earlier_turns() -> None:
    llm = ScriptedLLM([["Paris."], ["Lyon."]], system_prompt="Answer in one word.")
    await run_processor(llm, [TranscriptFrame(text="Capital?"), TranscriptFrame(text="Second city?")])
    assert roles(llm.requests[1]) == [
        ("system", "Answer in one word."),
        ("user", "Capital?"),
        ("assistant", "Paris."),
        ("user", "Second city?"),
    ]


async def test_history_is_trimmed_to_the_budget() -> None:
    llm = ScriptedLLM([["a" * 400], ["b"]], max_history_tokens=50)
    await run_processor(llm, [TranscriptFrame(text="long"), TranscriptFrame(text="next")])
    assert roles(llm.requests[1])[1:] == [("user", "next")]


async def test_after_a_reply_over_budget_the_history_keeps_the_last_exchange() -> None:
    llm = ScriptedLLM([["a" * 400]], max_history_tokens=50)
    await run_processor(llm, [TranscriptFrame(text="one")])
    assert roles(llm.context.messages())[1:] == [("user", "one"), ("assistant", "a" * 400)]
    llm = ScriptedLLM([["short"], ["b" * 400]], max_history_tokens=50)
    await run_processor(llm, [TranscriptFrame(text="one"), TranscriptFrame(text="two")])
    assert roles(llm.context.messages())[1:] == [("user", "two"), ("assistant", "b" * 400)]


async def test_tool_calls_become_frames() -> None:
    call = ToolCall(call_id="c1", name="get_time", arguments='{"zone": "UTC"}')
    llm = ScriptedLLM([["Let me check.", call]])
    out = await run_processor(llm, [TranscriptFrame(text="Time?")])
    assert out.of(LLMToolCallFrame) == [
        LLMToolCallFrame(call_id="c1", name="get_time", arguments='{"zone": "UTC"}')
    ]
    assert out.kinds[-2:] == ["llm_tool_call", "llm_response_end"]


async def test_a_failing_engine_still_ends_the_response_and_reports_the_error() -> None:
    class Broken(ChatLLM):
        async def stream_reply(self, messages: list[dict[str, Any]]) -> AsyncIterator[str | ToolCall]:
            yield "Half"
            raise RuntimeError("connection reset")

    out = await run_processor(Broken(name="llm"), [TranscriptFrame(text="Hi")])
    assert out.kinds == ["transcript", "llm_response_start", "llm_text", "llm_response_end"]
    assert "connection reset" in out.errors[0].message


async def test_barge_in_stops_the_generation_mid_stream() -> None:
    llm = ScriptedLLM([["One. ", HOLD, "never said"], ["Sure."]])
    out = await converse(
        llm,
        lambda tap, out: [
            TranscriptFrame(text="Tell me a story"),
            llm.holding.wait,
            InterruptionFrame(),
            TranscriptFrame(text="Stop"),
        ],
    )
    assert (llm.finished, llm.closed) == (1, 2)  # the first stream was closed before its end
    assert "never said" not in out.texts
    first_reply = out.kinds[: out.kinds.index("interruption")]
    assert "llm_response_end" not in first_reply
    assert out.kinds[-3:] == ["llm_response_start", "llm_text", "llm_response_end"]
    # No transport reported anything as heard: the generated part is kept.
    assert roles(llm.requests[1])[-2:] == [("assistant", "One."), ("user", "Stop")]


async def test_after_barge_in_the_history_keeps_only_what_was_heard() -> None:
    llm = ScriptedLLM([["One. ", "Two. ", "Three."], ["Okay."]])

    def steps(tap: Collector, out: Collector) -> list[Step]:
        async def play_first_sentence() -> None:
            await out.wait_for(LLMResponseEndFrame)
            await out.send_upstream([SpokenTextFrame(text="One.")])
            await tap.wait_for(SpokenTextFrame, direction=UPSTREAM)

        return [
            TranscriptFrame(text="Count"),
            play_first_sentence,
            InterruptionFrame(),
            TranscriptFrame(text="Wait"),
        ]

    await converse(llm, steps)
    assert roles(llm.requests[1])[-3:] == [("user", "Count"), ("assistant", "One."), ("user", "Wait")]


async def test_spoken_text_is_passed_upstream() -> None:
    llm = ScriptedLLM([])
    out = await run_processor(llm, upstream=[SpokenTextFrame(text="Hello.")])
    assert [f for f in out.up if isinstance(f, SpokenTextFrame)] == [SpokenTextFrame(text="Hello.")]


async def test_a_reply_heard_in_full_is_kept_whole_after_a_late_interruption() -> None:
    llm = ScriptedLLM([["One. ", "Two."], ["Okay."]])

    def steps(tap: Collector, out: Collector) -> list[Step]:
        async def play_everything() -> None:
            await out.wait_for(LLMResponseEndFrame)
            await out.send_upstream([SpokenTextFrame(text="One."), SpokenTextFrame(text="Two.")])
            await tap.wait_for(
                lambda f: isinstance(f, SpokenTextFrame) and f.text == "Two.", direction=UPSTREAM
            )

        return [
            TranscriptFrame(text="Count"),
            play_everything,
            InterruptionFrame(),
            TranscriptFrame(text="More"),
        ]

    await converse(llm, steps)
    assert roles(llm.requests[1])[-2:] == [("assistant", "One. Two."), ("user", "More")]


async def test_user_audio_waits_here_not_upstream_while_a_reply_is_generated() -> None:
    # The VAD and recogniser sit upstream: while a slow reply holds this node, they must keep hearing
    # the user live, so the audio passing through queues in this (bounded) inbox instead of theirs.
    llm = ScriptedLLM([["One. ", HOLD]])
    audio = [UserAudioFrame(pcm=bytes(640)) for _ in range(500)]  # 10 s, far beyond a default inbox
    out = await converse(
        llm,
        lambda tap, out: [
            TranscriptFrame(text="Tell me a story"),
            llm.holding.wait,
            *audio,
            InterruptionFrame(),
        ],
    )
    assert len(out.of(AudioFrame)) == 500  # none lost, and the driver never waited for the reply
    assert llm.inbox.maxsize == PASS_THROUGH_FRAMES


async def test_a_preemptive_reply_is_sent_on_when_the_turn_ends_with_its_text() -> None:
    llm = ScriptedLLM([["Seven ", "o'clock."], ["Okay."]])

    def steps(tap: Collector, out: Collector) -> list[Step]:
        async def prepared() -> None:
            await asyncio.wait_for(_until(lambda: llm.finished == 1), 5.0)
            assert not any(isinstance(f, LLMTextFrame) for f in out.frames)  # held back until the turn ends

        return [
            TentativeTurnFrame(text="What time is it?"),
            prepared,
            TranscriptFrame(text="What time is it?"),
        ]

    out = await converse(llm, steps)
    assert len(llm.requests) == 1 and llm.preemptive_used == 1
    assert roles(llm.requests[0])[-1] == ("user", "What time is it?")
    assert out.kinds[-4:] == ["llm_response_start", "llm_text", "llm_text", "llm_response_end"]
    # while it was held, its text so far went on for the TTS to prepare its first words
    assert [f.text for f in out.of(TentativeReplyFrame)] == ["Seven ", "Seven o'clock."]
    assert out.kinds.index("tentative_reply") < out.kinds.index("llm_response_start")
    assert roles(llm.context.messages())[1:] == [
        ("user", "What time is it?"),
        ("assistant", "Seven o'clock."),
    ]


async def test_a_preemptive_reply_is_discarded_unheard_when_the_user_goes_on() -> None:
    llm = ScriptedLLM([["Which ", HOLD, "restaurant?"], ["For two, done."]])
    out = await converse(
        llm,
        lambda tap, out: [
            TentativeTurnFrame(text="Book a table"),
            llm.holding.wait,
            TentativeTurnFrame(text=""),  # the user went on
            TranscriptFrame(text="Book a table for two"),
        ],
    )
    assert llm.closed == 2 and llm.finished == 1 and llm.preemptive_dropped == 1
    assert "Which " not in out.texts and "restaurant?" not in out.texts
    assert [f.text for f in out.of(TentativeReplyFrame)] == ["Which ", ""]  # announced, then withdrawn
    assert out.kinds.count("llm_response_start") == 1
    assert roles(llm.requests[1])[1:] == [("user", "Book a table for two")]
    assert roles(llm.context.messages())[1:] == [
        ("user", "Book a table for two"),
        ("assistant", "For two, done."),
    ]


class PrefillingLLM(ScriptedLLM):
    """Records what it is offered to evaluate ahead; with ``hold``, each prefill waits until cancelled."""

    def __init__(self, replies: Sequence[Sequence[object]], hold: bool = False, **params: Any) -> None:
        super().__init__(replies, **params)
        self.prefilled: list[list[tuple[str, str]]] = []
        self.prefill_started = asyncio.Event()
        self.prefills_stopped = 0
        self.hold = hold

    async def prefill(self, messages: list[dict[str, Any]]) -> None:
        self.prefilled.append(roles(messages))
        self.prefill_started.set()
        try:
            if self.hold:
                await asyncio.Event().wait()
        finally:
            self.prefills_stopped += 1


async def test_the_words_so_far_are_offered_for_prefill_while_no_reply_is_under_way() -> None:
    llm = PrefillingLLM([["Hi there."], ["Which one?"], ["Two."]])

    def steps(tap: Collector, out: Collector) -> list[Step]:
        return [
            InterimTranscriptFrame(text="Hello"),
            llm.prefill_started.wait,
            TranscriptFrame(text="Hello you"),
            InterimTranscriptFrame(text="  "),  # nothing to evaluate
            TentativeTurnFrame(text="Book a table"),
            InterimTranscriptFrame(text="Book a table for"),  # a tentative reply holds the engine
            TranscriptFrame(text="Book a table for two"),
        ]

    out = await converse(llm, steps)
    assert llm.prefilled == [[("system", llm.params.system_prompt), ("user", "Hello")]]
    assert out.of(InterimTranscriptFrame) and out.kinds.count("llm_response_start") == 2  # passed on


async def test_a_slow_prefill_holds_up_nothing_and_is_stopped_at_the_end() -> None:
    llm = PrefillingLLM([["Hi there."]], hold=True)

    def steps(tap: Collector, out: Collector) -> list[Step]:
        return [
            InterimTranscriptFrame(text="Hello"),
            llm.prefill_started.wait,
            InterimTranscriptFrame(text="Hello you"),  # one prefill at a time
            TranscriptFrame(text="Hello you"),
        ]

    out = await converse(llm, steps)
    assert out.kinds.count("llm_response_end") == 1  # answered while the prefill still ran
    assert len(llm.prefilled) == 1 and llm.prefills_stopped == 1


async def test_a_history_trimmed_after_a_reply_is_offered_for_prefill_at_once() -> None:
    llm = PrefillingLLM([["a" * 100], ["b" * 100], ["c" * 100]], max_history_tokens=90)
    # two exchanges (34 tokens each) stay under 0.8 of the budget; the third goes over

    def steps(tap: Collector, out: Collector) -> list[Step]:
        return [
            *(TranscriptFrame(text=word) for word in ("one", "two", "three")),
            llm.prefill_started.wait,
        ]

    await converse(llm, steps)
    system = ("system", llm.params.system_prompt)
    assert llm.prefilled == [[system, ("user", "three"), ("assistant", "c" * 100)]]  # after the trim only


async def test_a_preemptive_reply_for_other_words_is_dropped_at_the_turn() -> None:
    llm = ScriptedLLM([["Hello!"], ["Bye!"]])

    def steps(tap: Collector, out: Collector) -> list[Step]:
        async def prepared() -> None:
            await asyncio.wait_for(_until(lambda: llm.finished == 1), 5.0)

        return [TentativeTurnFrame(text="Hi"), prepared, TranscriptFrame(text="Hi and goodbye")]

    out = await converse(llm, steps)
    assert "Hello!" not in out.texts and "Bye!" in out.texts
    assert "Hello!" not in str(llm.context.messages())


async def test_a_false_interruption_resumes_the_reply_from_the_cut_sentence() -> None:
    llm = ScriptedLLM([["One. ", "Two. ", "Three."]])

    def steps(tap: Collector, out: Collector) -> list[Step]:
        async def play_two_sentences() -> None:
            await out.wait_for(LLMResponseEndFrame)
            await out.send_upstream([SpokenTextFrame(text="One."), SpokenTextFrame(text="Two.")])
            await tap.wait_for(
                lambda f: isinstance(f, SpokenTextFrame) and f.text == "Two.", direction=UPSTREAM
            )

        async def play_the_rest() -> None:
            await asyncio.wait_for(
                _until(lambda: sum(isinstance(f, LLMResponseEndFrame) for f in out.frames) == 2), 5.0
            )
            await out.send_upstream([SpokenTextFrame(text="Two."), SpokenTextFrame(text="Three.")])
            await tap.wait_for(
                lambda f: isinstance(f, SpokenTextFrame) and f.text == "Three.", direction=UPSTREAM
            )

        return [
            TranscriptFrame(text="Count"),
            play_two_sentences,
            InterruptionFrame(),
            ResumeReplyFrame(),
            play_the_rest,
        ]

    out = await converse(llm, steps)
    assert out.texts[-1] == "Two. Three."  # the sentence that was cut, and what was never heard
    assert roles(llm.context.messages())[1:] == [("user", "Count"), ("assistant", "One. Two. Three.")]


async def test_nothing_to_resume_leaves_no_empty_reply() -> None:
    llm = ScriptedLLM([[HOLD]])
    out = await converse(
        llm,
        lambda tap, out: [
            TranscriptFrame(text="Hello"),
            llm.holding.wait,
            InterruptionFrame(),
            ResumeReplyFrame(),
        ],
    )
    assert out.kinds.count("llm_response_start") == 1
    assert roles(llm.context.messages())[1:] == [("user", "Hello")]


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.001)
