"""The conversation history: token budget, and keeping only what was heard after a barge-in."""

from __future__ import annotations

from processors.llm.context import Conversation, approximate_tokens


def reply(conversation: Conversation, user: str, *chunks: str) -> None:
    """One complete turn: the user speaks, the assistant's reply streams in."""
    conversation.add_user(user)
    conversation.begin_assistant()
    for chunk in chunks:
        conversation.append(chunk)
    conversation.finish()


def contents(conversation: Conversation) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in conversation.messages()]


def test_messages_start_with_the_system_prompt() -> None:
    conversation = Conversation("Be brief.")
    reply(conversation, "Hi", "Hello", " there.")
    assert contents(conversation) == [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello there.")]


def test_no_system_message_when_the_prompt_is_empty() -> None:
    conversation = Conversation("")
    conversation.add_user("Hi")
    assert contents(conversation) == [("user", "Hi")]


def test_an_empty_reply_leaves_no_assistant_turn() -> None:
    conversation = Conversation("s")
    reply(conversation, "Hi", "  ")
    assert contents(conversation) == [("system", "s"), ("user", "Hi")]


def test_trim_drops_the_oldest_turns_first_and_keeps_the_system_prompt() -> None:
    conversation = Conversation("x" * 4000)  # the system prompt does not count against the budget
    for n in range(5):
        reply(conversation, f"question {n} " + "q" * 36, f"answer {n} " + "a" * 36)
    conversation.add_user("last question")
    # each old message is 47 // 4 + 4 = 15 tokens, the last one 13 // 4 + 4 = 7: two turns and it fit in 70
    conversation.trim(budget=70, count_tokens=lambda text: len(text) // 4)
    kept = contents(conversation)
    assert kept[0] == ("system", "x" * 4000)
    assert [text.split()[1] for _, text in kept[1:-1]] == ["3", "3", "4", "4"]
    assert kept[-1] == ("user", "last question")


def test_trim_to_a_target_drops_more_once_over_budget_and_nothing_under_it() -> None:
    conversation = Conversation("s")
    for n in range(5):
        reply(conversation, f"question {n} " + "q" * 36, f"answer {n} " + "a" * 36)
    conversation.add_user("last question")
    four_tokens = lambda text: len(text) // 4  # noqa: E731
    conversation.trim(budget=160, count_tokens=four_tokens, target=40)  # 157 tokens: under budget
    assert len(contents(conversation)) == 12
    conversation.trim(budget=150, count_tokens=four_tokens, target=40)  # over: down to 40, not 150
    assert [text.split()[1] for _, text in contents(conversation)[1:-1]] == ["4", "4"]


def test_trim_drops_a_leading_assistant_turn_even_under_budget() -> None:
    conversation = Conversation("s")
    conversation.begin_assistant()  # the bot spoke first (a greeting)
    conversation.append("Hello, how can I help?")
    conversation.add_user("Hi")
    conversation.trim(budget=1000)
    assert contents(conversation) == [("system", "s"), ("user", "Hi")]


def test_trim_never_starts_the_history_with_an_assistant_turn() -> None:
    conversation = Conversation("s")
    reply(conversation, "q" * 400, "a" * 40)
    conversation.add_user("now")
    conversation.trim(budget=20)
    assert contents(conversation) == [("system", "s"), ("user", "now")]


def test_trim_always_keeps_the_newest_user_turn() -> None:
    conversation = Conversation("s")
    conversation.add_user("w" * 4000)
    conversation.trim(budget=10)
    assert contents(conversation) == [("system", "s"), ("user", "w" * 4000)]


def test_approximate_tokens_is_never_zero() -> None:
    assert approximate_tokens("") == 1
    assert approximate_tokens("a" * 40) == 10


def test_a_reply_heard_in_full_survives_a_later_interruption() -> None:
    conversation = Conversation("s")
    reply(conversation, "Hi", "One. ", "Two.")
    conversation.append_spoken("One.")
    conversation.append_spoken("Two.")
    conversation.truncate_to_spoken()
    assert contents(conversation)[-1] == ("assistant", "One. Two.")


def test_interrupted_reply_keeps_only_the_heard_sentences() -> None:
    conversation = Conversation("s")
    reply(conversation, "Hi", "One. ", "Two. ", "Three.")
    conversation.append_spoken("One.")
    conversation.truncate_to_spoken()
    assert contents(conversation)[-1] == ("assistant", "One.")


def test_interruption_while_generating_keeps_the_heard_part() -> None:
    conversation = Conversation("s")
    conversation.add_user("Hi")
    conversation.begin_assistant()
    conversation.append("First sentence. ")
    conversation.append_spoken("First sentence.")
    conversation.append("Second sen")
    conversation.finish()  # the generation was cancelled
    conversation.truncate_to_spoken()
    assert contents(conversation)[-1] == ("assistant", "First sentence.")


def test_interrupted_reply_with_nothing_heard_is_dropped() -> None:
    conversation = Conversation("s")
    conversation.append_spoken("Welcome!")  # an earlier greeting proves a transport is playing
    reply(conversation, "Hi", "Never played.")
    conversation.truncate_to_spoken()
    conversation.add_user("Hello?")
    assert contents(conversation) == [("system", "s"), ("user", "Hi"), ("user", "Hello?")]


def test_without_any_playout_the_generated_text_is_kept() -> None:
    conversation = Conversation("s")
    reply(conversation, "Hi", "One. ", "Two.")
    conversation.truncate_to_spoken()
    assert contents(conversation)[-1] == ("assistant", "One. Two.")


def test_spoken_text_arriving_after_the_interruption_still_counts() -> None:
    # The interruption overtakes SpokenTextFrames queued behind a busy TTS.
    conversation = Conversation("s")
    reply(conversation, "Hi", "One. ", "Two. ", "Three.")
    conversation.truncate_to_spoken()
    conversation.append_spoken("One.")
    conversation.append_spoken("Two.")
    conversation.add_user("Stop")
    assert contents(conversation)[-2:] == [("assistant", "One. Two."), ("user", "Stop")]


def test_late_spoken_text_can_complete_an_interrupted_reply() -> None:
    conversation = Conversation("s")
    reply(conversation, "Hi", "One. ", "Two.")
    conversation.append_spoken("One.")
    conversation.truncate_to_spoken()
    conversation.append_spoken("Two.")
    assert contents(conversation)[-1] == ("assistant", "One. Two.")


def test_a_later_interruption_does_not_cut_a_reply_the_user_let_finish() -> None:
    conversation = Conversation("s")
    reply(conversation, "Hi", "One. ", "Two.")
    conversation.append_spoken("One. Two")  # a TTS that reworded the end slightly
    reply(conversation, "And?", "Three. ", "Four.")
    conversation.append_spoken("Three.")
    conversation.truncate_to_spoken()
    assert contents(conversation)[2:] == [
        ("assistant", "One. Two."),
        ("user", "And?"),
        ("assistant", "Three."),
    ]


def test_spoken_text_is_matched_on_letters_and_digits_only() -> None:
    conversation = Conversation("s")
    reply(conversation, "Hi", "**Bold** claim:\n3.5 apples. ", "More.")
    conversation.append_spoken("Bold claim: 3.5 apples.")
    conversation.truncate_to_spoken()
    assert contents(conversation)[-1] == ("assistant", "Bold claim: 3.5 apples.")


def test_spoken_text_that_continues_no_reply_is_ignored() -> None:
    conversation = Conversation("s")
    reply(conversation, "Hi", "One. ", "Two.")
    conversation.append_spoken("Something injected downstream.")
    conversation.append_spoken("One.")
    conversation.truncate_to_spoken()
    assert contents(conversation)[-1] == ("assistant", "One.")


def test_a_sentence_the_tts_failed_to_speak_leaves_the_history() -> None:
    # The transport never reports a sentence that got no audio; the next one continues after a gap.
    conversation = Conversation("s")
    reply(conversation, "Count", "One. ", "Two. ", "Three.")
    conversation.append_spoken("One.")
    conversation.append_spoken("Three.")
    conversation.played_out()
    conversation.add_user("Go on")
    assert contents(conversation)[-2:] == [("assistant", "One. Three."), ("user", "Go on")]


def test_spoken_text_overtaken_by_the_bot_falling_silent_still_counts() -> None:
    conversation = Conversation("s")
    reply(conversation, "Count", "One. ", "Two.")
    conversation.append_spoken("One.")
    conversation.played_out()  # a system frame: it overtakes the last SpokenTextFrame
    conversation.append_spoken("Two.")
    conversation.add_user("Go on")
    assert contents(conversation)[-2] == ("assistant", "One. Two.")


def test_a_reply_no_sentence_of_which_was_spoken_leaves_the_history() -> None:
    conversation = Conversation("s")
    reply(conversation, "Hi", "Hello.")
    conversation.append_spoken("Hello.")
    reply(conversation, "Count", "One. ", "Two.")  # TTS failed on both sentences
    conversation.played_out()
    conversation.add_user("Hello?")
    assert contents(conversation)[1:] == [
        ("user", "Hi"),
        ("assistant", "Hello."),
        ("user", "Count"),
        ("user", "Hello?"),
    ]


def test_falling_silent_changes_nothing_without_a_playing_transport() -> None:
    conversation = Conversation("s")
    reply(conversation, "Hi", "One. ", "Two.")
    conversation.played_out()
    assert contents(conversation)[-1] == ("assistant", "One. Two.")


def call(call_id: str, name: str = "lookup") -> dict[str, object]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}


def tool_turn(conversation: Conversation, user: str, text: str, ids: list[str], after: str) -> None:
    """A reply that calls tools: its text and calls, one result per call, then its continuation."""
    conversation.add_user(user)
    conversation.begin_assistant()
    conversation.append(text)
    conversation.add_tool_calls([call(i) for i in ids])
    conversation.finish()
    for call_id in ids:
        conversation.add_tool_result(call_id, f'{{"id": "{call_id}"}}')
    conversation.begin_assistant()
    conversation.append(after)
    conversation.finish()


def test_a_reply_with_tool_calls_is_kept_in_openai_form() -> None:
    conversation = Conversation("s")
    tool_turn(conversation, "Look up a and b", "", ["a", "b"], "Done.")
    assert conversation.messages()[1:] == [
        {"role": "user", "content": "Look up a and b"},
        {"role": "assistant", "content": None, "tool_calls": [call("a"), call("b")]},
        {"role": "tool", "tool_call_id": "a", "content": '{"id": "a"}'},
        {"role": "tool", "tool_call_id": "b", "content": '{"id": "b"}'},
        {"role": "assistant", "content": "Done."},
    ]


def test_a_call_message_nobody_heard_stays_with_its_results() -> None:
    conversation = Conversation("s")
    conversation.append_spoken("Earlier text.")  # a playing transport: unheard replies are cut
    conversation.add_user("Look it up")
    conversation.begin_assistant()
    conversation.append("Let me check.")
    conversation.add_tool_calls([call("a")])
    conversation.truncate_to_spoken()  # a barge-in before anything was heard
    conversation.finish()
    conversation.add_tool_result("a", '{"error": "cancelled: the user interrupted"}')
    conversation.add_user("Never mind")
    assert [m["role"] for m in conversation.messages()] == ["system", "user", "assistant", "tool", "user"]
    assert conversation.messages()[2]["content"] is None  # its words were not heard


def test_trimming_never_leaves_a_result_without_its_call() -> None:
    conversation = Conversation("s")
    tool_turn(conversation, "first " * 40, "Checking.", ["a"], "Found " * 40)
    tool_turn(conversation, "second", "Checking.", ["b"], "Found.")
    conversation.trim(60)
    roles = [m["role"] for m in conversation.messages()]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assert conversation.messages()[1]["content"] == "second"


def test_a_result_given_later_replaces_the_placeholder_while_it_is_kept() -> None:
    conversation = Conversation("s")
    conversation.add_user("Order")
    conversation.begin_assistant()
    conversation.add_tool_calls([call("a")])
    conversation.finish()
    kept = conversation.add_tool_result("a", '{"status": "running"}')
    assert conversation.set_tool_result(kept, '{"ordered": true}')
    assert conversation.messages()[-1]["content"] == '{"ordered": true}'
    conversation.history.clear()
    assert not conversation.set_tool_result(kept, "{}")
