"""Random checkpoints for benchmarks, in the real Hugging Face layout.

"proportions" keeps Qwen2-Audio-7B's shape at 1/10 to 1/20 of its widths so that a 2-core machine
runs a realistic workload in minutes: the audio encoder is a Whisper-style stack 10x smaller than
the text decoder in parameters (7B: 0.64B vs 6.5B), the decoder uses grouped-query attention with
64-wide heads, the MLP is ~2.7x the width, and the vocabulary is large enough that the output head
is a real share of a decode step. "tiny" is the test checkpoint, for a quick run in CI.
"""

from __future__ import annotations

from pathlib import Path

DIMS = {
    "proportions": dict(
        audio=dict(d_model=192, encoder_layers=3, encoder_attention_heads=3, encoder_ffn_dim=768),
        text=dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2,
                  intermediate_size=1024),
        vocab=8192,
    ),
    "tiny": dict(
        audio=dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128),
        text=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128),
        vocab=512,
    ),
}


def write_bench_checkpoint(out_dir: Path, dims: str = "proportions", flavour: str = "base", seed: int = 0) -> Path:
    """The tiny checkpoint's tokenizer with the given dimensions; -> out_dir."""
    import torch
    from transformers import GenerationConfig, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    from pipeline.testing.tiny_model import build_config, build_processor, strip_chat_template

    spec = DIMS[dims]
    processor = build_processor(flavour)
    base, eos_ids = build_config(processor, "small", flavour)
    text = {**base.text_config.to_dict(), **spec["text"], "vocab_size": spec["vocab"]}
    for derived in ("layer_types", "max_window_layers"):  # recomputed for the new layer count
        text.pop(derived, None)
    audio = {**base.audio_config.to_dict(), **spec["audio"]}
    config = Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_index=base.audio_token_index)
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos_ids, pad_token_id=eos_ids[0], do_sample=False)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    if flavour == "base":
        strip_chat_template(out_dir)
    return out_dir


def parameter_count(model_dir: Path) -> dict[str, int]:
    """Parameters of the audio encoder (with projector) and of the text decoder, from the weights."""
    from pipeline.model.weights import checkpoint_files, read_safetensors

    counts = {"audio": 0, "text": 0}
    for path in checkpoint_files(Path(model_dir)):
        for name, shape, _ in read_safetensors(path):
            size = 1
            for dim in shape:
                size *= dim
            counts["audio" if "audio_tower" in name or "multi_modal_projector" in name else "text"] += size
    return counts
