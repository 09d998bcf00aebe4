"""Decoding values: the checkpoint's generation_config.json, under job keys, under options; where
each came from; and the checks (no MindSpore)."""

import pytest

from pipeline.config import Config, ConfigError
from pipeline.model.decoding import (Decoding, DecodingError, GraphFeatures, end_of_sequence, pad_token, resolve,
                                     retry_decoding)

# What Qwen2-Audio-7B-Instruct's generation_config.json publishes.
QWEN = {"do_sample": True, "top_k": 20, "top_p": 0.5, "temperature": 0.7, "repetition_penalty": 1.1,
        "eos_token_id": [151643, 151645], "pad_token_id": 151643}


def test_the_checkpoint_decides_when_nothing_else_does():
    resolved = resolve(QWEN, job={}, options={})
    assert resolved.decoding == Decoding(do_sample=True, temperature=0.7, top_k=20, top_p=0.5,
                                         repetition_penalty=1.1, seed=0)
    assert resolved.sources == {"do_sample": "checkpoint", "temperature": "checkpoint", "top_k": "checkpoint",
                                "top_p": "checkpoint", "repetition_penalty": "checkpoint", "seed": "default"}


def test_transformers_defaults_fill_what_the_checkpoint_leaves_out():
    resolved = resolve({"do_sample": True}, job={}, options={})
    assert resolved.decoding == Decoding(do_sample=True, temperature=1.0, top_k=50, top_p=1.0)
    assert resolved.sources["top_k"] == "default" and resolved.sources["do_sample"] == "checkpoint"
    assert resolve({}, job={}, options={}).decoding.greedy  # no file: greedy, as transformers


def test_options_override_the_job_which_overrides_the_checkpoint():
    resolved = resolve(QWEN, job={"top_p": 0.8, "temperature": 0.9, "seed": 3}, options={"temperature": 0.5})
    decoding, sources = resolved.decoding, resolved.sources
    assert (decoding.temperature, sources["temperature"]) == (0.5, "option")
    assert (decoding.top_p, sources["top_p"]) == (0.8, "job")
    assert (decoding.top_k, sources["top_k"]) == (20, "checkpoint")
    assert (decoding.seed, sources["seed"]) == (3, "job")
    assert resolved.describe() == ("sampling (checkpoint): temperature 0.5 (option), top_k 20 (checkpoint), "
                                   "top_p 0.8 (job), repetition_penalty 1.1 (checkpoint), seed 3 (job)")
    greedy = resolve(QWEN, job={"do_sample": True}, options={"do_sample": False})
    assert greedy.decoding.greedy and greedy.describe() == "greedy (option), repetition_penalty 1.1 (checkpoint)"
    # Greedy ignores the sampling values: only the penalty is part of the run's settings.
    assert greedy.settings() == {"do_sample": False, "repetition_penalty": 1.1}


def test_a_temperature_of_zero_still_means_greedy():
    resolved = resolve(QWEN, job={"temperature": 0.0}, options={})
    assert resolved.decoding.greedy and resolved.sources["do_sample"] == "job"
    assert not resolve(QWEN, job={"temperature": 0.0}, options={"temperature": 0.6}).decoding.greedy
    with pytest.raises(DecodingError, match="temperature 0.0 .from the job. must be above 0 when sampling"):
        resolve(QWEN, job={"temperature": 0.0, "do_sample": True}, options={})


@pytest.mark.parametrize("checkpoint, message", [
    ({"do_sample": True, "temperature": 0.0}, "temperature 0.0 .from the checkpoint."),
    ({"top_p": 0}, "top_p 0"),
    ({"top_k": -1}, "top_k -1"),
    ({"repetition_penalty": 0}, "repetition_penalty 0"),
    ({"do_sample": "yes"}, "do_sample"),
])
def test_unusable_values_name_their_source(checkpoint, message):
    with pytest.raises(DecodingError, match=message):
        resolve(checkpoint, job={}, options={})


def test_end_of_sequence_and_padding_ids():
    assert end_of_sequence({"eos_token_id": 7}, (1, 2)) == ((7,), "checkpoint")
    assert end_of_sequence({"eos_token_id": [7, 9, 7]}, (1,)) == ((7, 9), "checkpoint")
    assert end_of_sequence({}, (1, 2)) == ((1, 2), "tokenizer")
    assert pad_token({"pad_token_id": 4}, (7,)) == 4 and pad_token({}, (7, 9)) == 7


def test_config_keys_and_options_keep_their_origin():
    config = Config(top_k=5, seed=2).with_overrides(temperature=0.3, do_sample=True)
    assert config.decoding_keys("job") == {"top_k": 5, "seed": 2}
    assert config.decoding_keys("option") == {"temperature": 0.3, "do_sample": True}
    assert config.with_overrides(top_k=7).decoding_keys("option") == {"temperature": 0.3, "do_sample": True, "top_k": 7}
    with pytest.raises(ConfigError, match="a temperature of 0 means greedy"):
        Config().with_overrides(do_sample=True, temperature=0.0)
    with pytest.raises(ConfigError, match="top_k"):
        Config().with_overrides(top_k=-2)


def test_graphs_compile_only_what_the_decodings_need():
    assert GraphFeatures.needed(Decoding(), None) == GraphFeatures(False, False)
    penalised = GraphFeatures.needed(Decoding(), Decoding(repetition_penalty=1.2))
    assert penalised == GraphFeatures(True, False) and not penalised.allows(Decoding(do_sample=True))
    retry, changes = retry_decoding(Decoding(), {"repetition_penalty": 1.2})
    assert retry == Decoding(repetition_penalty=1.2) and changes == {"repetition_penalty": 1.2}
    with pytest.raises(DecodingError, match="would repeat the loop"):
        retry_decoding(Decoding(repetition_penalty=1.2), {"repetition_penalty": 1.2})
