"""turn.taking: end of turn, barge-in, and the speech that must not interrupt — on scripted frames."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.errors import ValidationError
from pipeline.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    DTMFFrame,
    Frame,
    InterimTranscriptFrame,
    InterruptionFrame,
    SpokenTextFrame,
    TranscriptFrame,
    UserSpeechPausedFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipeline.testing import Captured, Gap, run_processor, virtual_time
from processors.llm.base import ResumeReplyFrame, TentativeTurnFrame
from processors.turn import TurnTaking, words_of

STARTED, STOPPED = UserStartedSpeakingFrame, UserStoppedSpeakingFrame


def turns(out: Captured) -> list[str]:
    return [f.text for f in out.of(TranscriptFrame)]


def interruptions(out: Captured) -> int:
    return len(out.of(InterruptionFrame))


@virtual_time
async def test_finals_of_one_turn_are_merged_into_one_transcript() -> None:
    # Speaking frames overtake queued data, so the script pauses where a real stream would.
    script = [STARTED(), Gap(0.1), TranscriptFrame(text="What is"), TranscriptFrame(text="the time?")]
    out = await run_processor(TurnTaking(), [*script, Gap(0.1), STOPPED()])
    assert turns(out) == ["What is the time?"]


async def test_a_final_arriving_after_the_stop_ends_the_turn() -> None:
    out = await run_processor(TurnTaking(), [STARTED(), STOPPED(), TranscriptFrame(text="hello there")])
    assert turns(out) == ["hello there"]


@virtual_time
async def test_a_final_arriving_while_the_user_speaks_again_waits_for_the_new_stop() -> None:
    script = [STARTED(), STOPPED(), STARTED(), Gap(0.1), TranscriptFrame(text="book a table")]
    script += [Gap(0.1), TranscriptFrame(text="for two"), Gap(0.1), STOPPED()]
    out = await run_processor(TurnTaking(), script)
    assert turns(out) == ["book a table for two"]


async def test_without_a_vad_every_final_is_a_turn() -> None:
    out = await run_processor(TurnTaking(), [TranscriptFrame(text="one"), TranscriptFrame(text="two")])
    assert turns(out) == ["one", "two"]


async def test_filler_alone_is_not_a_turn_and_interims_pass_through() -> None:
    script = [STARTED(), InterimTranscriptFrame(text="um"), STOPPED(), TranscriptFrame(text="Um.")]
    out = await run_processor(TurnTaking(), script)
    assert turns(out) == []
    assert [f.text for f in out.of(InterimTranscriptFrame)] == ["um"]
    assert len(out.of(STARTED)) == len(out.of(STOPPED)) == 1  # speaking frames go on


@virtual_time
async def test_user_speech_over_the_bot_interrupts_at_once_by_default() -> None:
    down = [STARTED(), TranscriptFrame(text="tell me a story"), STOPPED(), Gap(2.0), STARTED()]
    down += [TranscriptFrame(text="stop please"), STOPPED()]
    out = await run_processor(TurnTaking(), down, upstream=BOT_CUT)
    assert interruptions(out) == 1
    assert turns(out) == ["tell me a story", "stop please"]  # the barge-in speech is the next turn
    kinds = [f.kind for f in out.down]
    assert kinds[kinds.index("interruption") :].count("transcript") == 1  # the new turn follows it


@virtual_time
async def test_speech_while_the_llm_is_still_thinking_also_interrupts() -> None:
    down = [TranscriptFrame(text="what is two plus two"), Gap(0.3), STARTED(), STOPPED()]
    out = await run_processor(TurnTaking(), down)
    assert interruptions(out) == 1


@virtual_time
async def test_speech_after_the_bot_finished_does_not_interrupt() -> None:
    down = [TranscriptFrame(text="hi"), Gap(2.0), STARTED(), TranscriptFrame(text="thanks"), STOPPED()]
    upstream = [Gap(0.5), BotStartedSpeakingFrame(), Gap(0.5), BotStoppedSpeakingFrame()]
    out = await run_processor(TurnTaking(), down, upstream=upstream)
    assert interruptions(out) == 0
    assert turns(out) == ["hi", "thanks"]


@virtual_time
async def test_short_sound_over_the_bot_neither_interrupts_nor_starts_a_turn() -> None:
    down = [TranscriptFrame(text="hi"), Gap(1.0), STARTED(), Gap(0.1), STOPPED()]
    down += [TranscriptFrame(text="mhm"), Gap(1.0)]
    out = await run_processor(
        TurnTaking(min_speech_secs=0.4), down, upstream=[Gap(0.5), BotStartedSpeakingFrame()]
    )
    assert interruptions(out) == 0
    assert turns(out) == ["hi"]


@virtual_time
async def test_long_enough_speech_over_the_bot_interrupts_after_min_speech_secs() -> None:
    down = [TranscriptFrame(text="hi"), Gap(1.0), STARTED(), Gap(1.0), STOPPED()]
    down += [TranscriptFrame(text="no wait")]
    turn_taking = TurnTaking(min_speech_secs=0.4)
    out = await run_processor(turn_taking, down, upstream=[Gap(0.5), BotStartedSpeakingFrame()])
    assert interruptions(out) == 1
    assert turns(out) == ["hi", "no wait"]
    decision = turn_taking.metrics.samples["barge_in_decision"]
    assert len(decision) == 1 and 0.39 < decision[0] < 0.45  # decided when min_speech_secs elapsed


@virtual_time
async def test_min_words_ignores_fillers_and_interrupts_on_real_words() -> None:
    down = [TranscriptFrame(text="hi"), Gap(1.0), STARTED(), InterimTranscriptFrame(text="mhm yeah")]
    down += [Gap(0.1), STOPPED(), TranscriptFrame(text="Mhm, yeah."), Gap(0.5), STARTED()]
    down += [InterimTranscriptFrame(text="hold on"), Gap(0.1), STOPPED(), TranscriptFrame(text="Hold on.")]
    out = await run_processor(TurnTaking(min_words=2), down, upstream=[Gap(0.5), BotStartedSpeakingFrame()])
    assert interruptions(out) == 1
    assert turns(out) == ["hi", "Hold on."]


@virtual_time
async def test_the_bots_own_echo_does_not_interrupt() -> None:
    down = [TranscriptFrame(text="weather?"), Gap(1.0), STARTED()]
    down += [InterimTranscriptFrame(text="sunny and warm today"), Gap(0.1), STOPPED()]
    down += [TranscriptFrame(text="Sunny and warm today.")]
    upstream = [Gap(0.5), BotStartedSpeakingFrame(), SpokenTextFrame(text="It is sunny and warm today.")]
    out = await run_processor(TurnTaking(min_words=2), down, upstream=upstream)
    assert interruptions(out) == 0
    assert turns(out) == ["weather?"]


@virtual_time
async def test_interruptions_can_be_switched_off() -> None:
    down = [TranscriptFrame(text="hi"), Gap(1.0), STARTED(), Gap(1.0), STOPPED()]
    out = await run_processor(
        TurnTaking(interruptions=False), down, upstream=[Gap(0.5), BotStartedSpeakingFrame()]
    )
    assert interruptions(out) == 0


@virtual_time
async def test_voice_to_voice_is_measured_from_end_of_speech_to_bot_audio() -> None:
    turn_taking = TurnTaking()
    down = [STARTED(), TranscriptFrame(text="hello"), STOPPED(), Gap(2.0)]
    await run_processor(turn_taking, down, upstream=[Gap(0.7), BotStartedSpeakingFrame()])
    (v2v,) = turn_taking.metrics.samples["voice_to_voice"]
    assert 0.6 < v2v <= 0.75


async def test_bot_frames_travel_on_upstream() -> None:
    out = await run_processor(
        TurnTaking(), [], upstream=[BotStartedSpeakingFrame(), SpokenTextFrame(text="x")]
    )
    assert [f.kind for f in out.up if f.kind in ("bot_started_speaking", "spoken_text")] == [
        "bot_started_speaking",
        "spoken_text",
    ]


def test_words_ignore_case_and_punctuation() -> None:
    assert words_of("Uh-huh, OK! It's 5.") == ["uh-huh", "ok", "it's", "5"]


@virtual_time
async def test_a_cough_over_the_bot_does_not_swallow_the_next_question() -> None:
    down = [TranscriptFrame(text="hi"), Gap(1.0), STARTED(), Gap(0.1), STOPPED()]  # no final comes
    down += [Gap(2.0), STARTED(), Gap(0.1), TranscriptFrame(text="what time is it"), Gap(0.1), STOPPED()]
    upstream = [Gap(0.5), BotStartedSpeakingFrame(), Gap(1.5), BotStoppedSpeakingFrame()]
    out = await run_processor(TurnTaking(min_speech_secs=0.4), down, upstream=upstream)
    assert turns(out) == ["hi", "what time is it"]


@virtual_time
async def test_a_late_final_long_after_a_backchannel_is_a_turn_of_its_own() -> None:
    down = [TranscriptFrame(text="hi"), Gap(1.0), STARTED(), Gap(0.1), STOPPED(), Gap(5.0)]
    down += [TranscriptFrame(text="typed after all")]  # no speech frames: e.g. a typed message
    out = await run_processor(
        TurnTaking(min_speech_secs=0.4), down, upstream=[Gap(0.5), BotStartedSpeakingFrame()]
    )
    assert turns(out) == ["hi", "typed after all"]


@virtual_time
async def test_a_turn_still_unanswered_when_a_newer_one_ends_is_dropped_not_answered_late() -> None:
    # A recogniser that fell behind: the first utterance's final arrives while the user says the next.
    script = [STARTED(), STOPPED(), STARTED(), Gap(0.1), TranscriptFrame(text="what time is it")]
    script += [Gap(0.1), STOPPED(), Gap(0.1), TranscriptFrame(text="and the date")]
    turn_taking = TurnTaking()
    out = await run_processor(turn_taking, script)
    assert turns(out) == ["what time is it", "and the date"]
    kinds = [f.kind for f in out.down if f.kind in ("transcript", "interruption")]
    assert kinds == ["transcript", "interruption", "transcript"]  # the older reply goes before the newer turn
    assert turn_taking.stale_turns == 1


@virtual_time
async def test_a_reply_already_playing_is_not_stale() -> None:
    down = [TranscriptFrame(text="tell me a story"), Gap(1.0), TranscriptFrame(text="a long one")]
    params = {"interruptions": False}
    turn_taking = TurnTaking(**params)
    out = await run_processor(turn_taking, down, upstream=[Gap(0.5), BotStartedSpeakingFrame()])
    assert turns(out) == ["tell me a story", "a long one"]
    assert interruptions(out) == 0 and turn_taking.stale_turns == 0


@virtual_time
async def test_reply_wait_counts_from_the_end_of_the_turn_until_the_bot_speaks() -> None:
    turn_taking = TurnTaking()
    waits: list[float] = []

    async def probe() -> None:
        await asyncio.sleep(0.5)
        waits.append(turn_taking.reply_wait())  # before the turn: not waiting
        await asyncio.sleep(1.0)
        waits.append(turn_taking.reply_wait())  # 0.8 s after the stop, no bot audio yet
        await asyncio.sleep(1.0)
        waits.append(turn_taking.reply_wait())  # the bot speaks: the wait is over

    watcher = asyncio.ensure_future(probe())
    down = [Gap(0.6), STARTED(), Gap(0.1), TranscriptFrame(text="hello there"), STOPPED(), Gap(2.0)]
    await run_processor(turn_taking, down, upstream=[Gap(2.0), BotStartedSpeakingFrame()])
    await watcher
    assert waits[0] == 0.0 and waits[1] == pytest.approx(0.8, abs=0.05) and waits[2] == 0.0


# --- the end-of-turn key (phone calls) -----------------------------------------------------------


def ended_before_the_vad(out: Captured) -> bool:
    """The turn went on before the VAD's stop (the key ended it)."""
    kinds = [f.kind for f in out.down]
    return kinds.index("transcript") < kinds.index("user_stopped_speaking")


