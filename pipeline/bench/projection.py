"""What the measured plan would cost for Qwen2-Audio-7B on one Ascend 910B: FLOPs and bytes moved
per declared graph call, and the throughput bound they imply (a roofline: each call takes at least
its FLOPs at peak compute and at least its bytes at peak bandwidth). A bound, not a prediction:
real kernels reach a fraction of either peak. Set beside the same bound for the 30 s padding that
transformers, mindone and vLLM use, it says how much of the CPU speed-up is the plan's own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pipeline.model.graph_shapes import EngineShape

# Qwen2-Audio-7B (config.json of Qwen/Qwen2-Audio-7B-Instruct).
AUDIO = dict(n_mels=128, dim=1280, layers=32, ffn=5120)
TEXT = dict(hidden=4096, layers=32, kv_width=4096, intermediate=11008, vocab=156032)
BYTES = 2  # bf16
# Ascend 910B (910B3): dense bf16 peak and HBM bandwidth, from Huawei's published figures.
PEAK_FLOPS = 313e12
PEAK_BYTES_PER_S = 1.6e12

WINDOW_FRAMES = 3000
AUDIO_TOKENS = 750


def encoder_params() -> int:
    a = AUDIO
    convs = a["n_mels"] * a["dim"] * 3 + a["dim"] * a["dim"] * 3
    layers = a["layers"] * (4 * a["dim"] ** 2 + 2 * a["dim"] * a["ffn"])
    return convs + layers + a["dim"] * TEXT["hidden"]


def decoder_layer_params() -> int:
    t = TEXT
    return t["layers"] * (2 * t["hidden"] ** 2 + 2 * t["hidden"] * t["kv_width"] + 3 * t["hidden"] * t["intermediate"])


def head_params() -> int:
    return TEXT["hidden"] * TEXT["vocab"]


def kv_bytes_per_token() -> int:
    return 2 * TEXT["layers"] * TEXT["kv_width"] * BYTES


@dataclass(frozen=True)
class Call:
    flops: float
    bytes: float

    @property
    def seconds(self) -> float:
        return max(self.flops / PEAK_FLOPS, self.bytes / PEAK_BYTES_PER_S)


def encode_call(frames: int = WINDOW_FRAMES) -> Call:
    """One encoder row (or one clip padded to it): convolutions, layers with full attention, projector."""
    a, positions = AUDIO, frames // 2
    flops = 2 * frames * a["n_mels"] * a["dim"] * 3 + 2 * positions * a["dim"] ** 2 * 3
    flops += a["layers"] * (2 * positions * (4 * a["dim"] ** 2 + 2 * a["dim"] * a["ffn"]) + 4 * positions ** 2 * a["dim"])
    flops += 2 * (positions // 2) * a["dim"] * TEXT["hidden"]
    activations = a["layers"] * positions * (a["dim"] * 8 + a["ffn"] * 2) * BYTES
    return Call(flops, encoder_params() * BYTES + activations)


def prefill_call(tokens: int, outputs: int) -> Call:
    """tokens prompt positions with full causal attention, logits for `outputs` of them."""
    t = TEXT
    flops = 2 * tokens * decoder_layer_params() + 4 * tokens ** 2 * t["hidden"] * t["layers"] + 2 * outputs * head_params()
    moved = (decoder_layer_params() + head_params()) * BYTES + tokens * kv_bytes_per_token()
    return Call(flops, moved)


def step_call(rows: int, span: float) -> Call:
    """One decode step for rows rows attending over span positions each (on average)."""
    t = TEXT
    flops = 2 * rows * (decoder_layer_params() + head_params()) + 4 * rows * span * t["hidden"] * t["layers"]
    moved = (decoder_layer_params() + head_params()) * BYTES + rows * span * kv_bytes_per_token()
    return Call(flops, moved)


def insert_call(rows: int, span: int) -> Call:
    return Call(0.0, 2 * rows * span * kv_bytes_per_token())  # read from staging, write to the slot


def project(audio_s: float, shape: dict, counts: dict, reference: dict, prompt_len: int) -> dict:
    """shape: the engine shape the pipeline ran (asdict); counts: its generation totals; reference:
    the reference run's counts (generate calls, rows, steps); prompt_len: the reference's padded
    prompt length (30 s of audio tokens plus the prompt)."""
    positions_read = EngineShape.from_record(shape).step_cache_positions  # long and short slots alike
    ours = {
        "encode": (counts["encoder_rows"], encode_call(shape["row_frames"])),
        "prefill": (counts["prefill_rows"], prefill_call(shape["prefill_len"], shape["first_tokens"])),
        "insert": (counts["insert_calls"], insert_call(shape["insert_rows"], shape["span"])),
        "step": (counts["decode_steps"], step_call(shape["slots"], positions_read / shape["slots"])),
    }
    rows, calls = reference["rows"], reference["generate_calls"]
    per_row_batch = rows / max(calls, 1)
    padded = {
        "encode": (rows, encode_call()),
        "prefill": (calls, prefill_call(round(per_row_batch * prompt_len), round(per_row_batch))),
        "step": (reference["decode_steps"], step_call(round(per_row_batch), prompt_len + reference["mean_budget"])),
    }

    def summary(plan: dict) -> dict:
        total = sum(n * call.seconds for n, call in plan.values())
        return {
            "per_call": {name: {**asdict(call), "seconds_bound": call.seconds, "calls": n} for name, (n, call) in plan.items()},
            "seconds_bound": total,
            "audio_s_per_s_bound": audio_s / total if total else None,
        }

    return {
        "assumptions": {"model": "Qwen2-Audio-7B, bf16", "device": "Ascend 910B", "peak_tflops": PEAK_FLOPS / 1e12,
                        "peak_hbm_tb_per_s": PEAK_BYTES_PER_S / 1e12,
                        "note": "roofline bound per call: max(FLOPs / peak, bytes / bandwidth); call counts from this run"},
        "this_plan": summary(ours),
        "padded_30s": summary(padded),
    }
