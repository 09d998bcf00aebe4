"""The continuous-batching scheduler, driven by a fake executor (no MindSpore): every clip finishes
exactly once with each task's tokens up to its end-of-sequence token or cap, no slot or arena
block is ever held twice, rows fit their packed rows, and slots idle only when nothing is staged."""

import hashlib
from dataclasses import replace

from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline import shapes
from pipeline.model.graph_shapes import EngineShape, split_slots
from pipeline.model.packing import encoder_span, fits_at
from pipeline.model.scheduler import ClipJob, Encode, Extend, FollowUps, Fork, Insert, Prefill, RowJob, Scheduler, Step

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


def run_to_end(s: Scheduler, run, executor: FakeExecutor, clips, budgets) -> None:
    """Apply the scheduler's actions with run until it has none; every clip finished once, with its tokens."""
    steps = 0
    while (action := s.next_action()) is not None:
        run(action)
        steps += 1
        assert steps < 100_000
    assert not s.busy()
    assert sorted(c.key for c in executor.finished) == sorted(c.key for c in clips)
    for clip in clips:
        assert clip.tokens == [expected_tokens(clip.key, t, b) for t, b in enumerate(budgets)]


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
    run_to_end(s, executor.run, executor, clips, budgets)
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


# --- conversations: follow-ups continue their parent's cache -------------------------------------

def conversation_token(ids) -> int:
    """The fake model's next token after a whole conversation: any slip in what a slot's cache
    holds (a wrong copy, a lost or doubled question id, a stale position) changes the answers."""
    value = int.from_bytes(hashlib.sha256(repr(tuple(ids)).encode()).digest()[:4], "little") % 12
    return EOS if value == 0 else value + 100


def prompt_ids(key: str, task: int) -> list[int]:
    return [200 + len(key), 300 + task, *(400 + ord(c) for c in key)]


def join_ids(task: int) -> list[int]:
    return [500, 600 + task, 501]


def skip_rule(key: str, task: int, answer) -> bool:
    return int.from_bytes(hashlib.sha256(f"{key}/{task}/{answer}".encode()).digest()[:2], "little") % 4 == 0


class ConversationExecutor:
    """Runs the scheduler's actions on fake slot caches that hold token ids, position by position."""

    def __init__(self, scheduler: Scheduler, budgets):
        self.s, self.budgets = scheduler, budgets
        self.staging: dict[int, int] = {}
        self.caches: dict[int, list[int]] = {}
        self.finished: list[ClipJob] = []
        self.rows = 0

    def run(self, action, roots):
        s = self.s
        if isinstance(action, Encode):
            s.encoded_row(action, [action.block * 1000 + i for i in range(len(action.clips))])
        elif isinstance(action, Prefill):
            rows = []
            for clip in action.clips:
                for task in roots:
                    if task not in clip.tasks:
                        continue
                    ids = prompt_ids(clip.key, task)
                    src = tuple(range(self.rows, self.rows + len(ids)))
                    self.staging.update(zip(src, ids))
                    self.rows += len(ids)
                    rows.append(RowJob(clip, task, src, action.block, self.budgets[task], conversation_token(ids)))
            self.finished += s.prefilled(action, rows)
        elif isinstance(action, Insert):
            for row, slot in zip(action.rows, action.slots):
                assert s.slots[slot] is None and slot not in s.pins
                self.caches[slot] = [self.staging[r] for r in row.src]
                assert row.cache_len == len(row.src)
            s.inserted(action)
        elif isinstance(action, Fork):
            assert len(set(action.slots)) == len(action.slots) <= s.insert_rows
            copies = {}
            for row, slot in zip(action.rows, action.slots):
                source, length = row.fork_from
                assert s.slots[slot] is None and (slot not in s.pins or slot == source)
                assert len(self.caches[source]) >= length
                copies[slot] = self.caches[source][:length]
            self.caches.update(copies)
            s.forked(action)
        elif isinstance(action, Extend):
            assert 0 < len(action.rows) <= s.extend_rows
            tokens = []
            for row in action.rows:
                assert row.forced and s.slots[row.slot] is row and row.cache_len == len(self.caches[row.slot])
                self.caches[row.slot] += row.forced
                tokens.append(conversation_token(self.caches[row.slot]))
            self.finished += s.extended(action, tokens, [0.0] * len(tokens))
        elif isinstance(action, Step):
            tokens = [-1] * len(s.slots)
            for slot, row in enumerate(s.slots):
                if row is not None:
                    assert not row.forced  # a follow-up's question goes in by Extend, before any step
                    assert row.cache_len == len(self.caches[slot])
                    self.caches[slot].append(row.next_token)
                    tokens[slot] = conversation_token(self.caches[slot])
            self.finished += s.stepped(tokens)


