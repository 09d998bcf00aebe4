"""Tiny randomly initialised Qwen2-Audio checkpoints, in the exact Hugging Face layout.

Tests cannot download the real 7B weights, so they run against checkpoints made here: a small
byte-level BPE tokenizer with Qwen2-Audio's real special tokens, a Whisper feature extractor with
128 mel bins, and a random `Qwen2AudioForConditionalGeneration` saved with `save_pretrained`. The
project's real loading code (config.json, model.safetensors, tokenizer and processor files) is what
gets exercised. The same seed always gives the same files.

This module imports torch (the reference implementation), so it belongs to the test extra.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")
LANGUAGE_TAGS = tuple(f"<|{code}|>" for code in ("en", "zh", "de", "es", "fr", "it", "ja", "ko", "ru", "pt"))

# Two shapes of model: "small" has even sizes and plain multi-head attention like the real 7B;
# "odd" has grouped-query attention (6 query heads over 2 key/value heads) and odd widths, to catch
# reshapes that only work when sizes happen to line up.
SIZES = {
    "small": dict(
        audio=dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128),
        text=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                  intermediate_size=128),
        vocab_padding=0,
    ),
    "odd": dict(
        audio=dict(d_model=48, encoder_layers=3, encoder_attention_heads=3, encoder_ffn_dim=100),
        text=dict(hidden_size=72, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                  intermediate_size=136),
        vocab_padding=3,
    ),
}

# Larger than the usual 0.02 so that the random model's next-token distribution is peaked: greedy
# comparisons against the reference then test the implementation, not floating-point tie-breaks.
INITIALIZER_RANGE = 0.08

_CORPUS = """\
Generate the caption in English: A man speaks while music plays in the background.
Detect the language and recognize the speech: the quick brown fox jumps over the lazy dog.
List the sound events in this audio as short lowercase tags, separated by commas.
speech, music, dog barking, rain, applause, laughter, engine, birds chirping, siren, silence.
Describe this audio in one sentence. Does this audio contain any of the following labels?
hate speech, harassment, violence, sexual content, self-harm, profanity, none.
You are a helpful assistant. Audio 1: What is the language of the speech? Transcribe it exactly.
A woman is talking on a podcast about science, history and the weather of the coming week.
Answer only with the labels that apply, separated by commas, or none.
"""


def _train_tokenizer(vocab_size: int):
    """A byte-level BPE trained on a fixed corpus; deterministic, so the seed alone fixes the files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines() * 4, trainer)
    # Special tokens come after the learned vocabulary, as in the real Qwen2 tokenizer.
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS + LANGUAGE_TAGS))
    return tokenizer


def build_processor(flavour: str):
    from transformers import Qwen2AudioProcessor, Qwen2TokenizerFast, WhisperFeatureExtractor

    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=_train_tokenizer(vocab_size=400),
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=list(SPECIAL_TOKENS[1:] + LANGUAGE_TAGS),
        clean_up_tokenization_spaces=False,
        padding_side="left",  # batched generation in the reference needs left padding; saved with it
    )
    extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16_000, return_attention_mask=True)
    processor = Qwen2AudioProcessor(feature_extractor=extractor, tokenizer=tokenizer)
    return processor


def build_config(processor, size: str, flavour: str):
    from transformers import Qwen2AudioConfig

    spec = SIZES[size]
    tokenizer = processor.tokenizer
    vocab_size = len(tokenizer) + spec["vocab_padding"]
    eos_ids = [tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    if flavour == "instruct":
        eos_ids.append(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    text = dict(
        model_type="qwen2",
        vocab_size=vocab_size,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        initializer_range=INITIALIZER_RANGE,
        bos_token_id=None,
        eos_token_id=eos_ids[0],
        pad_token_id=eos_ids[0],
        **spec["text"],
    )
    audio = dict(model_type="qwen2_audio_encoder", num_mel_bins=128, max_source_positions=1500,
                 initializer_range=INITIALIZER_RANGE, **spec["audio"])
    config = Qwen2AudioConfig(
        audio_config=audio,
        text_config=text,
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    config.initializer_range = INITIALIZER_RANGE
    return config, eos_ids


def write_tiny_checkpoint(out_dir: str | os.PathLike, seed: int = 0, flavour: str = "instruct",
                          size: str = "small", generation: dict | None = None) -> Path:
    """Write a random Qwen2-Audio checkpoint to out_dir and return its path. generation: values for
    its generation_config.json besides the end-of-sequence and padding ids and do_sample false
    (e.g. {"repetition_penalty": 1.3}, or {"do_sample": True, "top_k": 20})."""
    import torch
    from transformers import GenerationConfig, Qwen2AudioForConditionalGeneration

    if flavour not in ("base", "instruct"):
        raise ValueError(f"flavour must be base or instruct, got {flavour!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor = build_processor(flavour)
    config, eos_ids = build_config(processor, size, flavour)

    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    # The encoder's positional table is a learned parameter in the checkpoint; give it visible
    # structure so a wrong offset in a bucketed encoder changes the output.
    with torch.no_grad():
        table = model.model.audio_tower.embed_positions.weight
        table.normal_(0.0, 0.5)
    model.generation_config = GenerationConfig(**{
        "eos_token_id": eos_ids, "pad_token_id": eos_ids[0], "do_sample": False, "bos_token_id": None,
        **(generation or {}),
    })
    model.save_pretrained(out)
    processor.save_pretrained(out)
    if flavour == "base":
        strip_chat_template(out)
    return out


def strip_chat_template(folder: Path) -> None:
    """The base checkpoint ships no chat template; that absence is how its prompt style is told."""
    for name in ("chat_template.jinja", "chat_template.json"):
        (folder / name).unlink(missing_ok=True)
    tokenizer_config = folder / "tokenizer_config.json"
    data = json.loads(tokenizer_config.read_text())
    if data.pop("chat_template", None) is not None:
        tokenizer_config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
