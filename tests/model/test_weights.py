"""Loading checkpoints: every layout the published Qwen2-Audio checkpoints and transformers 5 write,
every dtype they ship in, and a clear error naming the tensor whenever a checkpoint does not fit.

Variants are written from one tiny checkpoint with safetensors.torch; loading them needs no graph
compiles, so these tests are fast.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import mindspore as ms

from pipeline.errors import UserError
from pipeline.model.checkpoint import resolve_checkpoint
from pipeline.model.graphs import Qwen2Audio
from pipeline.model.spec import ModelSpec
from pipeline.model.weights import WeightError, canonical_name, load_weights

LM_HEAD = "language_model.lm_head.weight"
EMBED = "language_model.model.embed_tokens.weight"


@pytest.fixture(scope="module")
def source(checkpoint_dir, mindspore_cpu):
    """(checkpoint folder, spec, its tensors as torch, the fp32 parameters it loads into)."""
    model_dir = checkpoint_dir("small-instruct")
    spec = ModelSpec.from_checkpoint(model_dir)
    tensors = load_file(str(model_dir / "model.safetensors"))
    return model_dir, spec, tensors, load_params(model_dir, spec)


def load_params(model_dir, spec, dtype=ms.float32, tie=None) -> dict[str, np.ndarray]:
    """The loaded parameters in the checkpoint's layout (a weight kept transposed is turned back)."""
    model = Qwen2Audio(spec, dtype)
    load_weights(model, model_dir, spec.tie_embeddings if tie is None else tie)
    return {name: p.asnumpy().T if getattr(p, "stored_transposed", False) else p.asnumpy()
            for name, p in model.parameters_and_names()}


def write_variant(tmp_path, tensors: dict, name="variant"):
    folder = tmp_path / name
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    return folder


def assert_same_params(got: dict, expected: dict):
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


# --- a checkpoint that does not fit fails by name --------------------------------------------------

def test_missing_tensor_is_named(source, tmp_path):
    model_dir, spec, tensors, _ = source
    gone = "language_model.model.layers.1.mlp.up_proj.weight"
    folder = write_variant(tmp_path, {k: v for k, v in tensors.items() if k != gone})
    with pytest.raises(WeightError, match=rf"missing tensor\(s\): {gone}$"):
        load_params(folder, spec)


def test_misshaped_tensor_is_named_with_both_shapes(source, tmp_path):
    model_dir, spec, tensors, _ = source
    bad = "audio_tower.layers.0.fc1.weight"  # [ffn, dim] stored transposed
    folder = write_variant(tmp_path, {**tensors, bad: tensors[bad].T})
    with pytest.raises(WeightError) as error:
        load_params(folder, spec)
    message = str(error.value)
    assert f"misshaped tensor(s): {bad} (checkpoint [64, 128], model [128, 64])" in message
    assert "missing" not in message  # reported once, as what it is


def test_unexpected_tensor_is_named(source, tmp_path):
    model_dir, spec, tensors, _ = source
    extra = "language_model.model.layers.7.mlp.up_proj.weight"  # a layer this model does not have
    folder = write_variant(tmp_path, {**tensors, extra: torch.zeros(2, 2)})
    with pytest.raises(WeightError, match=rf"unexpected tensor\(s\): {extra}$"):
        load_params(folder, spec)


def test_tensor_stored_under_both_name_layouts_is_refused(source, tmp_path):
    model_dir, spec, tensors, _ = source
    copy = tensors["language_model.model.norm.weight"].clone()
    folder = write_variant(tmp_path, {**tensors, "model.language_model.norm.weight": copy})
    with pytest.raises(WeightError, match=r"stored twice: .*norm\.weight"):
        load_params(folder, spec)


def test_truncated_file_fails_by_name_before_loading(source, tmp_path):
    model_dir, spec, _, _ = source
    folder = tmp_path / "truncated"
    folder.mkdir()
    data = (model_dir / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 3])  # an interrupted download
    with pytest.raises(WeightError, match=r"truncated or corrupt: tensor \S+"):
        load_params(folder, spec)
    (folder / "model.safetensors").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(WeightError, match="not a safetensors file"):
        load_params(folder, spec)


def test_folder_without_weights_says_what_it_looked_for(source, tmp_path):
    _, spec, _, _ = source
    with pytest.raises(WeightError, match="neither model.safetensors nor model.safetensors.index.json"):
        load_params(tmp_path, spec)


# --- layouts -----------------------------------------------------------------------------------

