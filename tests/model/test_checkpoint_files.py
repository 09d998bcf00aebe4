"""The checkpoint's config and tokenizer read from its files, without transformers (the driver's
start must not import it: it imports torch), held equal to what transformers reads."""

import copy
import json
import subprocess
import sys

import pytest
from transformers import AutoConfig, AutoProcessor, AutoTokenizer, Qwen2AudioConfig

from pipeline.model.prompts import build_prompt_plan, eos_token_ids, resolve_style, tokenizer_eos_ids
from pipeline.model.spec import ModelSpec
from pipeline.model.tokenizer_files import CheckpointTokenizer

from .test_prompts import QUESTIONS

# A config.json as sparse as the published 7B ones: most of the text decoder's dims are
# transformers' defaults, and the legacy RoPE keys.
SPARSE_7B_LIKE = {
    "architectures": ["Qwen2AudioForConditionalGeneration"],
    "audio_config": {"model_type": "qwen2_audio_encoder"},
    "audio_token_index": 151646,
    "model_type": "qwen2_audio",
    "text_config": {"bos_token_id": 151643, "eos_token_id": 151645, "intermediate_size": 11008,
                    "max_position_embeddings": 8192, "model_type": "qwen2", "rms_norm_eps": 1e-05,
                    "rope_scaling": None, "rope_theta": 10000, "use_mrope": False, "vocab_size": 156032},
    "vocab_size": 156032,
}

CONFIGS = [
    {},
    SPARSE_7B_LIKE,
    {"tie_word_embeddings": True},  # top level: not the text decoder's
    {"text_config": {"tie_word_embeddings": True}},
    {"text_config": {"num_attention_heads": 8}},  # key/value heads keep their own default
    {"text_config": {"num_key_value_heads": None, "num_attention_heads": 8}},  # null: as many as the queries
    {"text_config": {"hidden_size": 512, "num_attention_heads": 8, "head_dim": 96}},
    {"text_config": {"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}},
    {"text_config": {"rope_parameters": {"rope_type": "default"}, "rope_theta": 3.0}},
    {"text_config": {"rope_scaling": {"type": "default"}, "rope_theta": 1e6}},
    {"audio_token_id": 7},
    {"audio_config": {"d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 4, "num_mel_bins": 80}},
]


@pytest.mark.parametrize("config", CONFIGS)
def test_config_json_reads_as_transformers_reads_it(config):
    expected = ModelSpec.from_hf_config(Qwen2AudioConfig(**copy.deepcopy(config)))
    assert ModelSpec.from_config_json(copy.deepcopy(config)) == expected


@pytest.mark.parametrize("text", [{"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
                                  {"rope_parameters": {"rope_type": "linear", "factor": 2.0}},
                                  {"use_sliding_window": True}])
def test_unsupported_text_decoders_are_refused_alike(text):
    with pytest.raises(ValueError, match="unsupported RoPE|sliding-window"):
        ModelSpec.from_config_json({"text_config": copy.deepcopy(text)})
    with pytest.raises(ValueError, match="unsupported RoPE|sliding-window"):
        ModelSpec.from_hf_config(Qwen2AudioConfig(text_config=copy.deepcopy(text)))


@pytest.mark.parametrize("name", ["small-instruct", "odd-base"])
def test_checkpoint_spec_and_prompt_plan_equal_transformers(checkpoint_dir, name):
    model_dir = checkpoint_dir(name)
    assert ModelSpec.from_checkpoint(model_dir) == ModelSpec.from_hf_config(AutoConfig.from_pretrained(model_dir))
    style = resolve_style("auto", model_dir)
    ours = CheckpointTokenizer.load(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    renderer = tokenizer if style == "base" or tokenizer.chat_template else AutoProcessor.from_pretrained(model_dir)
    assert (ours.chat_template is not None) == (style == "instruct")
    assert tokenizer_eos_ids(ours, style) == tokenizer_eos_ids(tokenizer, style)
    eos = eos_token_ids(model_dir, tokenizer, style)
    assert build_prompt_plan(ours, style, QUESTIONS, eos) == build_prompt_plan(renderer, style, QUESTIONS, eos)
    for text in QUESTIONS + ["<|audio_bos|><|AUDIO|><|AUDIO|><|audio_eos|> x", "<|im_start|>user\n<|en|>"]:
        assert ours(text)["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_a_template_in_tokenizer_config_wins(checkpoint_dir, tmp_path):
    """Where tokenizer_config.json holds a chat template, that one renders (as transformers does)."""
    model_dir = checkpoint_dir("small-instruct")
    for name in ("tokenizer.json", "config.json"):
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}[{{ m['role'] }}|{{ eos_token }}]{% endfor %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "chat_template.jinja").write_text("ignored")
    conversation = [{"role": "user", "content": "hi"}]
    assert CheckpointTokenizer.load(tmp_path).apply_chat_template(conversation) == "[user|<|endoftext|>]"


@pytest.mark.parametrize("name", ["small-instruct", "odd-base"])
def test_planning_a_run_imports_no_torch(checkpoint_dir, name):
    """The driver's plan (checkpoint dims, prompts, decoding) in a fresh process: torch is never
    imported (it was, through transformers: seconds of every run's start), transformers only to
    render a chat template."""
    code = ("import sys; from pipeline.config import Config; from pipeline.tasks.catalog import resolve_tasks; "
            "from pipeline.model.model_plan import load_prompts; "
            f"config = Config(tasks=('caption', 'transcript'), model={str(checkpoint_dir(name))!r}); "
            "load_prompts(config, resolve_tasks(config)); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[-2] == ("['transformers']" if name == "small-instruct" else "[]")
