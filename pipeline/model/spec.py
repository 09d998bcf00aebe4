"""The dimensions of a Qwen2-Audio checkpoint, read from its config.json.

Pure data (no MindSpore): the planner's memory estimate and the run fingerprint use it too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelSpec:
    # Audio encoder (Whisper-style).
    n_mels: int
    audio_dim: int
    audio_layers: int
    audio_heads: int
    audio_ffn: int
    max_source_positions: int
    # Text decoder (Qwen2).
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    rms_eps: float
    rope_theta: float
    max_positions: int
    tie_embeddings: bool
    audio_token_id: int

    @classmethod
    def from_hf_config(cls, config) -> ModelSpec:
        audio, text = config.audio_config, config.text_config
        rope = getattr(text, "rope_parameters", None) or {}
        rope_type = rope.get("rope_type", "default")
        if rope_type != "default":
            raise ValueError(f"unsupported RoPE type {rope_type!r}: Qwen2-Audio uses the default rotary embedding")
        if getattr(text, "use_sliding_window", False):
            raise ValueError("sliding-window attention is not supported (Qwen2-Audio does not use it)")
        return cls(
            n_mels=audio.num_mel_bins,
            audio_dim=audio.d_model,
            audio_layers=audio.encoder_layers,
            audio_heads=audio.encoder_attention_heads,
            audio_ffn=audio.encoder_ffn_dim,
            max_source_positions=audio.max_source_positions,
            hidden=text.hidden_size,
            layers=text.num_hidden_layers,
            heads=text.num_attention_heads,
            kv_heads=text.num_key_value_heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
            intermediate=text.intermediate_size,
            vocab=text.vocab_size,
            rms_eps=float(text.rms_norm_eps),
            rope_theta=float(rope.get("rope_theta", getattr(text, "rope_theta", 10000.0))),
            max_positions=text.max_position_embeddings,
            tie_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
            audio_token_id=config.audio_token_index,
        )

    @classmethod
    def from_checkpoint(cls, model_dir: str | Path) -> ModelSpec:
        from transformers import AutoConfig

        return cls.from_hf_config(AutoConfig.from_pretrained(str(model_dir)))

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]