@virtual_time
async def test_the_hash_key_ends_the_turn_while_the_vad_still_hears_speech() -> None:
    # A noisy line keeps the VAD open: the caller's # hands the finals on without its stop.
    script: list[Frame | Gap] = [STARTED(), Gap(0.1), TranscriptFrame(text="my account number"), Gap(0.1)]
    script += [TranscriptFrame(text="is one two three"), Gap(0.2), DTMFFrame(digit="#"), Gap(5.0), STOPPED()]
    out = await run_processor(TurnTaking(), script)
    assert turns(out) == ["my account number is one two three"]
    assert ended_before_the_vad(out)  # not waiting for the VAD
    assert [f.digit for f in out.of(DTMFFrame)] == ["#"]  # the key goes on too


@virtual_time
async def test_words_still_in_flight_when_the_key_is_pressed_join_the_turn() -> None:
    script: list[Frame | Gap] = [
        STARTED(),
        Gap(0.1),
        TranscriptFrame(text="book a table"),
        InterimTranscriptFrame(text="for"),
    ]
    script += [Gap(0.1), DTMFFrame(digit="#"), Gap(0.3), TranscriptFrame(text="for two"), Gap(5.0), STOPPED()]
    out = await run_processor(TurnTaking(), script)
    assert turns(out) == ["book a table for two"]
    assert ended_before_the_vad(out)


