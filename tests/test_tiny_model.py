"""Tiny checkpoints: the real Hugging Face layout, loadable offline, deterministic per seed."""

import hashlib

import pytest

from pipeline.model.prompts import has_chat_template
from pipeline.testing.tiny_model import LANGUAGE_TAGS, SPECIAL_TOKENS, write_tiny_checkpoint


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("flavour, size", [("instruct", "small"), ("base", "odd")])
def test_loads_offline_in_transformers(tmp_path, monkeypatch, flavour, size):
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = write_tiny_checkpoint(tmp_path / "ckpt", seed=5, flavour=flavour, size=size)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "processor_config.json", "generation_config.json"} <= {p.name for p in folder.iterdir()}
    processor = AutoProcessor.from_pretrained(folder)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(folder)
    tokenizer = processor.tokenizer
    for token in SPECIAL_TOKENS + LANGUAGE_TAGS:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == token
    assert model.config.audio_token_id == tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert processor.feature_extractor.feature_size == 128
    assert has_chat_template(folder) == (flavour == "instruct")
    if size == "odd":
        text = model.config.text_config
        assert text.num_attention_heads != text.num_key_value_heads  # grouped-query attention
    # It generates: processor and model agree on the audio token expansion.
    import numpy as np

    audio = np.zeros(16_000, dtype=np.float32)
    inputs = processor(text=["<|audio_bos|><|AUDIO|><|audio_eos|>Describe:"], audio=[audio], sampling_rate=16_000,
                       return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_same_seed_same_files_other_seed_other_weights(tmp_path):
    a = write_tiny_checkpoint(tmp_path / "a", seed=1)
    b = write_tiny_checkpoint(tmp_path / "b", seed=1)
    c = write_tiny_checkpoint(tmp_path / "c", seed=2)
    assert digests(a) == digests(b)
    assert digests(a)["model.safetensors"] != digests(c)["model.safetensors"]
    assert digests(a)["tokenizer.json"] == digests(c)["tokenizer.json"]
