"""Continuous batching: which clip is encoded, prefilled and decoded when, and which decode slot a
task row occupies. Pure bookkeeping (no MindSpore); the generator executes what it decides.

A clip goes pending -> encoded (its audio tokens in an arena block) -> prefilled (one staged row
per task in a staging block) -> each row inserted into a free decode slot -> decoded until its
end-of-sequence token or its task's cap, which frees the slot for the next staged row. Rows never
wait for the rest of their batch, so a slot only idles when no staged row is left.

Packing is first fit in arrival order: a clip that does not fit the row being filled waits for the
next row, and is the first to be tried there, so no clip waits forever.

Staged rows enter slots longest budget first: a run ends when its last rows end, and slots idle
while they do, so long rows should not be the last to start. A short row is not starved: its
staging block stays held until it is inserted, and no new prefill starts without a free block.

Short slots (graph_shapes.split_slots): the last short_slots slots hold short_span positions. A
row whose prompt and cap fit them goes to a short slot when one is free, and to a long one only
when no staged row needs a long slot; a row that does not fit waits for a long slot.

Conversations (FollowUps): when a row ends, the tasks that follow its task start at once from its
cache, nothing recomputed. The first continues in the same slot; each further one (a branch) is a
fork: the slot's first positions are copied into another slot (Fork). Until every fork from a slot
has copied, the slot is pinned: it goes to no unrelated row, and when its own line of rows ends,
the waiting fork with the longest context takes it over (a copy onto itself that clears the rest),
so every waiting fork's positions stay intact. A row that ended at its first token (never in a
slot) has its follow-ups staged from its prompt in staging and inserted like first questions. A
follow-up in its slot first has its question's ids (`forced`) fed all at once (Extend), which gives
its first answer token; decode steps do the rest. A follow-up that its rule skips (FollowUps.admit)
is recorded in clip.skipped, and the tasks that follow it are asked after the turn it would have
followed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.model.packing import encoder_span, fits_at


@dataclass(eq=False)
class ClipJob:
    """One clip, from submission to its last task row."""

    key: str
    valid_frames: int
    audio_tokens: int
    prompt_tokens: int  # its prefix and every task suffix, as packed in a prefill row
    owner: object = None  # who gets the result (opaque here)
    index: int = 0  # position in the owner's submission
    tasks: tuple[int, ...] | None = None  # the tasks it runs (None: all)
    decoding: object = None  # model.decoding.Decoding of its rows
    attempt: int = 0  # 1 for a retry (its sampling draws come from another stream)
    audio_block: int | None = None
    audio_row: int = 0  # arena row of its first audio token
    rows_left: int = 0  # task rows not yet finished
    # Per task, once finished: the generated ids (end-of-sequence excluded), whether an
    # end-of-sequence id ended it (else its cap), and the sum of the raw log-probabilities of its
    # ids and of that end id.
    tokens: list[list[int]] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)
    logprob_sums: list[float] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)  # follow-up task -> why its rule skipped it
    p_yes: dict[int, float] = field(default_factory=dict)  # scored task -> P(yes) of its first token
    follow_ups: int = 0  # follow-up rows run
    reused_tokens: int = 0  # conversation tokens follow-ups continued from instead of prefilling again
    forced_tokens: int = 0  # follow-ups' question ids fed into their slots


@dataclass(eq=False)
class RowJob:
    """One (clip, task) row, from its prefill to its last token."""

    clip: ClipJob
    task: int
    src: tuple[int, ...]  # staging rows of its prompt, in position order
    stage_block: int
    budget: int  # most tokens it may generate
    next_token: int  # the token to feed at the next step (generated, not yet fed)
    draw: Callable[[], float] | None = None  # its sampling stream; None when greedy
    parameters: tuple[float, ...] = ()  # its decoding as the graphs read it, but the draw
    first_logprob: float = 0.0  # the raw log-probability of next_token as first chosen
    generated: list[int] = field(default_factory=list)
    slot: int | None = None
    logprob_sum: float = 0.0  # of the ids chosen so far, next_token's included
    ended: bool = False
    # Positions its cache holds (the next fed token goes here): its prompt's, and in a conversation
    # every earlier turn's. -1: len(src).
    cache_len: int = -1
    # A follow-up's question ids, until an Extend feeds them (its slot then waits for it, and no
    # step feeds it); next_token is its first answer token after that.
    forced: tuple[int, ...] = ()
    prompt_task: int = -1  # the first question whose prompt presence its insert writes (-1: task)
    history: tuple[int, ...] = ()  # a follow-up's conversation ids after the prompt, before its question
    joined: tuple[int, ...] = ()  # a follow-up's question ids (its forced ids, all of them)
    fork_from: tuple[int, int] | None = None  # a fork: (slot, positions) its cache is copied from

    def __post_init__(self):
        self.logprob_sum = self.first_logprob
        if self.cache_len < 0:
            self.cache_len = len(self.src)
        if self.prompt_task < 0:
            self.prompt_task = self.task


@dataclass(frozen=True)
class FollowUps:
    """Conversations: which tasks follow which, and how a follow-up row is made.

    children[t]: tasks asked after t's answer, in order; joins[t]: a follow-up's question ids
    (<|im_end|>, the user turn, the assistant prompt); new_row(clip, task): a RowJob with the task's
    budget and decoding (the scheduler fills in where it starts); admit(clip, task): None to ask it,
    or why its rule skips it (the clip's answers so far are in clip.tokens)."""

    children: Mapping[int, Sequence[int]]
    joins: Mapping[int, Sequence[int]]
    new_row: Callable[[ClipJob, int], RowJob]
    admit: Callable[[ClipJob, int], str | None] | None = None


@dataclass(frozen=True)
class Encode:
    clips: tuple[ClipJob, ...]
    block: int


@dataclass(frozen=True)
class Prefill:
    clips: tuple[ClipJob, ...]
    block: int


@dataclass(frozen=True)
class Insert:
    rows: tuple[RowJob, ...]
    slots: tuple[int, ...]


@dataclass(frozen=True)
class Fork:
    """Copy each row's parent cache (row.fork_from) into its slot."""

    rows: tuple[RowJob, ...]
    slots: tuple[int, ...]


@dataclass(frozen=True)
class Extend:
    """Feed each row's question (row.forced) into its slot; the outputs are their first answer tokens."""

    rows: tuple[RowJob, ...]


@dataclass(frozen=True)
class Step:
    pass


class Scheduler:
    def __init__(self, slots: int, row_frames: int, prefill_len: int, max_clips_per_row: int, audio_blocks: int,
                 stage_blocks: int, insert_rows: int, eos_ids, staged_target: int | None = None,
                 follow_ups: FollowUps | None = None, extend_rows: int = 4, short_slots: int = 0,
                 short_span: int = 0):
        if short_slots and follow_ups is not None:
            raise ValueError("short slots hold first questions only: a conversation outgrows its prompt")
        self.row_frames, self.prefill_len = row_frames, prefill_len
        self.first_short = slots - short_slots
        self.short_span = short_span
        self.extend_rows = extend_rows
        self.follow_ups = follow_ups
        self.max_clips_per_row = max_clips_per_row
        self.insert_rows = insert_rows
        self.eos = frozenset(eos_ids)
        # Staged rows to keep ready: enough that slots freed while the next prefill runs find work.
        self.staged_target = staged_target if staged_target is not None else max(insert_rows, slots // 2)
        self.pending: deque[ClipJob] = deque()
        self.encoded: list[ClipJob] = []
        self.staged: deque[RowJob] = deque()
        self.slots: list[RowJob | None] = [None] * slots
        self.free_audio = list(range(audio_blocks))
        self.free_stage = list(range(stage_blocks))
        self._audio_users: dict[int, int] = {}
        self._stage_users: dict[int, int] = {}
        self.forks: list[RowJob] = []  # follow-ups waiting for a slot and a copy of their parent's cache
        self.pins: dict[int, int] = {}  # slot -> forks waiting to copy from it

    # --- state ---------------------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Rows a step feeds: those in slots, but follow-ups still waiting for their question."""
        return sum(row is not None and not row.forced for row in self.slots)

    def busy(self) -> bool:
        return bool(self.pending or self.encoded or self.staged or self.forks or any(self.slots))

    def submit(self, clip: ClipJob, tasks: int) -> None:
        """tasks: how many the engine runs; the clip runs clip.tasks of them (all when None), each
        follow-up with the task it follows."""
        if clip.tasks is None:
            clip.tasks = tuple(range(tasks))
        clip.rows_left = len(clip.tasks)
        clip.tokens = [[] for _ in range(tasks)]
        clip.ended = [False] * tasks
        clip.logprob_sums = [0.0] * tasks
        self.pending.append(clip)

    # --- decisions -----------------------------------------------------------------------------

    def next_action(self) -> Encode | Prefill | Insert | Fork | Extend | Step | None:
        free = [slot for slot, row in enumerate(self.slots) if row is None and slot not in self.pins]
        if self.forks:
            fork = self._fork_plan(free)
            if fork is not None:
                return fork
        if free and self.staged:
            insert = self._insert_plan(free)
            if insert is not None:
                return insert
        asking = [row for row in self.slots if row is not None and row.forced]
        if asking:
            return Extend(tuple(asking[: self.extend_rows]))
        if len(self.staged) < self.staged_target and self.free_stage:
            pack = self._prompt_pack()
            if pack and sum(c.prompt_tokens for c in pack) >= self.prefill_len * 0.9:
                return Prefill(pack, self.free_stage[0])
            if self.pending and self.free_audio:
                return Encode(self._encoder_row(), self.free_audio[0])
            if pack:
                return Prefill(pack, self.free_stage[0])
        if self.active:
            return Step()
        return None

    def _insert_plan(self, free: list[int]) -> Insert | None:
        """Staged rows into free slots, in staged order, one slot class per call (each has its own
        insert graph): rows that fit a short slot into free short slots first; then long slots, to
        the rows that need one, or when none is staged, to rows that would fit a short one. Without
        short slots (short_span 0) no row fits one: staged rows take free slots in order."""
        free_short = [slot for slot in free if slot >= self.first_short]
        free_long = [slot for slot in free if slot < self.first_short]
        fits = [row.cache_len + row.budget <= self.short_span for row in self.staged]
        short_rows = [row for row, fit in zip(self.staged, fits) if fit]
        long_rows = [row for row, fit in zip(self.staged, fits) if not fit] or short_rows
        for rows, slots in ((short_rows, free_short), (long_rows, free_long)):
            count = min(len(slots), len(rows), self.insert_rows)
            if count:
                return Insert(tuple(rows[:count]), tuple(slots[:count]))
        return None

    def _fork_plan(self, free: list[int]) -> Fork | None:
        """Waiting forks into slots: a pinned slot whose rows have ended goes to the fork from it
        with the longest context (its copy clears only positions no other waiting fork needs);
        then free slots, in waiting order."""
        chosen: list[tuple[RowJob, int]] = []
        for slot in self.pins:
            if self.slots[slot] is None:
                waiting = [row for row in self.forks if row.fork_from[0] == slot]
                chosen.append((max(waiting, key=lambda row: row.fork_from[1]), slot))
        free = list(free)
        for row in self.forks:
            if free and all(row is not other for other, _ in chosen):
                chosen.append((row, free.pop(0)))
        chosen = chosen[: self.insert_rows]
        if not chosen:
            return None
        return Fork(tuple(row for row, _ in chosen), tuple(slot for _, slot in chosen))

    def _encoder_row(self) -> tuple[ClipJob, ...]:
        chosen, start = [], 0
        for clip in self.pending:
            if fits_at(start, clip.valid_frames, self.row_frames):
                chosen.append(clip)
                start += encoder_span(clip.valid_frames)
            if start >= self.row_frames:
                break
        return tuple(chosen)

    def _prompt_pack(self) -> tuple[ClipJob, ...]:
        chosen, used = [], 0
        for clip in self.encoded:
            if used + clip.prompt_tokens <= self.prefill_len:
                chosen.append(clip)
                used += clip.prompt_tokens
                if len(chosen) == self.max_clips_per_row:
                    break
        return tuple(chosen)

    # --- outcomes ------------------------------------------------------------------------------

    def encoded_row(self, action: Encode, audio_rows: list[int]) -> None:
        """The clips of action now have their audio tokens at the given first arena rows."""
        self.free_audio.remove(action.block)
        self._audio_users[action.block] = len(action.clips)
        for clip, row in zip(action.clips, audio_rows):
            self.pending.remove(clip)
            clip.audio_block, clip.audio_row = action.block, row
            self.encoded.append(clip)

    def prefilled(self, action: Prefill, rows: list[RowJob]) -> list[ClipJob]:
        """Task rows of the packed clips are staged (in clip, task order); returns clips that
        finished already (every row ended at its first token)."""
        self.free_stage.remove(action.block)
        for clip in action.clips:
            self.encoded.remove(clip)
            self._release_audio(clip.audio_block)
        self._stage_users[action.block] = 0
        finished = []
        for row in rows:
            if self._ended(row, row.next_token):
                finished += self._done(row)
            else:
                self._stage(row)
        if not self._stage_users[action.block]:
            del self._stage_users[action.block]
            self.free_stage.append(action.block)
        return finished

    def _stage(self, row: RowJob) -> None:
        # After every staged row with at least its budget: longest first, then arrival.
        at = next((i for i, other in enumerate(self.staged) if other.budget < row.budget), len(self.staged))
        self.staged.insert(at, row)
        self._stage_users[row.stage_block] += 1

    def inserted(self, action: Insert) -> None:
        for row, slot in zip(action.rows, action.slots):
            self.staged.remove(row)
            row.slot = slot
            self.slots[slot] = row
            self._release_stage(row.stage_block)

    def forked(self, action: Fork) -> None:
        for row, slot in zip(action.rows, action.slots):
            self.forks.remove(row)
            source = row.fork_from[0]
            self.pins[source] -= 1
            if not self.pins[source]:
                del self.pins[source]
            row.slot = slot
            self.slots[slot] = row

    def extended(self, action: Extend, tokens, logprobs) -> list[ClipJob]:
        """The rows' questions are in their caches; tokens[j] is row j's first answer token, logprobs[j]
        its raw log-probability; returns clips that finished."""
        finished = []
        for row, token, logprob in zip(action.rows, tokens, logprobs):
            row.cache_len += len(row.forced)
            row.forced = ()
            row.logprob_sum = float(logprob)
            if self._ended(row, int(token)):
                self.slots[row.slot] = None
                finished += self._done(row)
        return finished

    def stepped(self, tokens, logprobs=None) -> list[ClipJob]:
        """tokens[slot] is the next token of the slot's row, logprobs[slot] its raw log-probability;
        returns clips that finished."""
        finished = []
        for slot, row in enumerate(self.slots):
            if row is None or row.forced:  # a follow-up waiting for its question: not fed
                continue
            row.cache_len += 1  # the token it was fed is in its cache now
            if logprobs is not None:
                row.logprob_sum += float(logprobs[slot])
            if self._ended(row, int(tokens[slot])):
                self.slots[slot] = None
                finished += self._done(row)
        return finished

    def _ended(self, row: RowJob, token: int) -> bool:
        """Record the row's newest token; True when the row is done."""
        row.next_token = token
        if token in self.eos:
            row.ended = True
            return True
        row.generated.append(token)
        return len(row.generated) >= row.budget

    def _done(self, row: RowJob) -> list[ClipJob]:
        """The row's answer is complete: record it, start the tasks that follow it; -> the clip
        when that was its last row."""
        clip = row.clip
        clip.tokens[row.task] = list(row.generated)
        clip.ended[row.task] = row.ended
        clip.logprob_sums[row.task] = row.logprob_sum
        for i, child in enumerate(self._follow(row, row.task)):
            if row.slot is None:  # ended at its first token: inserted from its prompt in staging
                self._stage(child)
            elif i == 0:  # continues in the slot, at the next step
                child.slot = row.slot
                self.slots[row.slot] = child
            else:
                child.fork_from = (row.slot, row.cache_len)
                self.pins[row.slot] = self.pins.get(row.slot, 0) + 1
                self.forks.append(child)
        clip.rows_left -= 1
        return [clip] if clip.rows_left == 0 else []

    def _follow(self, parent: RowJob, task: int) -> list[RowJob]:
        """Rows of the tasks that follow `task`, continuing parent's conversation; a skipped task
        is recorded, and the tasks that follow it are asked in its place."""
        if self.follow_ups is None:
            return []
        clip, rows = parent.clip, []
        for child in self.follow_ups.children.get(task, ()):
            if child not in clip.tasks:
                continue
            reason = self.follow_ups.admit(clip, child) if self.follow_ups.admit else None
            if reason is not None:
                clip.skipped[child] = reason
                clip.rows_left -= 1
                rows += self._follow(parent, child)
                continue
            # The parent's last id is not in its cache when its cap ended it: fed first.
            unfed = [] if parent.ended else parent.generated[-1:]
            forced = [*unfed, *self.follow_ups.joins[child]]
            row = self.follow_ups.new_row(clip, child)
            row.forced = tuple(forced)
            row.src, row.stage_block, row.prompt_task = parent.src, parent.stage_block, parent.prompt_task
            row.cache_len = parent.cache_len
            fed = parent.generated if parent.ended else parent.generated[:-1]
            row.history = (*parent.history, *parent.joined, *fed)
            row.joined = tuple(forced)
            clip.follow_ups += 1
            clip.reused_tokens += parent.cache_len + len(unfed)
            clip.forced_tokens += len(forced)
            rows.append(row)
        return rows

    def _release_audio(self, block: int) -> None:
        self._audio_users[block] -= 1
        if self._audio_users[block] == 0:
            del self._audio_users[block]
            self.free_audio.append(block)

    def _release_stage(self, block: int) -> None:
        self._stage_users[block] -= 1
        if self._stage_users[block] == 0:
            del self._stage_users[block]
            self.free_stage.append(block)