@virtual_time
async def test_the_key_before_the_first_final_ends_the_turn_at_that_final() -> None:
    script: list[Frame | Gap] = [
        STARTED(),
        Gap(0.5),
        DTMFFrame(digit="#"),
        Gap(0.3),
        TranscriptFrame(text="yes please"),
    ]
    out = await run_processor(TurnTaking(), [*script, Gap(5.0), STOPPED()])
    assert turns(out) == ["yes please"]
    assert ended_before_the_vad(out)


@virtual_time
async def test_the_key_with_nothing_said_ends_nothing_later() -> None:
    script: list[Frame | Gap] = [
        DTMFFrame(digit="#"),
        Gap(0.5),
        STARTED(),
        Gap(0.1),
        TranscriptFrame(text="what is"),
    ]
    script += [Gap(0.1), TranscriptFrame(text="the time"), Gap(0.1), STOPPED()]
    out = await run_processor(TurnTaking(), script)
    assert turns(out) == ["what is the time"]  # one turn, not one cut short by the earlier key


@virtual_time
async def test_the_key_over_the_bot_is_not_a_barge_in() -> None:
    down: list[Frame | Gap] = [
        STARTED(),
        TranscriptFrame(text="tell me a story"),
        STOPPED(),
        Gap(2.0),
        DTMFFrame(digit="#"),
    ]
    out = await run_processor(TurnTaking(), [*down, Gap(1.0)], upstream=BOT_CUT)
    assert interruptions(out) == 0
    assert turns(out) == ["tell me a story"]


