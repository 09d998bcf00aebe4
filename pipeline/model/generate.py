"""Batched generation over fixed shapes: the host-side loop around the three compiled graphs.

For a batch of clips in one bucket: the prefix graph encodes the audio and prefills the shared
prompt prefix once per clip; the task graph fans each clip out to one row per task and prefills
the task's suffix; the step graph then decodes all rows together until every row has produced an
end-of-sequence token or its task's token budget. Short batches are padded with dummy clips, so
nothing but the declared shapes ever reaches MindSpore.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np

import mindspore as ms

from pipeline import shapes
from pipeline.model.decoder import MASKED
from pipeline.model.graph_shapes import BucketShape
from pipeline.model.graphs import PrefixGraph, Qwen2Audio, StepGraph, TaskGraph, compiled_graph_count
from pipeline.model.model_plan import Sampling
from pipeline.model.stats import GenerationStats
from pipeline.model.prompts import PromptPlan


@dataclass
class Generation:
    tokens: list[list[list[int]]]  # [clip][task] -> generated ids, end-of-sequence excluded
    stats: GenerationStats = field(default_factory=GenerationStats)
    first_logits: np.ndarray | None = None  # [clips * tasks, vocab], when asked for


def encoder_key_mask(valid_frames: list[int], bucket_frames: int) -> np.ndarray:
    """Additive mask [B, 1, 1, F/2] hiding encoder positions past each clip, as the reference does."""
    positions = shapes.encoder_positions(bucket_frames)
    valid = np.asarray([shapes.encoder_positions(x) for x in valid_frames])
    mask = np.where(np.arange(positions)[None, :] < valid[:, None], 0.0, MASKED).astype(np.float32)
    return mask.reshape(len(valid_frames), 1, 1, positions)


def row_seed(key: str, task_index: int, seed: int) -> int:
    """Sampling seed from the row's identity, so reruns and any batch composition give the same draws."""
    digest = hashlib.sha256(f"{seed}\0{key}\0{task_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


class Generator:
    def __init__(self, model: Qwen2Audio, spec, plan: PromptPlan, declared: dict[float, BucketShape],
                 task_max_new_tokens: list[int], dtype, sampling: Sampling):
        self.model, self.spec, self.plan = model, spec, plan
        self.declared = declared
        self.budgets = np.asarray(task_max_new_tokens, dtype=np.int64)
        self.dtype = dtype
        self.sampling = sampling
        self._graphs: dict[float, tuple[PrefixGraph, TaskGraph, StepGraph]] = {}
        self.eos = frozenset(plan.eos_ids)
        self.filler = plan.eos_ids[0]  # the input fed to rows that have already stopped

    def graphs_for(self, bucket_s: float):
        if bucket_s not in self._graphs:
            shape = self.declared[bucket_s]
            self._graphs[bucket_s] = (
                PrefixGraph(self.model, self.spec, len(self.plan.head), self.dtype),
                TaskGraph(self.model, self.spec, shape.own_len, self.dtype, not self.sampling.greedy),
                StepGraph(self.model, not self.sampling.greedy),
            )
        return self._graphs[bucket_s]

    @property
    def graphs_compiled(self) -> int:
        return compiled_graph_count(g for graphs in self._graphs.values() for g in graphs)

    def _prefix_inputs(self, shape: BucketShape, features: np.ndarray, valid_frames: list[int]):
        b, f, p = shape.batch, shape.frames, shape.prefix_len
        n = len(valid_frames)
        feats = np.zeros((b, self.spec.n_mels, f), dtype=np.float32)
        feats[:n] = features
        # Dummy rows see a full bucket so that no row's attention is entirely masked.
        frames = list(valid_frames) + [f] * (b - n)
        key_mask = encoder_key_mask(frames, f)
        ids = np.zeros((b, p), dtype=np.int32)
        audio_mask = np.zeros((b, p), dtype=bool)
        head, tail = list(self.plan.head), list(self.plan.tail)
        prefix_lens = []
        for row, frame_count in enumerate(frames):
            tokens = shapes.audio_tokens(frame_count)
            prompt = head + [self.plan.audio_token_id] * tokens + tail
            ids[row, : len(prompt)] = prompt
            audio_mask[row, len(head): len(head) + tokens] = True
            prefix_lens.append(len(prompt))
        return (
            ms.Tensor(feats).astype(self.dtype),
            ms.Tensor(key_mask),
            ms.Tensor(ids),
            ms.Tensor(audio_mask),
        ), np.asarray(prefix_lens, dtype=np.int64)

    def _task_inputs(self, shape: BucketShape, prefix_lens: np.ndarray):
        """Row r serves clip r // tasks and task r % tasks; its suffix starts after its clip's prefix."""
        rows = shape.rows
        clip_of_row = np.arange(rows) // shape.tasks
        task_of_row = np.arange(rows) % shape.tasks
        suffix_lens = np.asarray([len(self.plan.suffixes[t]) for t in task_of_row])
        ids = np.zeros((rows, shape.suffix_len), dtype=np.int32)
        for row, task in enumerate(task_of_row):
            ids[row, : suffix_lens[row]] = self.plan.suffixes[task]
        starts = prefix_lens[clip_of_row]
        offsets = np.broadcast_to(np.arange(shape.suffix_len, dtype=np.int32), (rows, shape.suffix_len))
        positions = (starts[:, None] + offsets).astype(np.int32)
        tensors = (ms.Tensor(starts.astype(np.int32)), ms.Tensor(ids), ms.Tensor(positions),
                   ms.Tensor(np.ascontiguousarray(offsets)), ms.Tensor((suffix_lens - 1).astype(np.int32)))
        return tensors, (clip_of_row, task_of_row, suffix_lens, starts)

    def _empty_caches(self, rows: int, length: int):
        zeros = tuple(ms.Tensor(np.zeros((rows, self.spec.kv_heads, length, self.spec.head_dim), np.float32))
                      .astype(self.dtype) for _ in range(self.spec.layers))
        return ms.mutable(zeros)

    def precompile(self) -> None:
        """Compile every declared graph now, bucket by bucket in declared order, with inputs built by
        the same code generate() uses. A fixed order is what lets MindSpore's compile cache (keyed
        by compile position) serve later processes; compiling up front also keeps compile time out
        of the first batches."""
        for bucket_s, shape in self.declared.items():
            prefix_graph, task_graph, step_graph = self.graphs_for(bucket_s)
            features = np.zeros((1, self.spec.n_mels, shape.frames), dtype=np.float32)
            prefix_inputs, prefix_lens = self._prefix_inputs(shape, features, [shape.frames])
            prefix_graph.compile(*prefix_inputs)
            task_inputs, _ = self._task_inputs(shape, prefix_lens)
            sampling = self._sampling_inputs(None, shape.rows)
            prefix_caches = self._empty_caches(shape.batch, shape.prefix_len)
            task_graph.compile(prefix_caches, prefix_caches, *task_inputs, *sampling)
            ids = ms.Tensor(np.zeros((shape.rows, 1), np.int32))
            own = self._empty_caches(shape.rows, shape.own_len)
            step_graph.compile(ids, ids, ids, own, own, task_inputs[0], prefix_caches, prefix_caches, *sampling)

    def _draws(self, keys: list[str], shape: BucketShape):
        """Per-row random streams for sampling; None when greedy."""
        if self.sampling.greedy:
            return None
        streams = []
        for row in range(shape.rows):
            clip, task = divmod(row, shape.tasks)
            key = keys[clip] if clip < len(keys) else f"\0padding{clip}"
            streams.append(np.random.default_rng(row_seed(key, task, self.sampling.seed)))
        return streams

    def _sampling_inputs(self, streams, rows: int):
        temperature = np.full((rows, 1), max(self.sampling.temperature, 1e-6), dtype=np.float32)
        top_p = np.full((rows, 1), self.sampling.top_p, dtype=np.float32)
        u = np.zeros((rows, 1), dtype=np.float32) if streams is None else np.asarray(
            [[s.random()] for s in streams], dtype=np.float32)
        return ms.Tensor(temperature), ms.Tensor(top_p), ms.Tensor(u)

    def generate(self, bucket_s: float, features: np.ndarray, valid_frames: list[int], keys: list[str],
                 keep_first_logits: bool = False) -> Generation:
        """features [n, n_mels, bucket frames] for n <= batch clips with their valid frame counts;
        keys identify the clips (they seed sampling)."""
        shape = self.declared[bucket_s]
        n = len(valid_frames)
        if not 0 < n <= shape.batch or features.shape[0] != n or features.shape[2] != shape.frames:
            raise ValueError(f"batch of {n} clips x {features.shape[2]} frames does not fit {shape}")
        if max(valid_frames) > shape.frames:
            raise ValueError(f"a clip has {max(valid_frames)} frames, more than bucket {bucket_s} s holds")
        prefix_graph, task_graph, step_graph = self.graphs_for(bucket_s)
        stats = GenerationStats()
        k_tasks, rows = shape.tasks, shape.rows

        t0 = time.perf_counter()
        prefix_inputs, prefix_lens = self._prefix_inputs(shape, features, valid_frames)
        k_prefix, v_prefix = prefix_graph(*prefix_inputs)
        stats.prefix_s = time.perf_counter() - t0

        streams = self._draws(keys, shape)
        t0 = time.perf_counter()
        task_inputs, rows_info = self._task_inputs(shape, prefix_lens)
        clip_of_row, task_of_row, suffix_lens, starts = rows_info
        k_prefix, v_prefix = ms.mutable(k_prefix), ms.mutable(v_prefix)
        tokens, logits, k_own, v_own = task_graph(k_prefix, v_prefix, *task_inputs,
                                                  *self._sampling_inputs(streams, rows))
        next_ids = tokens.asnumpy()
        stats.tasks_s = time.perf_counter() - t0
        first_logits = logits.asnumpy()[: n * k_tasks] if keep_first_logits else None

        generated = [[] for _ in range(rows)]
        done = clip_of_row >= n  # padding clips never count
        budgets = self.budgets[task_of_row]
        slot = suffix_lens.copy()  # where each row's next input token goes in its own cache
        last_slot = shape.own_len - 1
        row_prefix_lens = task_inputs[0]
        t0 = time.perf_counter()
        step = 0
        while True:
            for row in np.flatnonzero(~done):
                token = int(next_ids[row])
                if token in self.eos:
                    done[row] = True
                    continue
                generated[row].append(token)
                if len(generated[row]) >= budgets[row]:
                    done[row] = True
            if done.all():
                break
            step_ids = np.where(done, self.filler, next_ids).astype(np.int32).reshape(rows, 1)
            step_slots = np.minimum(slot, last_slot).astype(np.int32).reshape(rows, 1)
            stats.valid_tokens += int((~done).sum())
            tokens, _, k_own, v_own = step_graph(
                ms.Tensor(step_ids), ms.Tensor(starts.reshape(rows, 1).astype(np.int32) + step_slots),
                ms.Tensor(step_slots), ms.mutable(k_own), ms.mutable(v_own), row_prefix_lens, k_prefix, v_prefix,
                *self._sampling_inputs(streams, rows),
            )
            next_ids = tokens.asnumpy()
            slot = slot + 1
            step += 1
        stats.steps_s = time.perf_counter() - t0
        stats.decode_steps = step
        stats.computed_tokens += step * rows + shape.batch * shape.prefix_len + rows * shape.suffix_len
        stats.valid_tokens += int(prefix_lens[:n].sum()) + int(suffix_lens[: n * k_tasks].sum())
        stats.valid_frames = int(sum(valid_frames))
        stats.computed_frames = shape.batch * shape.frames
        stats.generated_tokens = sum(len(g) for g in generated[: n * k_tasks])
        tokens_out = [[generated[clip * k_tasks + t] for t in range(k_tasks)] for clip in range(n)]
        return Generation(tokens=tokens_out, stats=stats, first_logits=first_logits)
