"""Continuous-batching generation over fixed shapes: the host side of the four graphs.

The Scheduler decides what runs next; this module turns its decisions into graph inputs (via the
packers), runs the graphs, and reports back. Clips may be submitted at any time, by several
callers; each caller gets its clips' tokens when the last of their task rows ends.
"""

from __future__ import annotations

import hashlib
import time

import mindspore as ms
import numpy as np

from pipeline import shapes
from pipeline.model.graph_shapes import (
    AUDIO_BLOCKS,
    MAX_CLIPS_PER_ROW,
    STAGE_BLOCKS,
    EngineShape,
)
from pipeline.model.graphs import (
    EncodeGraph,
    InsertGraph,
    ModelState,
    PrefillGraph,
    Qwen2Audio,
    StepGraph,
    compiled_graph_count,
)
from pipeline.model.interface import ClipInput
from pipeline.model.model_plan import Sampling
from pipeline.model.packing import pack_encoder_row, pack_prefill_row, prompt_tokens
from pipeline.model.prompts import PromptPlan
from pipeline.model.scheduler import (
    ClipJob,
    Encode,
    Insert,
    Prefill,
    RowJob,
    Scheduler,
    Step,
)
from pipeline.model.stats import GenerationStats


def row_seed(key: str, task_index: int, seed: int) -> int:
    """Sampling seed from the row's identity, so reruns and any batch composition give the same draws."""
    digest = hashlib.sha256(f"{seed}\0{key}\0{task_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


class Generator:
    def __init__(self, model: Qwen2Audio, spec, prompts: PromptPlan, shape: EngineShape, budgets: list[int],
                 dtype, sampling: Sampling):
        self.spec, self.prompts, self.shape = spec, prompts, shape
        self.budgets = list(budgets)
        self.sampling = sampling
        self.state = ModelState(spec, shape, dtype)
        sample = not sampling.greedy
        self.encode_graph = EncodeGraph(model, self.state)
        self.prefill_graph = PrefillGraph(model, self.state, sample)
        self.insert_graph = InsertGraph(spec, self.state)
        self.step_graph = StepGraph(model, self.state, sample)
        self.reset()
        self.stats = GenerationStats()
        self.keep_first_logits = False
        self.first_logits: dict[tuple[str, int], np.ndarray] = {}
        temperature = max(sampling.temperature, 1e-6)
        self._temperature = {n: ms.Tensor(np.full((n, 1), temperature, np.float32))
                             for n in (shape.first_tokens, shape.slots)}
        self._top_p = {n: ms.Tensor(np.full((n, 1), sampling.top_p, np.float32))
                       for n in (shape.first_tokens, shape.slots)}

    def reset(self) -> None:
        """Forget every clip and row (after a failed graph call). The state Parameters need no
        clearing: every block and slot is rewritten whole before it is read again."""
        shape = self.shape
        self.scheduler = Scheduler(shape.slots, shape.row_frames, shape.prefill_len, MAX_CLIPS_PER_ROW,
                                   AUDIO_BLOCKS, STAGE_BLOCKS, shape.insert_rows, self.prompts.eos_ids)
        self.features: dict[ClipJob, np.ndarray] = {}

    @property
    def graphs(self):
        return (self.encode_graph, self.prefill_graph, self.insert_graph, self.step_graph)

    @property
    def graphs_compiled(self) -> int:
        return compiled_graph_count(self.graphs)

    # --- submitting and running ----------------------------------------------------------------

    def submit(self, clips: list[ClipInput], owner=None) -> list[ClipJob]:
        jobs = []
        for index, clip in enumerate(clips):
            if clip.valid_frames > shapes.WINDOW_FRAMES:
                raise ValueError(f"clip {clip.key} has {clip.valid_frames} frames, more than the 30 s window")
            tokens = shapes.audio_tokens(clip.valid_frames)
            job = ClipJob(clip.key, clip.valid_frames, tokens, prompt_tokens(self.prompts, tokens), owner, index)
            self.features[job] = clip.features
            self.scheduler.submit(job, self.shape.tasks)
            jobs.append(job)
        return jobs

    def run_once(self) -> list[ClipJob] | None:
        """Run the scheduler's next action; -> clips that finished, or None when there is nothing to do."""
        action = self.scheduler.next_action()
        if action is None:
            return None
        start = time.perf_counter()
        finished: list[ClipJob] = []
        if isinstance(action, Encode):
            self._encode(action)
            self.stats.encode_s += time.perf_counter() - start
        elif isinstance(action, Prefill):
            finished = self._prefill(action)
            self.stats.prefill_s += time.perf_counter() - start
        elif isinstance(action, Insert):
            self._insert(action)
            self.stats.insert_s += time.perf_counter() - start
        elif isinstance(action, Step):
            finished = self._step()
            self.stats.steps_s += time.perf_counter() - start
        self.stats.generated_tokens += sum(len(tokens) for clip in finished for tokens in clip.tokens)
        return finished

    def generate(self, clips: list[ClipInput]) -> list[list[list[int]]]:
        """All of clips, start to finish: -> [clip][task] generated token ids (end-of-sequence excluded)."""
        jobs = self.submit(clips)
        while self.run_once() is not None:
            pass
        return [job.tokens for job in jobs]

    def _empty_calls(self):
        """Each graph with inputs built the way the run builds them, for nothing: no clip, no row."""
        row = pack_encoder_row([], [], self.shape.row_frames, self.shape.n_mels)
        prefill_row = pack_prefill_row(self.prompts, [], self.shape.prefill_len, self.shape.audio_rows - 1)
        return (
            (self.encode_graph, self.encode_inputs(row, 0)),
            (self.prefill_graph, self.prefill_inputs(prefill_row, 0, [], [])),
            (self.insert_graph, self.insert_inputs([((self.shape.stage_rows - 1,), 0)])),
            (self.step_graph, self.step_inputs()),
        )

    def precompile(self) -> None:
        """Compile the four graphs now, in a fixed order. A fixed order is what lets MindSpore's
        compile cache (keyed by compile position) serve later processes; compiling up front also
        keeps compile time out of the first batches."""
        for graph, inputs in self._empty_calls():
            graph.compile(*inputs)

    def warm_up(self) -> None:
        """Run each graph once on empty inputs. A graph's first run costs far more than later ones
        (measured on the CPU backend: prefill 2.7 s against 0.2 s, encode 0.5 s against 0.14 s:
        kernels and memory are set up then), which belongs to loading, not to the first batches.
        Nothing live is touched: no slot holds a row yet, and every block is rewritten before it
        is read."""
        for graph, inputs in self._empty_calls():
            outputs = graph(*inputs)
            (outputs[0] if isinstance(outputs, tuple) else outputs).asnumpy()

    # --- actions -------------------------------------------------------------------------------

    def encode_inputs(self, row, block: int):
        first = block * self.shape.row_tokens
        arena_rows = np.arange(first, first + self.shape.row_tokens, dtype=np.int32)
        return (ms.Tensor(row.features[None]), ms.Tensor(row.frame_keep.reshape(1, 1, -1)),
                ms.Tensor(row.position_ids[None]), ms.Tensor(row.mask[None]),
                ms.Tensor(arena_rows))

    def _encode(self, action: Encode) -> None:
        features = [self.features.pop(clip) for clip in action.clips]
        row = pack_encoder_row(features, [c.valid_frames for c in action.clips], self.shape.row_frames,
                               self.shape.n_mels)
        self.encode_graph(*self.encode_inputs(row, action.block))
        first = action.block * self.shape.row_tokens
        self.scheduler.encoded_row(action, [first + offset for offset in row.token_offsets])
        self.stats.valid_frames += sum(c.valid_frames for c in action.clips)
        self.stats.computed_frames += self.shape.row_frames
        self.stats.encoder_rows += 1
        self.stats.clips_encoded += len(action.clips)

    def prefill_inputs(self, row, block: int, draws: list[float], last: list[int]):
        q = self.shape.first_tokens
        length = self.shape.prefill_len
        last_index = np.zeros(q, np.int32)
        last_index[: len(last)] = last
        u = np.zeros((q, 1), np.float32)
        u[: len(draws), 0] = draws
        stage_rows = np.arange(block * length, (block + 1) * length, dtype=np.int32)
        return (ms.Tensor(row.ids[None]), ms.Tensor(row.audio_rows[None]), ms.Tensor(row.is_audio[None]),
                ms.Tensor(row.positions[None]), ms.Tensor(row.mask[None]),
                ms.Tensor(stage_rows), ms.Tensor(last_index), self._temperature[q], self._top_p[q], ms.Tensor(u))

    def _prefill(self, action: Prefill) -> list[ClipJob]:
        row = pack_prefill_row(self.prompts, [(c.audio_row, c.audio_tokens) for c in action.clips],
                               self.shape.prefill_len, self.shape.audio_rows - 1)
        streams, last = [], []
        for clip, tasks in zip(action.clips, row.tasks):
            for task, prompt in enumerate(tasks):
                streams.append(self._stream(clip.key, task))
                last.append(prompt.last)
        draws = [s() if s else 0.0 for s in streams]
        tokens, logits = self.prefill_graph(*self.prefill_inputs(row, action.block, draws, last))
        tokens = tokens.asnumpy()
        if self.keep_first_logits:
            logits = logits.asnumpy()
        base = action.block * self.shape.prefill_len
        rows, q = [], 0
        for clip, tasks in zip(action.clips, row.tasks):
            for task, prompt in enumerate(tasks):
                rows.append(RowJob(clip, task, tuple(base + t for t in prompt.tokens), action.block,
                                   self.budgets[task], int(tokens[q]), streams[q]))
                if self.keep_first_logits:
                    self.first_logits[(clip.key, task)] = logits[q]
                q += 1
        used = sum(c.prompt_tokens for c in action.clips)
        self.stats.valid_tokens += used
        self.stats.computed_tokens += self.shape.prefill_len
        self.stats.prefill_rows += 1
        return self.scheduler.prefilled(action, rows)

    def _stream(self, key: str, task: int):
        if self.sampling.greedy:
            return None
        return np.random.default_rng(row_seed(key, task, self.sampling.seed)).random

    def insert_inputs(self, entries: list[tuple[tuple[int, ...], int]]):
        """entries: (staging rows of a prompt, slot); padded by repeating the last entry. Positions
        past the prompt read the staging trash row, which nothing writes: zeros."""
        shape = self.shape
        entries = entries + [entries[-1]] * (shape.insert_rows - len(entries))
        src = np.full((shape.insert_rows, shape.cache_span), shape.stage_rows - 1, np.int32)
        for i, (rows, _) in enumerate(entries):
            src[i, : len(rows)] = rows
        return ms.Tensor(src), ms.Tensor(np.asarray([slot for _, slot in entries], np.int32))

    def _insert(self, action: Insert) -> None:
        self.insert_graph(*self.insert_inputs([(row.src, slot) for row, slot in zip(action.rows, action.slots)]))
        self.scheduler.inserted(action)
        self.stats.inserted_rows += len(action.rows)
        self.stats.insert_calls += 1

    def step_inputs(self):
        n = self.shape.slots
        ids = np.full(n, self.prompts.eos_ids[0], np.int32)
        positions = np.full(n, self.shape.span, np.int32)  # idle slots: the scratch position
        u = np.zeros((n, 1), np.float32)
        for slot, row in enumerate(self.scheduler.slots):
            if row is not None:
                ids[slot], positions[slot] = row.next_token, row.position
                if row.draw is not None:
                    u[slot, 0] = row.draw()
        return ms.Tensor(ids), ms.Tensor(positions), self._temperature[n], self._top_p[n], ms.Tensor(u)

    def _step(self) -> list[ClipJob]:
        active = self.scheduler.active
        tokens, _ = self.step_graph(*self.step_inputs())
        finished = self.scheduler.stepped(tokens.asnumpy())
        self.stats.decode_steps += 1
        self.stats.row_steps += self.shape.slots
        self.stats.useful_row_steps += active
        self.stats.valid_tokens += active
        self.stats.computed_tokens += self.shape.slots
        return finished