@virtual_time
async def test_the_end_turn_digit_is_a_choice_and_may_be_none() -> None:
    script: list[Frame | Gap] = [
        STARTED(),
        Gap(0.1),
        TranscriptFrame(text="cancel my order"),
        Gap(0.1),
        DTMFFrame(digit="#"),
    ]
    script += [Gap(0.1), DTMFFrame(digit="*"), Gap(5.0), STOPPED()]
    star = await run_processor(TurnTaking(end_turn_digit="*"), script)
    kinds = [f.kind for f in star.down]
    assert turns(star) == ["cancel my order"] and kinds.index("transcript") < kinds.index(
        "user_stopped_speaking"
    )
    assert [f.digit for f in star.of(DTMFFrame)] == ["#", "*"]
    off = await run_processor(TurnTaking(end_turn_digit=None), script)
    kinds = [f.kind for f in off.down]
    assert turns(off) == ["cancel my order"] and kinds.index("transcript") > kinds.index(
        "user_stopped_speaking"
    )
    with pytest.raises(ValidationError, match="end_turn_digit 'x' is not one of"):
        TurnTaking(end_turn_digit="x")


def tentative(out: Captured) -> list[str]:
    return [f.text for f in out.of(TentativeTurnFrame)]


@virtual_time
async def test_a_pause_with_a_transcript_hands_the_llm_a_tentative_turn() -> None:
    script: list[Frame | Gap] = [
        STARTED(),
        Gap(0.5),
        UserSpeechPausedFrame(),
        Gap(0.1),
        TranscriptFrame(text="What time is it?"),
    ]
    out = await run_processor(TurnTaking(preemptive_reply=True), [*script, Gap(0.25), STOPPED()])
    assert tentative(out) == ["What time is it?"]
    assert turns(out) == ["What time is it?"]  # the turn itself confirms it
    kinds = [f.kind for f in out.down]
    assert kinds.index("tentative_turn") < kinds.index("transcript")


@virtual_time
async def test_a_tentative_turn_is_withdrawn_when_the_user_goes_on() -> None:
    script: list[Frame | Gap] = [
        STARTED(),
        Gap(0.5),
        UserSpeechPausedFrame(),
        Gap(0.05),
        InterimTranscriptFrame(text="Book a table"),
    ]
    script += [
        Gap(0.2),
        STARTED(),
        Gap(0.5),
        TranscriptFrame(text="Book a table for two"),
        Gap(0.2),
        STOPPED(),
    ]
    out = await run_processor(TurnTaking(preemptive_reply=True), script)
    assert tentative(out) == ["Book a table", ""]  # the empty one withdraws it
    assert turns(out) == ["Book a table for two"]


