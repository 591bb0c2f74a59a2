"""``PlayoutClock``: the playout position a barge-in truncates at, from what the output reports."""

from __future__ import annotations

import pytest

from processors.s2s.heard import PlayoutClock


def test_without_any_report_everything_sent_counts_as_heard() -> None:
    clock = PlayoutClock()
    clock.add_audio("item_1", 1000)
    assert clock.heard(now=5.0) == 1000 and not clock.playing(now=5.0)
    assert clock.cut(now=5.0) == []  # nothing to take back


def test_playout_runs_at_wall_clock_speed_from_the_start_and_stops_at_what_was_sent() -> None:
    clock = PlayoutClock()
    clock.add_audio("item_1", 2000)
    clock.started(now=10.0)
    assert clock.heard(now=10.5) == pytest.approx(500)
    assert clock.playing(now=10.5)
    assert clock.heard(now=20.0) == 2000  # never beyond what was sent
    clock.stopped(now=20.0)
    assert clock.heard(now=30.0) == 2000 and not clock.playing(now=30.0)


def test_a_spoken_text_pins_the_position_to_its_mark() -> None:
    clock = PlayoutClock()
    clock.mark("It is sunny")
    clock.add_audio("item_1", 800)
    clock.mark("in Paris.")
    clock.add_audio("item_1", 700)
    clock.started(now=1.0)
    clock.spoken("It is sunny", now=1.0)
    clock.spoken("in Paris.", now=2.5)  # the transport fell 0.7 s behind the wall clock
    assert clock.heard(now=2.6) == pytest.approx(900)


def test_a_cut_truncates_each_item_not_heard_to_its_end_and_moves_the_timeline() -> None:
    clock = PlayoutClock()
    clock.add_audio("item_1", 1000)
    clock.add_audio("item_2", 1000)
    clock.add_audio("item_3", 500)
    clock.started(now=0.0)
    assert clock.cut(now=1.25) == [("item_2", 250), ("item_3", 0)]
    assert clock.sent == pytest.approx(1250) and not clock.playing(now=9.0)
    clock.add_audio("item_4", 400)  # the next reply plays from the cut
    clock.started(now=10.0)
    assert clock.cut(now=10.1) == [("item_4", 100)]


def test_items_without_an_id_are_timed_but_never_truncated() -> None:
    clock = PlayoutClock()
    clock.add_audio("", 1000)
    clock.started(now=0.0)
    assert clock.cut(now=0.5) == []


def test_items_of_a_closed_session_are_forgotten_but_still_timed() -> None:
    clock = PlayoutClock()
    clock.add_audio("old_item", 1000)
    clock.started(now=0.0)
    clock.forget_items()  # a new session never heard of old_item
    clock.add_audio("new_item", 1000)
    assert clock.cut(now=1.5) == [("new_item", 500)]
