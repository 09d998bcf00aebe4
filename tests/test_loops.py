"""Telling a looping answer (model/loops.py): it hit its cap, and its end repeats one n-gram."""

import pytest

from pipeline.model.loops import looping


@pytest.mark.parametrize("tokens, flagged", [
    ("laPPPPPPPPPP", True),  # one token over and over
    ("the cat sat " * 4, True),  # a phrase, back to back
    ("xyzabcabcabc", True),  # three copies covering most of the answer
    ("the quick brown fox jumps over the lazy dog", False),
    ("abcdefghabab", False),  # repeats, but only a little of the answer
    ("abababababab"[:5] + "qrstuvwxyz01", False),  # a repetition early on, then it moves on
])
def test_loops_are_repetitions_covering_most_of_a_capped_answer(tokens, flagged):
    assert looping(list(tokens), hit_cap=True) is flagged


def test_an_answer_that_ended_is_never_a_loop():
    assert not looping(list("laPPPPPPPPPP"), hit_cap=False)
    assert not looping([], hit_cap=True)