@virtual_time
async def test_an_interim_from_before_the_pause_waits_for_the_one_that_covers_the_pause() -> None:
    # A partial made before the pause may lack the last words: a reply to it would be thrown away.
    script: list[Frame | Gap] = [
        STARTED(),
        Gap(0.5),
        InterimTranscriptFrame(text="What time"),
        Gap(0.1),
        UserSpeechPausedFrame(),
        Gap(0.1),
    ]
    out = await run_processor(TurnTaking(preemptive_reply=True), script)
    assert tentative(out) == []
    script += [InterimTranscriptFrame(text="What time is it?"), Gap(0.2), STOPPED(), Gap(0.05)]
    script += [TranscriptFrame(text="What time is it?")]
    out = await run_processor(TurnTaking(preemptive_reply=True), script)
    assert tentative(out) == ["What time is it?"]
    assert turns(out) == ["What time is it?"]


@virtual_time
async def test_no_tentative_turn_by_default_or_without_words() -> None:
    script: list[Frame | Gap] = [
        STARTED(),
        Gap(0.5),
        UserSpeechPausedFrame(),
        Gap(0.1),
        TranscriptFrame(text="Hello"),
    ]
    out = await run_processor(TurnTaking(), [*script, Gap(0.25), STOPPED()])
    assert tentative(out) == [] and turns(out) == ["Hello"]
    script = [
        STARTED(),
        Gap(0.5),
        InterimTranscriptFrame(text="um"),
        UserSpeechPausedFrame(),
        Gap(0.3),
        STOPPED(),
    ]
    assert tentative(await run_processor(TurnTaking(preemptive_reply=True), script)) == []


BOT_CUT: list[Frame | Gap] = [Gap(1.0), BotStartedSpeakingFrame(), Gap(1.1), BotStoppedSpeakingFrame()]
"""The bot answers the first turn and falls silent when the barge-in (at 2.0 s) cuts it."""


def barge_in_then(after: list[Frame | Gap]) -> list[Frame | Gap]:
    return [
        STARTED(),
        TranscriptFrame(text="tell me a story"),
        STOPPED(),
        Gap(2.0),
        STARTED(),
        Gap(0.3),
        STOPPED(),
        *after,
    ]


@virtual_time
async def test_a_barge_in_without_words_resumes_the_reply() -> None:
    turn = TurnTaking()
    out = await run_processor(turn, barge_in_then([Gap(1.5)]), upstream=BOT_CUT)
    assert interruptions(out) == 1
    assert [f.repeat for f in out.of(ResumeReplyFrame)] == [False]
    assert turn.false_interruptions == 1
    repeat = await run_processor(
        TurnTaking(false_interruption="repeat"),
        barge_in_then([Gap(1.5)]),
        upstream=BOT_CUT,
    )
    assert [f.repeat for f in repeat.of(ResumeReplyFrame)] == [True]


@virtual_time
async def test_a_barge_in_with_words_or_with_resuming_off_resumes_nothing() -> None:
    words = barge_in_then([Gap(0.3), TranscriptFrame(text="stop please"), Gap(1.5)])
    out = await run_processor(TurnTaking(), words, upstream=BOT_CUT)
    assert out.of(ResumeReplyFrame) == [] and turns(out)[-1] == "stop please"
    off = await run_processor(
        TurnTaking(false_interruption="off"),
        barge_in_then([Gap(1.5)]),
        upstream=BOT_CUT,
    )
    assert off.of(ResumeReplyFrame) == []


@virtual_time
async def test_speech_within_the_window_restarts_the_wait() -> None:
    script = barge_in_then([Gap(0.6), STARTED(), Gap(0.3), STOPPED(), Gap(0.6)])
    out = await run_processor(TurnTaking(), script, upstream=BOT_CUT)
    assert out.of(ResumeReplyFrame) == []  # 0.6 s since the last speech: not yet
    later = await run_processor(TurnTaking(), [*script, Gap(0.6)], upstream=BOT_CUT)
    assert len(later.of(ResumeReplyFrame)) == 1
