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
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
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

    def __post_init__(self):
        self.logprob_sum = self.first_logprob

    @property
    def position(self) -> int:
        """Cache position of the token fed at the next step."""
        return len(self.src) + len(self.generated) - 1


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
class Step:
    pass


class Scheduler:
    def __init__(self, slots: int, row_frames: int, prefill_len: int, max_clips_per_row: int, audio_blocks: int,
                 stage_blocks: int, insert_rows: int, eos_ids, staged_target: int | None = None):
        self.row_frames, self.prefill_len = row_frames, prefill_len
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

    # --- state ---------------------------------------------------------------------------------

    @property
    def active(self) -> int:
        return sum(row is not None for row in self.slots)

    def busy(self) -> bool:
        return bool(self.pending or self.encoded or self.staged or self.active)

    def submit(self, clip: ClipJob, tasks: int) -> None:
        """tasks: how many the engine runs; the clip runs clip.tasks of them (all when None)."""
        clip.rows_left = tasks if clip.tasks is None else len(clip.tasks)
        clip.tokens = [[] for _ in range(tasks)]
        clip.ended = [False] * tasks
        clip.logprob_sums = [0.0] * tasks
        self.pending.append(clip)

    # --- decisions -----------------------------------------------------------------------------

    def next_action(self) -> Encode | Prefill | Insert | Step | None:
        free = [slot for slot, row in enumerate(self.slots) if row is None]
        if free and self.staged:
            count = min(len(free), len(self.staged), self.insert_rows)
            return Insert(tuple(self.staged[i] for i in range(count)), tuple(free[:count]))
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
        finished = []
        staged = 0
        for row in rows:
            if self._ended(row, row.next_token, first=True):
                finished += self._finish(row)
            else:
                # After every staged row with at least its budget: longest first, then arrival.
                at = next((i for i, other in enumerate(self.staged) if other.budget < row.budget), len(self.staged))
                self.staged.insert(at, row)
                staged += 1
        if staged:
            self._stage_users[action.block] = staged
        else:
            self.free_stage.append(action.block)
        return finished

    def inserted(self, action: Insert) -> None:
        for row, slot in zip(action.rows, action.slots):
            self.staged.remove(row)
            row.slot = slot
            self.slots[slot] = row
            self._release_stage(row.stage_block)

    def stepped(self, tokens, logprobs=None) -> list[ClipJob]:
        """tokens[slot] is the next token of the slot's row, logprobs[slot] its raw log-probability;
        returns clips that finished."""
        finished = []
        for slot, row in enumerate(self.slots):
            if row is None:
                continue
            if logprobs is not None:
                row.logprob_sum += float(logprobs[slot])
            if self._ended(row, int(tokens[slot]), first=False):
                self.slots[slot] = None
                finished += self._finish(row)
        return finished

    def _ended(self, row: RowJob, token: int, first: bool) -> bool:
        """Record the row's newest token; True when the row is done."""
        if not first:
            row.next_token = token
        if token in self.eos:
            row.ended = True
            return True
        row.generated.append(token)
        return len(row.generated) >= row.budget

    def _finish(self, row: RowJob) -> list[ClipJob]:
        row.clip.tokens[row.task] = list(row.generated)
        row.clip.ended[row.task] = row.ended
        row.clip.logprob_sums[row.task] = row.logprob_sum
        row.clip.rows_left -= 1
        return [row.clip] if row.clip.rows_left == 0 else []

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
