"""Generation counts and timings, summed by the runner into run.json (no MindSpore here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class GenerationStats:
    """Work done and work computed, per graph: padding efficiency is valid / computed."""

    valid_frames: int = 0  # mel frames of real clips encoded
    computed_frames: int = 0  # mel frames the encoder computed (rows x row frames)
    valid_tokens: int = 0  # prompt tokens prefilled and tokens fed to active decode slots
    prefilled_tokens: int = 0  # prompt tokens prefilled (first questions only; follow-ups reuse caches)
    computed_tokens: int = 0  # token positions computed by prefill rows and decode steps
    encoder_rows: int = 0
    clips_encoded: int = 0  # one per clip: every task of a clip shares its encoder pass
    prefill_rows: int = 0
    inserted_rows: int = 0
    insert_calls: int = 0
    decode_steps: int = 0
    row_steps: int = 0  # decode slots x steps
    useful_row_steps: int = 0  # slots that held a live row during a step
    generated_tokens: int = 0
    retried_answers: int = 0  # looping answers generated again (retry_degenerate)
    # Conversations (tasks that follow others): follow-up rows run and skipped by their rules; the
    # conversation tokens they continued from, which re-running each conversation from the start
    # (as a chat API is used) would prefill again; their question ids, fed by extend calls; and
    # the forks (a branch's parent cache copied to another slot).
    follow_up_rows: int = 0
    follow_ups_skipped: int = 0
    prefill_tokens_saved: int = 0
    follow_up_question_tokens: int = 0
    extend_calls: int = 0
    fork_calls: int = 0
    forked_rows: int = 0
    encode_s: float = 0.0
    prefill_s: float = 0.0
    insert_s: float = 0.0
    steps_s: float = 0.0
    extend_s: float = 0.0
    fork_s: float = 0.0

    @property
    def model_s(self) -> float:
        return self.encode_s + self.prefill_s + self.insert_s + self.steps_s + self.extend_s + self.fork_s

    def add(self, other: GenerationStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def taken(self) -> GenerationStats:
        """These counts, and zeros in their place (for per-part reporting)."""
        snapshot = GenerationStats(**asdict(self))
        for f in fields(self):
            setattr(self, f.name, type(getattr(self, f.name))())
        return snapshot
