"""The end-of-turn benchmark's re-judging policy: a turn judged unfinished is judged again as the silence
grows, and ends at the first finished verdict."""

from __future__ import annotations

import pytest

from benchmarks.turn_set import Sample
from benchmarks.turns import Judged, Recheck, rechecked_row, separation_by_silence

DECISION = 0.05  # seconds each verdict takes (2 + 48 ms, as below)


def judged(kind: str, first: float, again: tuple[float, float], pause: float = 0.0) -> Judged:
    """A turn whose verdict is ``first`` hearing 0.2 s of silence, then ``again`` at 0.5 s and 1.1 s."""
    sample = Sample(f"a/{kind}@{pause}", kind, "nl", "a.ogg", cut=1.0, pause=pause, heard_silence=0.0)
    rechecks = tuple(Recheck(heard, p, DECISION) for heard, p in zip((0.5, 1.1), again, strict=True))
    return Judged(sample, first, 20.0, stream_features_ms=2.0, inference_ms=48.0, rechecks=rechecks)


def test_a_turn_judged_unfinished_ends_at_the_first_finished_re_judgement() -> None:
    turns = [
        judged("finished", 0.9, (0.1, 0.1)),  # finished at once: short (the verdict came before it)
        judged("finished", 0.2, (0.9, 0.9)),  # finished when it has heard 0.5 s: ends at 0.55
        judged("finished", 0.2, (0.2, 0.9)),  # only at 1.1 s: ends at 1.15
        judged("finished", 0.2, (0.2, 0.2)),  # never: the long wait
    ]
    row = rechecked_row(turns, threshold=0.5, short=0.3, long=1.5, heard=0.2)
    assert row["latency"] == pytest.approx((0.3 + 0.55 + 1.15 + 1.5) / 4)
    assert row["rechecks"] == [0.5, 1.1]


def test_a_re_judgement_cuts_off_only_a_speaker_still_silent_when_it_comes() -> None:
    turns = [
        judged("two-part", 0.2, (0.9, 0.9), pause=0.8),  # judged finished at 0.55 s, resumes at 0.8: cut
        judged("unfinished", 0.2, (0.9, 0.9), pause=0.4),  # resumed before the re-judgement: not cut
        judged("two-part", 0.2, (0.2, 0.2), pause=1.2),  # never finished; resumes within the long wait
        judged("two-part", 0.2, (0.2, 0.9), pause=1.2),  # ...unless judged finished at 1.15 s
    ]
    row = rechecked_row(turns, threshold=0.5, short=0.3, long=1.5, heard=0.2)
    assert row["false_cut_offs"] == pytest.approx(2 / 4)
    assert row["by_kind"]["unfinished"] == {"n": 1, "false_cut_offs": 0.0}


def test_a_re_judgement_due_after_the_long_wait_does_not_count() -> None:
    late = [judged("finished", 0.2, (0.2, 0.9)), judged("two-part", 0.2, (0.2, 0.9), pause=1.6)]
    row = rechecked_row(late, threshold=0.5, short=0.3, long=1.0, heard=0.2)
    assert row["latency"] == 1.0 and row["false_cut_offs"] == 1.0  # the wait ran out at 1.0 s


def test_separation_is_given_for_every_length_of_silence_heard() -> None:
    turns = [
        judged("finished", 0.9, (0.1, 0.5)),
        judged("finished", 0.8, (0.2, 0.5)),
        judged("two-part", 0.1, (0.9, 0.5), pause=0.8),
    ]
    assert separation_by_silence(turns, heard=0.2) == {"0.2": 1.0, "0.5": 0.0, "1.1": 0.5}
