"""The continuous-batching scheduler, driven by a fake executor (no MindSpore): every clip finishes
exactly once with each task's tokens up to its end-of-sequence token or cap, no slot or arena
block is ever held twice, rows fit their packed rows, and slots idle only when nothing is staged."""

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import shapes
from pipeline.model.packing import encoder_span, fits_at
from pipeline.model.scheduler import ClipJob, Encode, Insert, Prefill, RowJob, Scheduler, Step

EOS = 0
HEAD, TAIL, SUFFIXES = 5, 1, (4, 6, 3)


def prompt_tokens(audio_tokens: int) -> int:
    return HEAD + audio_tokens + TAIL + sum(SUFFIXES)


def token(key: str, task: int, index: int) -> int:
    """The fake model's deterministic answer; EOS about one time in twelve."""
    value = int.from_bytes(hashlib.sha256(f"{key}/{task}/{index}".encode()).digest()[:4], "little") % 12
    return EOS if value == 0 else value


class FakeExecutor:
    """Applies the scheduler's actions the way the generator does, checking what it is asked."""

    def __init__(self, scheduler: Scheduler, budgets, row_frames, prefill_len):
        self.s, self.budgets = scheduler, budgets
        self.row_frames, self.prefill_len = row_frames, prefill_len
        self.audio_blocks_held, self.stage_blocks_held = set(), set()
        self.finished: list[ClipJob] = []
        self.idle_with_staged = 0

    def run(self, action):
        s = self.s
        if isinstance(action, Encode):
            assert action.block in s.free_audio and action.clips
            start = 0
            for clip in action.clips:  # laid out left to right, each where packing puts it
                assert clip in s.pending and fits_at(start, clip.valid_frames, self.row_frames)
                start += encoder_span(clip.valid_frames)
            s.encoded_row(action, [action.block * 1000 + i for i in range(len(action.clips))])
        elif isinstance(action, Prefill):
            assert action.block in s.free_stage and action.clips
            assert all(c in s.encoded for c in action.clips)
            assert sum(c.prompt_tokens for c in action.clips) <= self.prefill_len
            rows = [RowJob(c, t, tuple(range(10)), action.block, self.budgets[t], token(c.key, t, 0))
                    for c in action.clips for t in range(len(self.budgets))]
            self.finished += s.prefilled(action, rows)
        elif isinstance(action, Insert):
            assert len(action.rows) <= s.insert_rows
            for row, slot in zip(action.rows, action.slots):
                assert s.slots[slot] is None and row.slot is None and row in s.staged
            s.inserted(action)
        elif isinstance(action, Step):
            if any(row is None for row in s.slots) and s.staged:
                self.idle_with_staged += 1
            tokens = [token(r.clip.key, r.task, len(r.generated)) if r else -1 for r in s.slots]
            self.finished += s.stepped(tokens)


def expected_tokens(key: str, task: int, budget: int) -> list[int]:
    out = []
    while len(out) < budget:
        t = token(key, task, len(out))
        if t == EOS:
            break
        out.append(t)
    return out


clip_frames = st.lists(st.integers(min_value=1, max_value=shapes.WINDOW_FRAMES), min_size=0, max_size=25)


@settings(max_examples=150, deadline=None)
@given(clip_frames, st.integers(min_value=1, max_value=9), st.lists(st.integers(1, 20), min_size=3, max_size=3),
       st.integers(min_value=1, max_value=4), st.integers(min_value=0, max_value=3))
def test_every_clip_finishes_once_with_its_tokens(frames, slots, budgets, insert_rows, waves):
    row_frames, prefill_len = shapes.WINDOW_FRAMES, prompt_tokens(shapes.audio_tokens(shapes.WINDOW_FRAMES)) + 64
    s = Scheduler(slots, row_frames, prefill_len, max_clips_per_row=6, audio_blocks=3, stage_blocks=3,
                  insert_rows=insert_rows, eos_ids=(EOS,))
    executor = FakeExecutor(s, budgets, row_frames, prefill_len)
    clips = [ClipJob(f"c{i}", f, shapes.audio_tokens(f), prompt_tokens(shapes.audio_tokens(f)))
             for i, f in enumerate(frames)]
    # Clips arrive in waves, some while others decode.
    chunks = [clips[i::waves + 1] for i in range(waves + 1)]
    for chunk in chunks:
        for clip in chunk:
            s.submit(clip, len(budgets))
        for _ in range(7):
            action = s.next_action()
            if action is None:
                break
            executor.run(action)
    steps = 0
    while (action := s.next_action()) is not None:
        executor.run(action)
        steps += 1
        assert steps < 100_000
    assert not s.busy()
    assert sorted(c.key for c in executor.finished) == sorted(c.key for c in clips)
    for clip in clips:
        assert clip.tokens == [expected_tokens(clip.key, t, b) for t, b in enumerate(budgets)]
    assert sorted(s.free_audio) == [0, 1, 2] and sorted(s.free_stage) == [0, 1, 2]
    assert executor.idle_with_staged == 0  # a slot never idles while a staged row waits


def test_first_fit_fills_an_encoder_row_with_later_short_clips():
    s = Scheduler(4, shapes.WINDOW_FRAMES, 4096, 12, 3, 3, 4, (EOS,))
    for i, f in enumerate((2000, 1500, 900, 50)):
        s.submit(ClipJob(f"c{i}", f, shapes.audio_tokens(f), prompt_tokens(shapes.audio_tokens(f))), 3)
    action = s.next_action()
    assert isinstance(action, Encode)
    # 1500 frames do not fit after 2000; the 900- and 50-frame clips do.
    assert [c.valid_frames for c in action.clips] == [2000, 900, 50]
