"""`python -m pipeline bench`: the MindSpore model against the transformers reference, on a random
checkpoint written to a temporary folder; prints a table and saves the figures as JSON.

Speed is measured here and nowhere else (tests assert behaviour, never timings). Each figure is
the median of several runs after a warm-up call, so compile time never leaks into it; compile time
is measured separately, in fresh processes (no cache, an empty cache, the filled cache), as the
first call of each bucket minus its fastest later call. Other work on the machine shows up in the
figures: the load average is saved with them.
The checkpoint is bigger than the test ones so that matrix products, not per-call overhead, make up
most of the time, but its widths are still ~10x below the 7B model: read ratios, not absolutes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pipeline import shapes
from pipeline.bench.memory import measure_memory, print_memory

AUDIO = dict(d_model=256, encoder_layers=4, encoder_attention_heads=4, encoder_ffn_dim=1024)
TEXT = dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8,
            intermediate_size=1376)
VOCAB = 4096  # the tiny tokenizer has ~420 tokens; padding gives the output head a realistic share
BUCKETS = (5.0, 10.0, 30.0)
CLIPS = 4  # clips per batch, in every bucket
QUESTIONS = ("Describe this audio in one sentence.", "List the sound events in this audio.")
NEW_TOKENS = 24
REPEATS = 5
E2E_BUCKET = 10.0
THREADS = os.cpu_count() or 1


def write_bench_checkpoint(out_dir: Path) -> Path:
    """The tiny checkpoint's tokenizer and config, widened to the bench dimensions."""
    import torch
    from transformers import GenerationConfig, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    from pipeline.testing.tiny_model import build_config, build_processor

    processor = build_processor("instruct")
    base, eos_ids = build_config(processor, "small", "instruct")
    text = {**base.text_config.to_dict(), **TEXT, "vocab_size": VOCAB}
    for derived in ("layer_types", "max_window_layers"):  # recomputed for the new layer count
        text.pop(derived, None)
    audio = {**base.audio_config.to_dict(), **AUDIO}
    config = Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_index=base.audio_token_index)
    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos_ids, pad_token_id=eos_ids[0], do_sample=False)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def clip(seconds: float, seed: int) -> np.ndarray:
    """A tone over noise: deterministic audio whose features change over time."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * shapes.SAMPLE_RATE)) / shapes.SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * (200 + 30 * seed) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def clip_seconds(bucket_s: float) -> list[float]:
    """Mixed lengths that all land in bucket_s (each leaves the bucket margin free)."""
    longest = bucket_s - 2 * shapes.BUCKET_MARGIN_FRAMES / shapes.FRAMES_PER_SECOND
    return [round(longest * f, 2) for f in (1.0, 0.9, 0.75, 0.6)][:CLIPS]


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_s(fn, repeats: int = REPEATS) -> float:
    fn()  # warm-up: compiles, allocates
    return statistics.median(seconds(fn) for _ in range(repeats))


class Bench:
    """Both models on the same weights, the same clips and the same prompts."""

    def __init__(self, model_dir: Path):
        import mindspore as ms
        import torch
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        from pipeline.model.generate import Generator
        from pipeline.model.graph_shapes import declare_shapes
        from pipeline.model.graphs import Qwen2Audio
        from pipeline.model.model_plan import Sampling
        from pipeline.model.prompts import build_prompt_plan, eos_token_ids
        from pipeline.model.spec import ModelSpec
        from pipeline.model.weights import load_weights

        torch.set_num_threads(THREADS)
        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.processor.tokenizer.padding_side = "left"  # batched generation needs it; not saved with the tokenizer
        self.reference = Qwen2AudioForConditionalGeneration.from_pretrained(model_dir).eval()
        self.spec = ModelSpec.from_checkpoint(model_dir)
        self.model = Qwen2Audio(self.spec, ms.float32)
        load_weights(self.model, model_dir, self.spec.tie_embeddings)
        eos = eos_token_ids(model_dir, self.processor.tokenizer, "instruct")
        self.plan = build_prompt_plan(self.processor, "instruct", list(QUESTIONS), eos)
        self.declared = declare_shapes(BUCKETS, dict.fromkeys(BUCKETS, CLIPS), self.plan, NEW_TOKENS,
                                       self.spec.max_positions)
        self.generator = Generator(self.model, self.spec, self.plan, self.declared, [NEW_TOKENS] * len(QUESTIONS),
                                   ms.float32, Sampling())
        self.clips = {b: [clip(s, seed=i) for i, s in enumerate(clip_seconds(b))] for b in BUCKETS}

    def features(self, bucket_s: float):
        from pipeline.intake.features import bucket_features

        computed = [bucket_features(self.processor.feature_extractor, c, self.declared[bucket_s].frames)
                    for c in self.clips[bucket_s]]
        return np.stack([f for f, _ in computed]), [v for _, v in computed]

    def reference_inputs(self, bucket_s: float):
        """Every (clip, task) row, as a user of transformers batches them: 30 s padding, left-padded text."""
        rows = [(c, text) for c in self.clips[bucket_s] for text in self.plan.texts]
        return self.processor(text=[t for _, t in rows], audio=[c for c, _ in rows], sampling_rate=shapes.SAMPLE_RATE,
                              return_tensors="pt", padding=True)

    def encoder_ms_per_clip(self) -> dict:
        import mindspore as ms
        import torch

        from pipeline.model.generate import encoder_key_mask
        from pipeline.model.graphs import EncoderGraph

        encoder = EncoderGraph(self.model)
        out = {}
        for bucket_s in BUCKETS:
            features, valid = self.features(bucket_s)
            inputs = (ms.Tensor(features), ms.Tensor(encoder_key_mask(valid, features.shape[2])))
            out[f"{bucket_s:g}s bucket"] = 1e3 * median_s(lambda: encoder(*inputs).asnumpy()) / CLIPS
        # The reference encodes every clip at 30 s, whatever its length: one figure serves all.
        inputs = self.processor.feature_extractor(self.clips[E2E_BUCKET], sampling_rate=shapes.SAMPLE_RATE,
                                                  return_attention_mask=True, padding="max_length",
                                                  return_tensors="pt")
        model = self.reference.model

        def reference():  # what the reference's forward does with audio: mask, encoder, projector
            from transformers.masking_utils import create_bidirectional_mask

            lengths, _ = model.audio_tower._get_feat_extract_output_lengths(inputs["attention_mask"].sum(-1))
            positions = (inputs["input_features"].shape[-1] - 2) // 2 + 1
            valid = (torch.arange(positions)[None, :] < lengths[:, None]).long()
            mask = create_bidirectional_mask(config=model.audio_tower.config, attention_mask=valid,
                                             inputs_embeds=torch.zeros(len(valid), positions, 1))
            with torch.no_grad():
                model.multi_modal_projector(model.audio_tower(inputs["input_features"], attention_mask=mask)[0])

        out["reference 30s"] = 1e3 * median_s(reference) / CLIPS
        return out

    def decode_step_ms(self) -> dict:
        """One decode step for all rows of a batch, host round trip included (as in generate)."""
        import mindspore as ms
        import torch

        shape = self.declared[E2E_BUCKET]
        step = self.generator.graphs_for(E2E_BUCKET)[2]
        rows = shape.rows
        own = ms.mutable(tuple(ms.Tensor(np.zeros((rows, self.spec.kv_heads, shape.own_len, self.spec.head_dim),
                                                  np.float32)) for _ in range(self.spec.layers)))
        prefix = ms.mutable(tuple(ms.Tensor(np.zeros((shape.batch, self.spec.kv_heads, shape.prefix_len,
                                                     self.spec.head_dim), np.float32))
                                  for _ in range(self.spec.layers)))
        ids = np.full((rows, 1), self.plan.head[0], np.int32)
        slots = np.full((rows, 1), shape.suffix_len, np.int32)
        prefix_lens = ms.Tensor(np.full((rows,), shape.prefix_len, np.int32))
        sampling = [ms.Tensor(np.full((rows, 1), x, np.float32)) for x in (1e-6, 1.0, 0.0)]

        def ours():
            tokens, _, _, _ = step(ms.Tensor(ids), ms.Tensor(slots + shape.prefix_len), ms.Tensor(slots), own, own,
                                   prefix_lens, prefix, prefix, *sampling)
            tokens.asnumpy()

        # The reference's own generate loop, timed between consecutive calls of a logits
        # processor (one call per new token): each interval is one step with its KV cache.
        from transformers import LogitsProcessor, LogitsProcessorList

        class StepClock(LogitsProcessor):
            def __init__(self):
                self.times = []

            def __call__(self, input_ids, scores):
                self.times.append(time.perf_counter())
                return scores

        clock = StepClock()
        with torch.no_grad():
            self.reference.generate(**self.reference_inputs(E2E_BUCKET), max_new_tokens=NEW_TOKENS,
                                    min_new_tokens=NEW_TOKENS, do_sample=False,
                                    logits_processor=LogitsProcessorList([clock]))
        reference = statistics.median(np.diff(clock.times))
        return {"rows": rows, "cache_len": shape.cache_len, "ours": 1e3 * median_s(ours, 4 * REPEATS),
                "reference": 1e3 * reference}

    def end_to_end(self) -> dict:
        """One batch of CLIPS clips x tasks, greedy, from features to token ids."""
        import torch

        features, valid = self.features(E2E_BUCKET)
        keys = [f"clip{i}" for i in range(len(valid))]
        generated = {}

        def ours():
            stats = self.generator.generate(E2E_BUCKET, features, valid, keys).stats
            generated["ours"] = stats.generated_tokens
            generated["ours step ms"] = 1e3 * stats.steps_s / max(stats.decode_steps, 1)

        inputs = self.reference_inputs(E2E_BUCKET)
        prompt_len = inputs["input_ids"].shape[1]
        eos = set(self.plan.eos_ids)

        def reference():
            with torch.no_grad():
                out = self.reference.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False,
                                              eos_token_id=list(self.plan.eos_ids))
            rows = out[:, prompt_len:].tolist()
            generated["reference"] = sum(next((i for i, t in enumerate(r) if t in eos), len(r)) for r in rows)

        audio_s = sum(len(c) for c in self.clips[E2E_BUCKET]) / shapes.SAMPLE_RATE
        result = {"clips": len(valid), "rows": len(valid) * len(QUESTIONS), "audio_s": audio_s}
        for name, fn in (("ours", ours), ("reference", reference)):
            wall = median_s(fn, 3)
            result[name] = {"seconds": wall, "tokens": generated[name], "tokens_per_s": generated[name] / wall,
                            "audio_s_per_s": audio_s / wall}
        result["ours"]["step_ms_inside_generate"] = generated["ours step ms"]
        return result


def compile_probe(model_dir: str, cache_dir: str) -> None:
    """Run in a fresh process: compile and run every declared graph, in declared order (a fixed
    order is what makes MindSpore's compile cache valid), and print the timings as JSON."""
    start = time.perf_counter()
    from pipeline.model import runtime

    runtime.configure("cpu", Path(cache_dir) if cache_dir != "-" else None, THREADS, compile_order_fixed=True)
    bench = Bench(Path(model_dir))
    loaded = time.perf_counter()
    first, tokens = {}, {}
    for bucket_s in BUCKETS:
        features, valid = bench.features(bucket_s)

        def generate():
            tokens[bucket_s] = bench.generator.generate(bucket_s, features, valid, ["a", "b", "c", "d"]).tokens

        first_call = seconds(generate)
        steady = min(seconds(generate) for _ in range(2))  # min: the least disturbed by other work
        first[f"{bucket_s:g}s"] = {"first_call_s": first_call, "steady_call_s": steady, "compile_s": first_call - steady}
    print(json.dumps({"startup_s": loaded - start, "buckets": first, "graphs": bench.generator.graphs_compiled,
                      "compile_s": sum(b["compile_s"] for b in first.values()),
                      "tokens_digest": hashlib.sha256(json.dumps(tokens, sort_keys=True).encode()).hexdigest()[:16]}))


def measure_compile(model_dir: Path, work: Path) -> dict:
    cache = work / "compile-cache"
    out = {}
    for run, cache_arg in (("no cache", "-"), ("cold cache", str(cache)), ("warm cache", str(cache))):
        # The child must not inherit a cache someone enabled in the shell: each run is what it says.
        env = {k: v for k, v in os.environ.items() if not k.startswith("MS_COMPILER_CACHE")}
        proc = subprocess.run([sys.executable, "-m", "pipeline.bench.kernels", str(model_dir), cache_arg],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"compile probe ({run}) failed:\n{proc.stderr[-3000:]}")
        out[run] = json.loads(proc.stdout.strip().splitlines()[-1])
        out[run]["cache_hits"] = proc.stderr.count("Use the compilation cache")
    out["same_tokens"] = len({r["tokens_digest"] for r in out.values()}) == 1
    return out


def environment(spec) -> dict:
    import mindspore
    import torch
    import transformers

    return {"cpus": os.cpu_count(), "threads": THREADS, "platform": platform.platform(),
            "python": platform.python_version(), "mindspore": mindspore.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__, "spec": asdict(spec),
            "load_average_1_5_15min": os.getloadavg(),  # other work on the machine makes figures noisy
            "clips_per_batch": CLIPS, "tasks": len(QUESTIONS), "new_tokens": NEW_TOKENS, "repeats": REPEATS}


def ratio(reference: float, ours: float) -> str:
    return f"{reference / ours:5.1f}x the reference's speed"


def print_table(results: dict) -> None:
    env, enc, step, e2e, comp = (results[k] for k in ("environment", "encoder_ms_per_clip", "decode_step_ms",
                                                      "end_to_end", "compile"))
    spec = env["spec"]
    print(f"\nMindSpore {env['mindspore']} vs torch {env['torch']} / transformers {env['transformers']}: "
          f"{env['cpus']} CPUs, {env['threads']} threads each, load average {env['load_average_1_5_15min'][0]:.1f}")
    print(f"model: audio {spec['audio_dim']} wide x {spec['audio_layers']} layers, text {spec['hidden']} wide x "
          f"{spec['layers']} layers, vocab {spec['vocab']}; {CLIPS} clips x {len(QUESTIONS)} tasks per batch\n")
    print("encoder + projector, ms per clip (batches of 4)")
    reference = enc["reference 30s"]
    for name, ms_ in enc.items():
        print(f"  {name:<22}{ms_:9.1f}" + ("" if name.startswith("reference") else f"   {ratio(reference, ms_)}"))
    print(f"\none decode step for {step['rows']} rows, ms (a row spans {step['cache_len']} cache slots)")
    print(f"  {'ours (step graph)':<22}{step['ours']:9.1f}   {ratio(step['reference'], step['ours'])}")
    print(f"  {'ours (inside generate)':<22}{e2e['ours']['step_ms_inside_generate']:9.1f}")
    print(f"  {'reference (generate)':<22}{step['reference']:9.1f}")
    print(f"\nend to end: {e2e['clips']} clips ({e2e['audio_s']:.1f} s of audio) x {len(QUESTIONS)} tasks, greedy, "
          f"up to {NEW_TOKENS} tokens")
    for name in ("ours", "reference"):
        r = e2e[name]
        print(f"  {name:<22}{r['seconds']:7.2f} s {r['tokens']:5d} tokens {r['tokens_per_s']:7.1f} tokens/s "
              f"{r['audio_s_per_s']:6.1f} audio-s/s")
    print(f"\ncompile + first call, fresh process, buckets {', '.join(f'{b:g}' for b in BUCKETS)} s in order")
    print(f"  {'':<14}graphs  cache hits  compile s  first calls s  start-up s")
    for name in ("no cache", "cold cache", "warm cache"):
        r = comp[name]
        first_calls = sum(b["first_call_s"] for b in r["buckets"].values())
        print(f"  {name:<14}{r['graphs']:6d}  {r['cache_hits']:10d}  {r['compile_s']:9.1f}  {first_calls:13.1f}  "
              f"{r['startup_s']:10.1f}")
    print(f"  identical tokens in all three runs: {comp['same_tokens']}\n")


def write_json(results: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(results, indent=2, sort_keys=True) + "\n"
    for name in (f"{stamp}.json", "latest.json"):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out_dir / name)  # a reader never sees half a file
    return out_dir / f"{stamp}.json"


def run_benchmark(args) -> int:
    from pipeline.model import runtime

    with tempfile.TemporaryDirectory(prefix="qwen2-audio-bench-") as tmp:
        work = Path(tmp)
        model_dir = write_bench_checkpoint(work / "checkpoint")
        print("compile timings (three fresh processes) ...", flush=True)
        compile_figures = measure_compile(model_dir, work)
        runtime.configure("cpu", None, THREADS)
        bench = Bench(model_dir)
        print("encoder, end-to-end and decode-step timings ...", flush=True)
        results = {"timestamp": datetime.now(timezone.utc).isoformat(), "environment": environment(bench.spec),
                   "compile": compile_figures, "encoder_ms_per_clip": bench.encoder_ms_per_clip()}
        results["end_to_end"] = bench.end_to_end()  # before the decode step: it warms the reference up
        results["decode_step_ms"] = bench.decode_step_ms()
        print("peak memory per bucket (fresh processes) ...", flush=True)
        results["memory"] = measure_memory(model_dir)
    print_table(results)
    print_memory(results["memory"])
    print(f"saved {write_json(results, Path(args.out))} and latest.json")
    return 0


if __name__ == "__main__":  # the compile probe, started by measure_compile in a fresh process
    compile_probe(*sys.argv[1:3])
