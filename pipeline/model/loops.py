"""Telling an answer that loops: it hit its token cap while repeating itself.

Audio language models fail this way at scale (greedy transcripts repeating one phrase until the cap,
"laPPPPPPPPPP"): the answer stops only because it ran out of tokens. An answer is flagged when it
hit its cap and its end is one n-gram (n up to a third of the answer) repeated back to back at
least LOOP_REPEATS times, covering at least LOOP_COVERAGE of the answer. Pure sequence arithmetic
on token ids (any sequence works: the fake model uses characters).
"""

from __future__ import annotations

from collections.abc import Sequence

LOOP_COVERAGE = 0.5  # of the answer's tokens, at least
LOOP_REPEATS = 3  # copies of the n-gram, at least


def periodic_tail(tokens: Sequence, period: int) -> int:
    """Length of the longest tail of tokens that repeats with this period (tokens[i] ==
    tokens[i - period] throughout it), counting its first period."""
    length = len(tokens)
    i = length - 1
    while i - period >= 0 and tokens[i] == tokens[i - period]:
        i -= 1
    return min(length, length - 1 - i + period)


def looping(tokens: Sequence, hit_cap: bool) -> bool:
    """True when an answer that hit its cap ends in a loop (see the module docstring)."""
    if not hit_cap or len(tokens) < LOOP_REPEATS:
        return False
    for period in range(1, len(tokens) // LOOP_REPEATS + 1):
        tail = periodic_tail(tokens, period)
        if tail >= LOOP_REPEATS * period and tail >= LOOP_COVERAGE * len(tokens):
            return True
    return False
