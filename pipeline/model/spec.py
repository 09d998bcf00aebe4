"""The dimensions of a Qwen2-Audio checkpoint, read from its config.json.

Pure data (no MindSpore): the planner's memory estimate and the run fingerprint use it too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path


# transformers 5's defaults (Qwen2AudioEncoderConfig, Qwen2Config, Qwen2AudioConfig) for what a
# config.json leaves out; the published 7B configs leave most of the text decoder's dims out.
AUDIO_DEFAULTS = {"num_mel_bins": 128, "d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20,
                  "encoder_ffn_dim": 5120, "max_source_positions": 1500}
TEXT_DEFAULTS = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                 "head_dim": None, "intermediate_size": 22016, "vocab_size": 151936, "rms_norm_eps": 1e-6,
                 "max_position_embeddings": 32768, "tie_word_embeddings": False, "use_sliding_window": False}
DEFAULT_ROPE_THETA = 10000.0
DEFAULT_AUDIO_TOKEN_INDEX = 151646


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
        """From transformers' Qwen2AudioConfig (the tests hold from_config_json to it)."""
        audio, text = config.audio_config, config.text_config
        rope = getattr(text, "rope_parameters", None) or {}
        return cls._checked(rope, getattr(text, "use_sliding_window", False))(
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
    def from_config_json(cls, data: dict) -> ModelSpec:
        """A checkpoint's config.json as transformers reads it (from_hf_config of its
        Qwen2AudioConfig; tested equal), without importing transformers: any import of it imports
        torch where torch is installed, 2.5 s of CPU in every process that reads a config."""
        audio = {**AUDIO_DEFAULTS, **(data.get("audio_config") or {})}
        text = {**TEXT_DEFAULTS, **(data.get("text_config") or {})}
        # transformers 5 folds the legacy rope_scaling and rope_theta into rope_parameters.
        rope = text.get("rope_parameters") or {**(text.get("rope_scaling") or {})}
        rope = {"rope_theta": text.get("rope_theta") or DEFAULT_ROPE_THETA, **rope}
        rope.setdefault("rope_type", rope.get("type", "default"))
        kv_heads = text["num_key_value_heads"]
        token = data.get("audio_token_index", data.get("audio_token_id", DEFAULT_AUDIO_TOKEN_INDEX))
        return cls._checked(rope, text["use_sliding_window"])(
            n_mels=audio["num_mel_bins"],
            audio_dim=audio["d_model"],
            audio_layers=audio["encoder_layers"],
            audio_heads=audio["encoder_attention_heads"],
            audio_ffn=audio["encoder_ffn_dim"],
            max_source_positions=audio["max_source_positions"],
            hidden=text["hidden_size"],
            layers=text["num_hidden_layers"],
            heads=text["num_attention_heads"],
            kv_heads=kv_heads if kv_heads is not None else text["num_attention_heads"],
            head_dim=text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"],
            intermediate=text["intermediate_size"],
            vocab=text["vocab_size"],
            rms_eps=float(text["rms_norm_eps"]),
            rope_theta=float(rope["rope_theta"]),
            max_positions=text["max_position_embeddings"],
            tie_embeddings=bool(text["tie_word_embeddings"]),
            audio_token_id=token,
        )

    @classmethod
    def _checked(cls, rope: dict, sliding_window: bool):
        rope_type = rope.get("rope_type", "default")
        if rope_type != "default":
            raise ValueError(f"unsupported RoPE type {rope_type!r}: Qwen2-Audio uses the default rotary embedding")
        if sliding_window:
            raise ValueError("sliding-window attention is not supported (Qwen2-Audio does not use it)")
        return cls

    @classmethod
    def from_checkpoint(cls, model_dir: str | Path) -> ModelSpec:
        return cls.from_config_json(json.loads((Path(model_dir) / "config.json").read_text()))

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]
