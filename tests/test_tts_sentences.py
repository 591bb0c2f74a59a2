"""SentenceChunker: where streamed text is cut into speakable pieces."""

from __future__ import annotations

import pytest

from processors.tts.sentences import SentenceChunker


def chunk(text: str, step: int = 1, **options: int) -> list[str]:
    """Feed ``text`` ``step`` characters at a time (as an LLM streams it); then flush."""
    chunker = SentenceChunker(**options)
    pieces: list[str] = []
    for start in range(0, len(text), step):
        pieces += chunker.feed(text[start : start + step])
    rest = chunker.flush()
    return [*pieces, rest] if rest else pieces


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_splits_at_sentence_ends_whatever_the_chunking(step: int) -> None:
    text = "Hello there! How are you? I am fine. Thanks"
    assert chunk(text, step) == ["Hello there!", "How are you?", "I am fine.", "Thanks"]


def test_a_full_stop_waits_for_the_next_character() -> None:
    chunker = SentenceChunker()
    assert chunker.feed("It costs 3.") == []
    assert chunker.feed("5 euros. ") == ["It costs 3.5 euros."]


def test_abbreviations_and_initials_do_not_end_a_sentence() -> None:
    text = "Dr. Smith met J. R. Tolkien, e.g. at St. Giles vs. Mr. Brown. Done."
    assert chunk(text, first_chunk_min_words=0) == [
        "Dr. Smith met J. R. Tolkien, e.g. at St. Giles vs. Mr. Brown.",
        "Done.",
    ]


def test_sentence_ending_in_i_or_a_single_word_still_ends() -> None:
    assert chunk("So am I. And you? Yes. No.") == ["So am I.", "And you?", "Yes.", "No."]


def test_closing_quotes_and_brackets_stay_with_their_sentence() -> None:
    assert chunk('He said "Go." Then (quietly.) we left!') == ['He said "Go."', "Then (quietly.)", "we left!"]


def test_ellipsis_and_repeated_marks_end_once() -> None:
    assert chunk("Well... Really?! Yes") == ["Well...", "Really?!", "Yes"]


def test_newlines_always_split() -> None:
    assert chunk("Steps\n1) mix\n\n2) bake") == ["Steps", "1) mix", "2) bake"]


def test_semicolons_and_colons_split_only_long_pieces() -> None:
    short = "Note: this is short; really. "
    assert chunk(short) == ["Note: this is short; really."]
    long = "The first part of this answer goes on for quite a while before it pauses; then it ends."
    assert chunk(long, long_chars=40) == [
        "The first part of this answer goes on for quite a while before it pauses;",
        "then it ends.",
    ]


def test_the_first_piece_of_a_reply_may_end_at_a_comma() -> None:
    text = "Well, the capital of France, as you may know, is Paris, a big city. Yes, it is, really, true."
    assert chunk(text, first_chunk_min_words=6) == [
        "Well, the capital of France, as you may know,",
        "is Paris, a big city.",
        "Yes, it is, really, true.",
    ]


def test_comma_cuts_can_be_disabled() -> None:
    text = "Well, the capital of France, as you may know, is Paris."
    assert chunk(text, first_chunk_min_words=0) == [text]


def test_flush_starts_a_new_reply_that_may_cut_at_a_comma_again() -> None:
    chunker = SentenceChunker(first_chunk_min_words=3)
    assert chunker.feed("One two three, four. Five six seven, eight") == ["One two three,", "four."]
    assert chunker.flush() == "Five six seven, eight"
    assert chunker.feed("Nine ten eleven, twelve") == ["Nine ten eleven,"]


def test_text_without_breaks_is_cut_at_a_space() -> None:
    words = " ".join(["word"] * 100)
    pieces = chunk(words, max_chars=60)
    assert all(len(p) <= 60 for p in pieces)
    assert " ".join(pieces) == words


def test_clear_drops_buffered_text() -> None:
    chunker = SentenceChunker()
    chunker.feed("Half a sent")
    chunker.clear()
    assert chunker.feed("New one. ") == ["New one."]
    assert chunker.flush() is None


def test_whitespace_only_gives_nothing() -> None:
    assert chunk("  \n \n ") == []


def test_first_chunk_max_words_cuts_the_first_piece_without_punctuation() -> None:
    chunker = SentenceChunker(first_chunk_max_words=3)
    assert chunker.feed("The capital") == []
    assert chunker.feed(" of") == []  # "of" may still be growing: no space after it yet
    assert chunker.feed(" France is Paris. It is") == ["The capital of", "France is Paris."]
    assert chunker.feed(" lovely in spring. ") == ["It is lovely in spring."]  # only the first piece
    assert chunker.flush() is None
    assert chunker.feed("Yes it is. ") == ["Yes it is."]  # a sentence end inside the limit still wins
