"""Fixtures for model tests: tiny checkpoints made once per session, the transformers reference
loaded on the same weights, and helpers to run both on the same clips."""

from pathlib import Path

import numpy as np
import pytest

from pipeline import shapes


@pytest.fixture(scope="session")
def mindspore_cpu():
    from pipeline.model import runtime

    runtime.configure("cpu", None, cpu_threads=0)


class Reference:
    """transformers' PyTorch Qwen2-Audio on one clip, unpadded, as a user of the reference would run it."""

    def __init__(self, model_dir: Path):
        import torch
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        torch.manual_seed(0)
        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.model = Qwen2AudioForConditionalGeneration.from_pretrained(model_dir).eval()

    def generate(self, text: str, audio: np.ndarray, max_new_tokens: int, eos_ids) -> tuple[list[int], np.ndarray]:
        """Greedy -> (tokens without the end id, the first step's raw logits); self.last_logprobs:
        each chosen id's raw log-probability, the end id's included."""
        import torch

        inputs = self.processor(text=[text], audio=[audio], sampling_rate=shapes.SAMPLE_RATE, return_tensors="pt")
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=list(eos_ids),
                                      output_logits=True, return_dict_in_generate=True)
        tokens = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
        self.last_logprobs = [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(out.logits, tokens)]
        if tokens and tokens[-1] in eos_ids:
            tokens = tokens[:-1]
        return tokens, out.logits[0][0].numpy()

    def generate_as_configured(self, text: str, audio: np.ndarray, max_new_tokens: int, **overrides):
        """generate() as a user calls it: the checkpoint's generation_config.json decides the
        decoding (overrides: generate's own arguments). -> (tokens without the end id, whether an
        end id ended them, each chosen id's log-probability under the raw logits)."""
        import torch

        inputs = self.processor(text=[text], audio=[audio], sampling_rate=shapes.SAMPLE_RATE, return_tensors="pt")
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, output_logits=True,
                                      return_dict_in_generate=True, **overrides)
        tokens = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
        logprobs = [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(out.logits, tokens)]
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        ended = bool(tokens) and tokens[-1] in eos
        return (tokens[:-1] if ended else tokens), ended, logprobs

    def audio_features(self, audio: np.ndarray) -> np.ndarray:
        """Projected audio features of the valid tokens, from the 30 s reference encoder."""
        import torch
        from transformers.masking_utils import create_bidirectional_mask

        inputs = self.processor.feature_extractor(audio, sampling_rate=shapes.SAMPLE_RATE, return_attention_mask=True,
                                                  padding="max_length", return_tensors="pt")
        model = self.model.model
        lengths, tokens = model.audio_tower._get_feat_extract_output_lengths(inputs["attention_mask"].sum(-1))
        positions = (inputs["input_features"].shape[-1] - 2) // 2 + 1
        valid = (torch.arange(positions)[None, :] < lengths[:, None]).long()
        mask = create_bidirectional_mask(config=model.audio_tower.config, inputs_embeds=torch.zeros(1, positions, 1),
                                         attention_mask=valid)
        with torch.no_grad():
            hidden = model.audio_tower(inputs["input_features"], attention_mask=mask).last_hidden_state
            return model.multi_modal_projector(hidden)[0, : int(tokens[0])].numpy()


@pytest.fixture(scope="session")
def reference():
    made = {}

    def get(model_dir: Path) -> Reference:
        if model_dir not in made:
            made[model_dir] = Reference(model_dir)
        return made[model_dir]

    return get


def noise_clip(seconds: float, seed: int) -> np.ndarray:
    """Band-limited noise with a tone: a deterministic clip whose features vary over time."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * shapes.SAMPLE_RATE))
    t = np.arange(n) / shapes.SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * (220 + 40 * seed) * t) * (1 + np.sin(2 * np.pi * 0.5 * t))
    return (tone + 0.05 * rng.standard_normal(n)).astype(np.float32)