def expected_conversations(key, parents, budgets, tasks, skips: bool):
    """Each task's answer (None: skipped) by the definition on ids: a follow-up's conversation is
    its parent's, the parent's answer, then its question; a skipped turn is left out."""
    answers, conversations = {}, {}
    for task in sorted(tasks, key=lambda t: len(ancestors(parents, t))):
        parent = asked_after(parents, task, skipped={t for t, a in answers.items() if a is None})
        if parents[task] is None:
            ids = prompt_ids(key, task)
        else:
            if skips and skip_rule(key, task, tuple(answers[parent])):
                answers[task] = None
                continue
            ids = conversations[parent] + answers[parent] + join_ids(task)
        out = []
        while len(out) < budgets[task]:
            token = conversation_token(ids + out)
            if token == EOS:
                break
            out.append(token)
        answers[task], conversations[task] = out, ids
    return answers


def ancestors(parents, task):
    out = []
    while parents[task] is not None:
        task = parents[task]
        out.append(task)
    return out


def asked_after(parents, task, skipped):
    """The turn a follow-up is asked after: the task it follows, or, when that was skipped, the
    turn that one would have been asked after."""
    parent = parents[task]
    while parent in skipped:
        parent = parents[parent]
    return parent


@st.composite
def task_trees(draw):
    """Up to six tasks, each a first question or following an earlier one (branches likely)."""
    n = draw(st.integers(min_value=1, max_value=6))
    parents = [None] + [draw(st.one_of(st.none(), st.integers(0, i - 1), st.integers(0, i - 1))) for i in range(1, n)]
    return parents, draw(st.lists(st.integers(1, 6), min_size=n, max_size=n))


# Two forks wait on one slot with different lengths (slot 0: A, then B in place, C forking from A's
# end, then D in place, E forking from B's end): the one with the longer context must take the slot.
NESTED_FORKS = (([None, 0, 0, 1, 1], [4, 4, 4, 4, 4]), [700, 900], 1, 1, [None, None], False)


@example(*NESTED_FORKS)
@settings(max_examples=200, deadline=None)
@given(task_trees(), st.lists(st.integers(1, shapes.WINDOW_FRAMES), min_size=1, max_size=8),
       st.integers(min_value=1, max_value=3), st.integers(min_value=1, max_value=4),
       st.lists(st.one_of(st.none(), st.frozensets(st.integers(0, 5))), min_size=8, max_size=8), st.booleans())
def test_follow_ups_continue_the_conversation_on_ids(tree, frames, slots, insert_rows, asked, skips):
    parents, budgets = tree
    roots = [t for t, p in enumerate(parents) if p is None]
    children = {t: tuple(c for c, p in enumerate(parents) if p == t) for t in range(len(parents))}

    def new_row(clip, task):
        return RowJob(clip, task, (), -1, budgets[task], -1)

    def admit(clip, task):
        answer = clip.tokens[asked_after(parents, task, clip.skipped)]
        return "rule" if skip_rule(clip.key, task, tuple(answer)) else None

    follow_ups = FollowUps({t: c for t, c in children.items() if c}, {t: join_ids(t) for t in range(len(parents))},
                           new_row, admit if skips else None)
    s = Scheduler(slots, shapes.WINDOW_FRAMES, 4096, 6, 3, 3, insert_rows, (EOS,), follow_ups=follow_ups,
                  extend_rows=insert_rows)
    executor = ConversationExecutor(s, budgets)
    clips = []
    for i, f in enumerate(frames):
        # Some clips ask for some tasks only: a follow-up always with the task it follows.
        chosen = sorted({a for t in (asked[i] or ()) if t < len(parents) for a in (t, *ancestors(parents, t))})
        clip = ClipJob(f"c{i}", f, shapes.audio_tokens(f), 50, tasks=tuple(chosen) if chosen else None)
        s.submit(clip, len(parents))
        clips.append(clip)
    steps = 0
    while (action := s.next_action()) is not None:
        executor.run(action, roots)
        steps += 1
        assert steps < 100_000
    assert not s.busy() and not s.pins and not s.forks and all(row is None for row in s.slots)
    assert sorted(s.free_audio) == [0, 1, 2] and sorted(s.free_stage) == [0, 1, 2]
    assert sorted(c.key for c in executor.finished) == sorted(c.key for c in clips)
    for clip in clips:
        expected = expected_conversations(clip.key, parents, budgets, clip.tasks, skips)
        for task in clip.tasks:
            if expected[task] is None:
                assert task in clip.skipped and clip.tokens[task] == []
            else:
                assert task not in clip.skipped and clip.tokens[task] == expected[task], (clip.key, task)


@settings(max_examples=60, deadline=None)
@given(clip_frames, st.integers(min_value=1, max_value=6), st.integers(min_value=1, max_value=6),
       st.lists(st.integers(1, 20), min_size=3, max_size=3), st.integers(min_value=1, max_value=4),
       st.integers(min_value=20, max_value=400))
