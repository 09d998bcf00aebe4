"""Each compiled graph against the reference's equivalent work, per unit of work, in one process.

The realistic run says how fast the whole pipeline is; this says where a graph stands against torch
doing the same kind of work: the encoder per mel frame (both over full 30 s windows), prefill per
prompt token (both over rows of the same length), a decode step per row (both over the same number
of rows and cached positions). Medians of several calls after a warm-up; both sides use every core.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

REPEATS = 5


def _median_ms(fn, repeats: int = REPEATS) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def profile_graphs(model_dir: Path, task_prompts: list[str], budgets: list[int], slots: int, threads: int) -> dict:
    import mindspore as ms
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    from pipeline.model import cpu_kernels, runtime
    from pipeline.model.generate import Generator
    from pipeline.model.graph_shapes import declare_shape
    from pipeline.model.graphs import Qwen2Audio
    from pipeline.model.decoding import Decoding
    from pipeline.model.packing import pack_encoder_row, pack_prefill_row
    from pipeline.model.prompts import build_prompt_plan, eos_token_ids, resolve_style
    from pipeline.model.spec import ModelSpec
    from pipeline.model.weights import load_weights

    runtime.configure("cpu", None, threads)
    torch.set_num_threads(threads)
    processor = AutoProcessor.from_pretrained(model_dir)
    style = resolve_style("auto", model_dir)
    plan = build_prompt_plan(processor, style, task_prompts, eos_token_ids(model_dir, processor.tokenizer, style))
    spec = ModelSpec.from_checkpoint(model_dir)
    # The graphs as the run has them (the compiled CPU kernels where they build).
    model = Qwen2Audio(spec, ms.float32, cpu_kernels.for_graphs("cpu", "fp32", None))
    load_weights(model, model_dir, spec.tie_embeddings)
    shape = declare_shape(plan, budgets, slots, spec.max_positions, spec.n_mels)
    generator = Generator(model, spec, plan, shape, budgets, ms.float32, Decoding())
    reference = Qwen2AudioForConditionalGeneration.from_pretrained(model_dir).eval()
    rng = np.random.default_rng(0)

    # Encoder: one row of 3000 frames (ours, several clips) vs 8 clips padded to 3000 (reference).
    row = pack_encoder_row([rng.standard_normal((spec.n_mels, 3000)).astype(np.float32)], [2998], 3000, spec.n_mels)
    encode_inputs = generator.encode_inputs(row, 0)
    ours_encode = _median_ms(lambda: generator.encode_graph(*encode_inputs).asnumpy())
    features = torch.randn(8, spec.n_mels, 3000)
    with torch.no_grad():
        ref_encode = _median_ms(lambda: reference.model.audio_tower(features)) / 8

    # Prefill: one packed row of L tokens vs 8 prompts of L tokens.
    audio_tokens = shape.prefill_len - plan.prefix_len(0) - sum(len(s) for s in plan.suffixes)
    prefill_row = pack_prefill_row(plan, [(0, audio_tokens)], shape.prefill_len, shape.audio_rows - 1)
    prefill_inputs = generator.prefill_inputs(prefill_row, 0, [], [], [])
    ours_prefill = _median_ms(lambda: generator.prefill_graph(*prefill_inputs)[0].asnumpy())
    ids = torch.randint(0, 400, (8, shape.prefill_len))
    with torch.no_grad():
        ref_prefill = _median_ms(lambda: reference.model.language_model(input_ids=ids, use_cache=False)) / 8

    # Decode step: all slots live at a position near the span's end vs the same rows and cache in torch.
    for slot in range(slots):
        generator.scheduler.slots[slot] = _Live(shape.span - 2)
    step_inputs = generator.step_inputs()
    generator.scheduler.slots = [None] * slots
    ours_step = _median_ms(lambda: generator.step_graph(*step_inputs)[0].asnumpy(), 4 * REPEATS)
    lm = reference.model.language_model
    with torch.no_grad():
        cache = lm(input_ids=torch.randint(0, 400, (slots, shape.span - 2)), use_cache=True).past_key_values
        token = torch.randint(0, 400, (slots, 1))
        positions = torch.full((slots, 1), shape.span - 2)

        def ref_step():
            out = lm(input_ids=token, past_key_values=cache, position_ids=positions, use_cache=True)
            reference.lm_head(out.last_hidden_state).argmax(-1)
            cache.crop(-1)  # the next call decodes the same position again

        ref_step_ms = _median_ms(ref_step, 4 * REPEATS)

    insert_inputs = generator.insert_inputs([(tuple(range(shape.span)), slot, 0) for slot in range(shape.insert_rows)])
    ours_insert = _median_ms(lambda: generator.insert_graph(*insert_inputs).asnumpy())
    return {
        "encode": {"ours_ms_per_row": ours_encode, "ours_ms_per_1000_frames": ours_encode / 3,
                   "reference_ms_per_1000_frames": ref_encode / 3},
        "prefill": {"tokens": shape.prefill_len, "ours_ms_per_row": ours_prefill,
                    "ours_ms_per_token": ours_prefill / shape.prefill_len,
                    "reference_ms_per_token": ref_prefill / shape.prefill_len},
        "step": {"rows": slots, "span": shape.span, "ours_ms": ours_step, "reference_ms": ref_step_ms,
                 "ours_ms_per_row": ours_step / slots, "reference_ms_per_row": ref_step_ms / slots},
        "insert": {"rows": shape.insert_rows, "ours_ms": ours_insert},
    }


class _Live:
    """A stand-in row for building step inputs: every slot live at one position."""

    def __init__(self, position: int):
        self.next_token, self.cache_len, self.draw, self.parameters, self.forced = 1, position, None, (), ()
