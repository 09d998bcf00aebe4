"""Continuous-batching generation over fixed shapes: the host side of the graphs.

The Scheduler decides what runs next; this module turns its decisions into graph inputs (via the
packers), runs the graphs, and reports back. Clips may be submitted at any time, by several
callers; each caller gets its clips' tokens when the last of their task rows ends, follow-ups
included (a follow-up continues its parent's conversation in a decode slot: scheduler.FollowUps).
"""

from __future__ import annotations

import gc
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
    ExtendGraph,
    ForkGraph,
    InsertGraph,
    ModelState,
    PrefillGraph,
    Qwen2Audio,
    ScoredPrefillGraph,
    StepGraph,
    compiled_graph_count,
)
from pipeline.model.decoding import ROW_PARAMETERS, Decoding, GraphFeatures, row_parameters
from pipeline.model.interface import ClipInput
from pipeline.model.packing import pack_encoder_row, pack_prefill_row, prompt_tokens
from pipeline.model.prompts import PromptPlan
from pipeline.model.scoring import YesNo
from pipeline.model.scheduler import (
    ClipJob,
    Encode,
    Extend,
    Fork,
    FollowUps,
    Insert,
    Prefill,
    RowJob,
    Scheduler,
    Step,
)
from pipeline.model.stats import GenerationStats