def test_short_slots_hold_only_rows_that_fit_them(frames, long_slots, short_slots, budgets, insert_rows, short_span):
    row_frames, prefill_len = shapes.WINDOW_FRAMES, prompt_tokens(shapes.audio_tokens(shapes.WINDOW_FRAMES)) + 64
    slots = long_slots + short_slots
    s = Scheduler(slots, row_frames, prefill_len, max_clips_per_row=6, audio_blocks=3, stage_blocks=3,
                  insert_rows=insert_rows, eos_ids=(EOS,), short_slots=short_slots, short_span=short_span)
    executor = FakeExecutor(s, budgets, row_frames, prefill_len)
    # Each row's prompt is its clip's: short clips fit the short slots, long ones do not.
    replay = executor.run

    def run(action):
        if isinstance(action, Prefill):
            rows = [RowJob(c, t, tuple(range(c.prompt_tokens)), action.block, budgets[t], token(c.key, t, 0))
                    for c in action.clips for t in range(len(budgets))]
            executor.finished += s.prefilled(action, rows)
            return
        if isinstance(action, Insert):
            short = [slot >= long_slots for slot in action.slots]
            assert all(short) or not any(short)  # one slot class per call
            for row, slot in zip(action.rows, action.slots):
                if slot >= long_slots:
                    assert row.cache_len + row.budget <= short_span
        if isinstance(action, Step):
            fits = [row.cache_len + row.budget <= short_span for row in s.staged]
            free = [slot for slot, row in enumerate(s.slots) if row is None]
            # A slot idles with rows staged only when none of them may take it.
            assert not any(slot < long_slots for slot in free) or not s.staged
            assert not any(slot >= long_slots for slot in free) or not any(fits)
        replay(action)

    clips = [ClipJob(f"c{i}", f, shapes.audio_tokens(f), prompt_tokens(shapes.audio_tokens(f)))
             for i, f in enumerate(frames)]
    for clip in clips:
        s.submit(clip, len(budgets))
    run_to_end(s, run, executor, clips, budgets)


def test_short_slots_take_long_rows_never_and_long_slots_take_short_rows_last():
    s = Scheduler(4, shapes.WINDOW_FRAMES, 2000, max_clips_per_row=6, audio_blocks=3, stage_blocks=3,
                  insert_rows=4, eos_ids=(EOS,), short_slots=1, short_span=50)
    clip = ClipJob("c", 100, 25, 40)
    s.submit(clip, 1)
    s._stage_users[0] = 4
    short, longer, other, second_short = (RowJob(clip, 0, tuple(range(n)), 0, 10, 1) for n in (30, 45, 60, 20))
    s.staged.extend([longer, short, other, second_short])
    first = s.next_action()  # the rows that fit take the short slot, in staged order
    assert first.rows == (short,) and first.slots == (3,)
    s.inserted(first)
    second = s.next_action()  # rows that need a long slot take the long ones before any row that fits a short one
    assert second.rows == (longer, other) and second.slots == (0, 1)
    s.inserted(second)
    third = s.next_action()  # no row needs a long slot now: one that fits a short slot takes the last long one
    assert third.rows == (second_short,) and third.slots == (2,)


class _Prompts:
    """What split_slots reads of a PromptPlan: a prefix of 12 ids around the audio, three suffixes."""

    roots = (0, 1, 2)
    suffixes = ((1,) * 5, (1,) * 6, (1,) * 7)

    def prefix_len(self, audio_tokens: int) -> int:
        return audio_tokens + 12


def test_slots_split_by_the_length_mix():
    shape = EngineShape(128, 3, 3000, 832, 36, 32, 832, 4)
    caps = [32, 16, 64]
    short_mix = [40 + 5 * i for i in range(40)] + [500 + 15 * i for i in range(15)]  # 1-10 s clips, 12 s and more
    split = split_slots(shape, _Prompts(), caps, short_mix)
    assert split.short_slots and split.long_slots % 4 == 0 and split.short_span % 64 == 0
    needs = [t + 12 + len(suffix) + cap for t in short_mix for suffix, cap in zip(_Prompts.suffixes, caps)]
    needs_long = sum(need > split.short_span for need in needs) / len(needs)
    assert split.long_slots >= needs_long * 32  # a slot for every share of rows that needs one
    # Only short clips first: half the slots stay long for whatever comes later.
    assert split_slots(shape, _Prompts(), caps, [40] * 50).long_slots == 16
    assert split_slots(shape, _Prompts(), caps, [740] * 50) == shape  # 30 s segments only: nothing to save
    assert split_slots(shape, _Prompts(), caps, []) == shape
    assert split_slots(replace(shape, extend_rows=4, extend_len=16), _Prompts(), caps, short_mix).short_slots == 0
    assert split_slots(replace(shape, slots=4), _Prompts(), caps, short_mix) == replace(shape, slots=4)