def write_sharded(tmp_path, tensors: dict):
    """Two shards and an index, as Qwen/Qwen2-Audio-7B ships (there: five shards)."""
    folder = tmp_path / "sharded"
    folder.mkdir()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, members in shards.items():
        save_file({k: tensors[k].contiguous() for k in members}, str(folder / file))
        weight_map.update(dict.fromkeys(members, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def test_sharded_checkpoint_loads_the_same_parameters(source, tmp_path):
    _, spec, tensors, expected = source
    folder = write_sharded(tmp_path, tensors)
    assert_same_params(load_params(folder, spec), expected)


def test_index_naming_a_missing_shard_fails_clearly(source, tmp_path):
    _, spec, tensors, _ = source
    folder = write_sharded(tmp_path, tensors)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(WeightError, match=r"names shard\(s\) that do not exist: .*model-00002-of-00002"):
        load_params(folder, spec)


def test_transformers5_names_map_onto_published_names(source, tmp_path):
    _, spec, tensors, expected = source
    renames = {"audio_tower.": "model.audio_tower.", "multi_modal_projector.": "model.multi_modal_projector.",
               "language_model.model.": "model.language_model.", "language_model.lm_head.": "lm_head."}

    def new_style(name):
        old = next(prefix for prefix in renames if name.startswith(prefix))
        return renames[old] + name[len(old):]

    renamed = {new_style(k): v for k, v in tensors.items()}
    assert "lm_head.weight" in renamed and "model.language_model.embed_tokens.weight" in renamed
    assert all(canonical_name(new_style(k)) == k for k in tensors)
    assert_same_params(load_params(write_variant(tmp_path, renamed), spec), expected)


def test_tied_embeddings_fill_the_output_head(source, tmp_path):
    _, spec, tensors, expected = source
    folder = write_variant(tmp_path, {k: v for k, v in tensors.items() if k != LM_HEAD})
    params = load_params(folder, spec, tie=True)
    np.testing.assert_array_equal(params[LM_HEAD], expected[EMBED])
    with pytest.raises(WeightError, match=LM_HEAD):  # untied, the head is simply missing
        load_params(folder, spec, tie=False)


def test_rotary_inverse_frequencies_in_old_exports_are_ignored(source, tmp_path):
    _, spec, tensors, expected = source
    buffer = "language_model.model.layers.0.self_attn.rotary_emb.inv_freq"
    folder = write_variant(tmp_path, {**tensors, buffer: torch.ones(spec.head_dim // 2)})
    assert_same_params(load_params(folder, spec), expected)


# --- dtypes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("file_dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoints_convert_exactly(source, tmp_path, file_dtype):
    _, spec, tensors, _ = source
    stored = {k: v.to(file_dtype) for k, v in tensors.items()}
    params = load_params(write_variant(tmp_path, stored), spec)
    for name, value in stored.items():
        np.testing.assert_array_equal(params[name], value.to(torch.float32).numpy(), err_msg=name)
    # The values really were rounded: the test would not notice a loader that skipped the conversion.
    assert not np.array_equal(params[EMBED], tensors[EMBED].numpy())


@pytest.mark.parametrize("file_dtype", [torch.float32, torch.bfloat16])
def test_loading_into_an_fp16_model(source, tmp_path, file_dtype):
    _, spec, tensors, _ = source
    folder = write_variant(tmp_path, {k: v.to(file_dtype) for k, v in tensors.items()})
    params = load_params(folder, spec, dtype=ms.float16)
    for name, value in tensors.items():
        assert params[name].dtype == np.float16
        np.testing.assert_array_equal(params[name], value.to(file_dtype).to(torch.float16).numpy(), err_msg=name)


# --- finding the checkpoint ----------------------------------------------------------------------

def test_folder_without_config_is_not_a_checkpoint(source, tmp_path):
    model_dir, _, _, _ = source
    folder = tmp_path / "weights-only"
    folder.mkdir()
    shutil.copy(model_dir / "model.safetensors", folder)
    with pytest.raises(UserError, match=r"not a Hugging Face checkpoint: no config.json, tokenizer_config.json"):
        resolve_checkpoint(str(folder))


def test_checkpoint_folder_resolves_to_itself(source):
    model_dir, _, _, _ = source
    assert resolve_checkpoint(str(model_dir)) == (model_dir.resolve(), None)


@pytest.mark.parametrize("model", ["/no/such/checkpoint", "./no-such-checkpoint", "a/b/c"])
def test_path_that_does_not_exist_is_refused(model):
    with pytest.raises(UserError, match="is not a checkpoint folder"):
        resolve_checkpoint(model)


def test_hub_id_without_a_reachable_hub_fails_fast_and_says_what_to_do(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # Offline, so that the attempt fails at once instead of waiting on DNS; huggingface_hub reads
    # the variable at import, so its constant is patched too. An empty cache: nothing stale found.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError) as error:
        resolve_checkpoint("nobody-here/no-such-audio-model")
    message = str(error.value)
    assert "is not a local folder and the Hugging Face hub could not provide it" in message
    assert "huggingface-cli download nobody-here/no-such-audio-model" in message