def row_seed(key: str, task_index: int, seed: int, attempt: int = 0) -> int:
    """Sampling seed from the row's identity, so reruns and any batch composition give the same
    draws; a retry (attempt 1) draws from its own stream."""
    retry = f"\0retry{attempt}" if attempt else ""
    digest = hashlib.sha256(f"{seed}\0{key}\0{task_index}{retry}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def prompt_presence(prompts: PromptPlan, vocab: int) -> np.ndarray:
    """[tasks, vocab]: 1 for every id in a first question's prompt (head, audio placeholder, tail,
    suffix), the ids transformers' repetition penalty sees before the first generated token. A
    follow-up's row is unused: its presence is its conversation's (scheduler.RowJob.history)."""
    presence = np.zeros((len(prompts.suffixes), vocab), np.float32)
    for task in prompts.roots:
        ids = [*prompts.head, prompts.audio_token_id, *prompts.tail, *prompts.suffixes[task]]
        presence[task, [i for i in ids if i < vocab]] = 1.0
    return presence


class Generator:
    def __init__(self, model: Qwen2Audio, spec, prompts: PromptPlan, shape: EngineShape, budgets: list[int],
                 dtype, decoding: Decoding = Decoding(), retry: Decoding | None = None, yes_no: YesNo | None = None):
        """decoding: the run's; retry: another some rows may ask for (retry_degenerate). The graphs
        compile with what these two need (decoding.GraphFeatures), nothing more. yes_no: the tasks
        whose first token is scored and the ids it is read at (scored questions; None: none)."""
        self.spec, self.prompts, self.shape = spec, prompts, shape
        self.budgets = list(budgets)
        self.decoding = decoding
        self.graph_features = GraphFeatures.needed(decoding, retry)
        self.state = ModelState(spec, shape, dtype, self.graph_features)
        self._prompt_presence = prompt_presence(prompts, spec.vocab)
        if self.graph_features.penalty:
            self.state.prompt_presence.set_data(ms.Tensor(self._prompt_presence))
        self.encode_graph = EncodeGraph(model, self.state)
        self.yes_no = yes_no
        self._candidates = ms.Tensor(yes_no.candidates()) if yes_no is not None else None
        self._scored = frozenset(yes_no.tasks) if yes_no is not None else frozenset()
        self.prefill_graph = (ScoredPrefillGraph if yes_no is not None else PrefillGraph)(
            model, self.state, self.graph_features)
        self.insert_graph = InsertGraph(spec, self.state, self.graph_features, model.kernels)
        self.short_insert_graph = (InsertGraph(spec, self.state, self.graph_features, model.kernels, short=True)
                                   if shape.short_slots else None)
        self.step_graph = StepGraph(model, self.state, self.graph_features)
        self.extend_graph = ExtendGraph(model, self.state, self.graph_features) if shape.extend_rows else None
        self.fork_graph = ForkGraph(spec, self.state, self.graph_features) if shape.fork_rows else None
        # Follow-ups' rules: admit(clip, task) -> None to ask it, or why it is skipped (engine.py
        # evaluates the job's `when:` rules on the answers in clip.tokens). None: always asked.
        self.admit = None
        self.reset()
        self.stats = GenerationStats()
        self.keep_first_logits = False
        self.first_logits: dict[tuple[str, int], np.ndarray] = {}
        # Graphs without features never read their parameters: one constant input each.
        self._unused = {n: ms.Tensor(np.zeros((n, ROW_PARAMETERS), np.float32))
                        for n in (shape.first_tokens, shape.slots, shape.extend_rows) if n}
        # What an idle slot or a padding output reads: plain argmax, nothing penalised.
        self._idle = row_parameters(Decoding(), 1.0, spec.vocab)

    def reset(self) -> None:
        """Forget every clip and row (after a failed graph call). The state Parameters need no
        clearing: every block and slot is rewritten whole before it is read again."""
        shape = self.shape
        prompts = self.prompts
        follow_ups = None
        if prompts.parents:
            follow_ups = FollowUps(
                children={t: prompts.children(t) for t in range(shape.tasks) if prompts.children(t)},
                joins={t: prompts.suffixes[t] for t in range(shape.tasks) if prompts.parent(t) is not None},
                new_row=self._follow_up_row, admit=lambda clip, task: self.admit(clip, task) if self.admit else None)
        self.scheduler = Scheduler(shape.slots, shape.row_frames, shape.prefill_len, MAX_CLIPS_PER_ROW,
                                   AUDIO_BLOCKS, STAGE_BLOCKS, shape.insert_rows, prompts.eos_ids,
                                   follow_ups=follow_ups, extend_rows=shape.extend_rows,
                                   short_slots=shape.short_slots, short_span=shape.short_span)
        self.features: dict[ClipJob, np.ndarray] = {}

    @property
    def graphs(self):
        optional = (self.short_insert_graph, self.extend_graph, self.fork_graph)
        return (self.encode_graph, self.prefill_graph, self.insert_graph, self.step_graph,
                *(graph for graph in optional if graph is not None))

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
            decoding = clip.decoding or self.decoding
            if not self.graph_features.allows(decoding):
                raise ValueError(f"clip {clip.key} asks for {decoding}, which these graphs were not compiled for")
            tasks = tuple(range(self.shape.tasks)) if clip.tasks is None else tuple(clip.tasks)
            for task in tasks:
                if self.prompts.parent(task) is not None and self.prompts.parent(task) not in tasks:
                    raise ValueError(f"clip {clip.key} asks for task {task} without task {self.prompts.parent(task)}, "
                                     "which it follows")
            job = ClipJob(clip.key, clip.valid_frames, tokens, prompt_tokens(self.prompts, tokens), owner, index,
                          tasks=tasks, decoding=decoding, attempt=clip.attempt)
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
        elif isinstance(action, Extend):
            finished = self._extend(action)
            self.stats.extend_s += time.perf_counter() - start
        elif isinstance(action, Fork):
            self._fork(action)
            self.stats.fork_s += time.perf_counter() - start
        elif isinstance(action, Step):
            finished = self._step()
            self.stats.steps_s += time.perf_counter() - start
        self.stats.generated_tokens += sum(len(tokens) for clip in finished for tokens in clip.tokens)
        for clip in finished:
            self.stats.follow_up_rows += clip.follow_ups
            self.stats.follow_ups_skipped += len(clip.skipped)
            self.stats.prefill_tokens_saved += clip.reused_tokens
            self.stats.follow_up_question_tokens += clip.forced_tokens
        return finished

    def generate(self, clips: list[ClipInput]) -> list[list[list[int]]]:
        """All of clips, start to finish: -> [clip][task] generated token ids (end-of-sequence
        excluded; empty for a task the clip did not ask for)."""
        return [job.tokens for job in self.run_all(clips)]

    def run_all(self, clips: list[ClipInput]) -> list[ClipJob]:
        """All of clips, start to finish: -> their jobs, with each task's tokens, whether it ended
        and its log-probabilities."""
        jobs = self.submit(clips)
        while self.run_once() is not None:
            pass
        return jobs

    def _empty_calls(self):
        """Each graph with inputs built the way the run builds them, for nothing: no clip, no row."""
        row = pack_encoder_row([], [], self.shape.row_frames, self.shape.n_mels)
        prefill_row = pack_prefill_row(self.prompts, [], self.shape.prefill_len, self.shape.audio_rows - 1)
        calls = (
            (self.encode_graph, self.encode_inputs(row, 0)),
            (self.prefill_graph, self.prefill_inputs(prefill_row, 0, [], [], [])),
            (self.insert_graph, self.insert_inputs([((self.shape.stage_rows - 1,), 0, 0)])),
            (self.step_graph, self.step_inputs()),
        )
        if self.short_insert_graph is not None:  # the first short slot, which holds no row yet
            calls += ((self.short_insert_graph, self.insert_inputs([((self.shape.stage_rows - 1,),
                                                                     self.shape.long_slots, 0)])),)
        if self.extend_graph is not None:  # nothing but padding: writes only slot 0's scratch position
            calls += ((self.extend_graph, self.extend_inputs([])),)
        if self.fork_graph is not None:  # slot 0 onto itself, keeping everything: changes nothing
            calls += ((self.fork_graph, self.fork_inputs([(0, 0, self.shape.cache_span, None)])),)
        return calls

    def precompile(self) -> None:
        """Compile the declared graphs now, in a fixed order. A fixed order is what lets MindSpore's
        compile cache (keyed by compile position) serve later processes; compiling up front also
        keeps compile time out of the first batches.

        MindSpore runs a full garbage collection before it compiles (or loads) each graph: 80 ms
        each over the objects of its import and of the model's build (0.33 s of a worker's start,
        measured), none of them garbage. Frozen meanwhile, those collections skip them; unfrozen
        after, so that whatever of them a process drops later (a test's models) is still collected."""
        gc.freeze()
        try:
            for graph, inputs in self._empty_calls():
                graph.compile(*inputs)
        finally:
            gc.unfreeze()

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

    def _parameters(self, rows: list[tuple[float, ...]], n: int) -> ms.Tensor:
        """The graphs' decoding parameters [n, 6]: rows, then idle rows."""
        if not (self.graph_features.penalty or self.graph_features.sampling):
            return self._unused[n]
        table = np.empty((n, ROW_PARAMETERS), np.float32)
        table[:] = self._idle
        if rows:
            table[: len(rows)] = rows
        return ms.Tensor(table)

    def prefill_inputs(self, row, block: int, last: list[int], tasks: list[int], parameters: list[tuple]):
        q = self.shape.first_tokens
        length = self.shape.prefill_len
        last_index = np.zeros(q, np.int32)
        last_index[: len(last)] = last
        task_index = np.zeros(q, np.int32)
        task_index[: len(tasks)] = tasks
        stage_rows = np.arange(block * length, (block + 1) * length, dtype=np.int32)
        inputs = (ms.Tensor(row.ids[None]), ms.Tensor(row.audio_rows[None]), ms.Tensor(row.is_audio[None]),
                  ms.Tensor(row.positions[None]), ms.Tensor(row.mask[None]),
                  ms.Tensor(stage_rows), ms.Tensor(last_index), ms.Tensor(task_index),
                  self._parameters(parameters, q))
        return inputs + (self._candidates,) if self._candidates is not None else inputs

    def _prefill(self, action: Prefill) -> list[ClipJob]:
        row = pack_prefill_row(self.prompts, [(c.audio_row, c.audio_tokens) for c in action.clips],
                               self.shape.prefill_len, self.shape.audio_rows - 1)
        wanted, last, parameters = [], [], []
        for clip, tasks in zip(action.clips, row.tasks):
            for prompt in tasks:
                task = prompt.task
                if task not in clip.tasks:  # prefilled with the clip (its prefix is shared), not run
                    continue
                stream = self._stream(clip.key, task, clip.decoding, clip.attempt)
                wanted.append((clip, task, prompt, stream, row_parameters(clip.decoding, 0.0, self.spec.vocab)))
                last.append(prompt.last)
                parameters.append(wanted[-1][4][:-1] + (stream() if stream else 1.0,))
        tokens, logprobs, logits, *scored = self.prefill_graph(*self.prefill_inputs(
            row, action.block, last, [w[1] for w in wanted], parameters))
        tokens, logprobs = tokens.asnumpy(), logprobs.asnumpy()
        if scored:
            p_yes = self.yes_no.p_yes(scored[0].asnumpy())
            for q, (clip, task, *_) in enumerate(wanted):
                if task in self._scored:
                    clip.p_yes[task] = float(p_yes[q])
        if self.keep_first_logits:
            logits = logits.asnumpy()
        base = action.block * self.shape.prefill_len
        rows = []
        for q, (clip, task, prompt, stream, fixed) in enumerate(wanted):
            rows.append(RowJob(clip, task, tuple(base + t for t in prompt.tokens), action.block,
                               self.budgets[task], int(tokens[q]), stream, fixed[:-1],
                               first_logprob=float(logprobs[q])))
            if self.keep_first_logits:
                self.first_logits[(clip.key, task)] = logits[q]
        used = sum(c.prompt_tokens for c in action.clips)
        self.stats.valid_tokens += used
        self.stats.prefilled_tokens += used
        self.stats.computed_tokens += self.shape.prefill_len
        self.stats.prefill_rows += 1
        return self.scheduler.prefilled(action, rows)

    def _follow_up_row(self, clip: ClipJob, task: int) -> RowJob:
        """A follow-up's row, with its budget and decoding; the scheduler says where it starts."""
        stream = self._stream(clip.key, task, clip.decoding, clip.attempt)
        return RowJob(clip, task, (), -1, self.budgets[task], -1, stream,
                      row_parameters(clip.decoding, 0.0, self.spec.vocab)[:-1])

    def _stream(self, key: str, task: int, decoding: Decoding, attempt: int):
        """The row's uniform draws in (0, 1]: None when it decodes greedily."""
        if decoding.greedy:
            return None
        random = np.random.default_rng(row_seed(key, task, decoding.seed, attempt)).random
        return lambda: 1.0 - random()

    def insert_inputs(self, entries: list[tuple[tuple[int, ...], int, int]]):
        """entries: (staging rows of a prompt, slot, task), slots of one class; padded by repeating
        the last entry. Positions past the prompt read the staging trash row, which nothing
        writes: zeros."""
        shape = self.shape
        entries = entries + [entries[-1]] * (shape.insert_rows - len(entries))
        span = shape.short_cache_span if entries[0][1] >= shape.long_slots else shape.cache_span
        src = np.full((shape.insert_rows, span), shape.stage_rows - 1, np.int32)
        for i, (rows, _, _) in enumerate(entries):
            src[i, : len(rows)] = rows
        return (ms.Tensor(src), ms.Tensor(np.asarray([slot for _, slot, _ in entries], np.int32)),
                ms.Tensor(np.asarray([task for _, _, task in entries], np.int32)))

    def _insert(self, action: Insert) -> None:
        graph = self.short_insert_graph if action.slots[0] >= self.shape.long_slots else self.insert_graph
        graph(*self.insert_inputs([(row.src, slot, row.prompt_task) for row, slot in zip(action.rows, action.slots)]))
        self.scheduler.inserted(action)
        self.stats.inserted_rows += len(action.rows)
        self.stats.insert_calls += 1

    def extend_inputs(self, rows: list[RowJob]):
        """Each row's question ids at its slot's next positions; padding rows write nothing but
        their scratch position (of slot 0) and add nothing to its presence."""
        shape = self.shape
        e, c = shape.extend_rows, shape.extend_len
        ids = np.zeros((e, c), np.int32)
        positions = np.zeros((e, c), np.int32)
        write = np.full((e, c), shape.span, np.int32)  # the scratch position
        slots = np.zeros(e, np.int32)
        last = np.zeros(e, np.int32)
        weights = np.zeros((e, c), np.float32)
        parameters = []
        for j, row in enumerate(rows):
            n = len(row.forced)
            ids[j, :n] = row.forced
            positions[j, :n] = write[j, :n] = np.arange(row.cache_len, row.cache_len + n)
            slots[j], last[j], weights[j, :n] = row.slot, j * c + n - 1, 1.0
            parameters.append(row.parameters + (row.draw() if row.draw is not None else 1.0,))
        return (ms.Tensor(ids), ms.Tensor(positions), ms.Tensor(write), ms.Tensor(slots), ms.Tensor(last),
                ms.Tensor(weights.reshape(-1)), self._parameters(parameters, e))

    def _extend(self, action: Extend) -> list[ClipJob]:
        tokens, logprobs = self.extend_graph(*self.extend_inputs(list(action.rows)))
        self.stats.extend_calls += 1
        return self.scheduler.extended(action, tokens.asnumpy(), logprobs.asnumpy())

    def fork_inputs(self, entries: list[tuple[int, int, int, RowJob | None]]):
        """entries: (source slot, destination slot, positions kept, the row); padded by repeating
        the last entry."""
        entries = entries + [entries[-1]] * (self.shape.fork_rows - len(entries))
        src, dst, lengths = (ms.Tensor(np.asarray([e[i] for e in entries], np.int32)) for i in range(3))
        if not self.graph_features.penalty:
            return src, dst, lengths, self._unused[self.shape.slots]  # never read
        presence = np.zeros((len(entries), self.spec.vocab), np.float32)
        for i, (_, _, _, row) in enumerate(entries):
            if row is not None:  # the conversation's ids so far: its prompt's and every earlier turn's
                presence[i] = self._prompt_presence[row.prompt_task]
                presence[i, [t for t in row.history if t < self.spec.vocab]] = 1.0
        return src, dst, lengths, ms.Tensor(presence)

    def _fork(self, action: Fork) -> None:
        self.fork_graph(*self.fork_inputs([(row.fork_from[0], slot, row.fork_from[1], row)
                                           for row, slot in zip(action.rows, action.slots)]))
        self.scheduler.forked(action)
        self.stats.forked_rows += len(action.rows)
        self.stats.fork_calls += 1

    def step_inputs(self):
        n = self.shape.slots
        ids = np.full(n, self.prompts.eos_ids[0], np.int32)
        positions = np.full(n, self.shape.span, np.int32)  # idle slots: the scratch position
        positions[self.shape.long_slots:] = self.shape.short_span
        with_parameters = self.graph_features.penalty or self.graph_features.sampling
        parameters = [self._idle] * n if with_parameters else []
        for slot, row in enumerate(self.scheduler.slots):
            if row is not None and not row.forced:  # a follow-up waiting for its question: idle
                ids[slot], positions[slot] = row.next_token, row.cache_len
                if with_parameters:
                    parameters[slot] = row.parameters + (row.draw() if row.draw is not None else 1.0,)
        return ms.Tensor(ids), ms.Tensor(positions), self._parameters(parameters, n)

    def _step(self) -> list[ClipJob]:
        active = self.scheduler.active
        tokens, logprobs = self.step_graph(*self.step_inputs())
        finished = self.scheduler.stepped(tokens.asnumpy(), logprobs.asnumpy())
        self.stats.decode_steps += 1
        self.stats.row_steps += self.shape.slots
        self.stats.useful_row_steps += active
        self.stats.valid_tokens += active
        self.stats.computed_tokens += self.shape.slots
        return finished
