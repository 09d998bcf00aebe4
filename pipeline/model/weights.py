"""Loading Hugging Face safetensors checkpoints (single file or sharded with an index) by name.

The names are checked both ways before anything is loaded: every parameter of the MindSpore model
must be in the checkpoint with the same shape, and every tensor in the checkpoint must be used.
The file format is read directly (an 8-byte header length, a JSON header, raw little-endian data)
so that bf16 tensors, which numpy cannot represent, convert without torch.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

_NUMPY_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
# Buffers some exporters save that are recomputed here rather than loaded.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class WeightError(UserError):
    """The checkpoint does not match the model: names the tensors that are missing, extra or misshaped."""


def checkpoint_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        absent = [str(f) for f in files if not f.is_file()]
        if absent:
            raise WeightError(f"{index} names shard(s) that do not exist: {', '.join(absent)}")
        return files
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise WeightError(f"{model_dir} has neither model.safetensors nor model.safetensors.index.json")


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path: Path) -> Iterator[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]]:
    """Yield (name, shape, load) for each tensor; load() reads it as a numpy array (bf16 as fp32)."""
    file_len = path.stat().st_size
    with open(path, "rb") as f:
        try:
            (header_len,) = struct.unpack("<Q", f.read(8))
            # Any other file (an HTML error page saved as a shard) reads as an absurd header length.
            if header_len > file_len - 8:
                raise ValueError(f"header of {header_len} bytes in a file of {file_len}")
            header = json.loads(f.read(header_len))
        except (struct.error, ValueError) as exc:
            raise WeightError(f"{path} is not a safetensors file ({exc})") from None
    data_len = file_len - 8 - header_len
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len) if data_len > 0 else np.zeros(0, np.uint8)
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = tuple(info["shape"])
        begin, end = info["data_offsets"]
        dtype = info["dtype"]
        if dtype != "BF16" and dtype not in _NUMPY_DTYPES:
            raise WeightError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        # Checked before anything loads: a partly downloaded shard must fail here, by name,
        # rather than as a numpy reshape error halfway through filling the model.
        itemsize = 2 if dtype == "BF16" else np.dtype(_NUMPY_DTYPES[dtype]).itemsize
        if end - begin != int(np.prod(shape, dtype=np.int64)) * itemsize or not 0 <= begin <= end <= data_len:
            raise WeightError(f"{path} is truncated or corrupt: tensor {name} ({dtype} {list(shape)}) "
                              f"claims bytes {begin}..{end} of {data_len}")

        def load(begin=begin, end=end, dtype=dtype, shape=shape) -> np.ndarray:
            raw = np.asarray(data[begin:end])
            if dtype == "BF16":
                return _bf16_to_f32(raw).reshape(shape)
            return raw.view(_NUMPY_DTYPES[dtype]).reshape(shape)

        yield name, shape, load


def canonical_name(name: str) -> str:
    """Map transformers 5's saved layout onto the published checkpoints' layout used here."""
    for new, old in (
        ("model.audio_tower.", "audio_tower."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
    ):
        if name.startswith(new):
            return old + name[len(new):]
    return name


def _listing(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _stored_shape(param, checkpoint_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape a checkpoint tensor takes in the model (see layers.Linear's stored_transposed)."""
    return checkpoint_shape[::-1] if getattr(param, "stored_transposed", False) else checkpoint_shape


def load_weights(cell, model_dir: Path, tie_embeddings: bool) -> int:
    """Load a checkpoint into cell's parameters (named like the checkpoint); returns tensors loaded."""
    import mindspore as ms

    params = dict(cell.parameters_and_names())
    loaders: dict[str, Callable[[], np.ndarray]] = {}
    unexpected, misshaped, duplicated = [], [], []
    seen: set[str] = set()  # canonical names already found, misshaped ones included
    for path in checkpoint_files(model_dir):
        for raw_name, shape, load in read_safetensors(path):
            name = canonical_name(raw_name)
            if name.endswith(_IGNORED_SUFFIXES):
                continue
            if name in seen:  # in two shards, or under both naming layouts: which one is meant?
                duplicated.append(raw_name)
                continue
            seen.add(name)
            if name not in params:
                unexpected.append(raw_name)
            elif tuple(params[name].shape) != _stored_shape(params[name], shape):
                misshaped.append(f"{raw_name} (checkpoint {list(shape)}, model {list(_stored_shape(params[name], tuple(params[name].shape)))})")
            else:
                loaders[name] = load
    if tie_embeddings and "language_model.lm_head.weight" not in seen:
        loaders["language_model.lm_head.weight"] = loaders.get("language_model.model.embed_tokens.weight")
    # A misshaped tensor is reported once, as misshaped, not also as missing.
    missing = sorted(name for name in params if loaders.get(name) is None and name not in seen)
    problems = []
    if missing:
        problems.append(f"missing tensor(s): {_listing(missing)}")
    if misshaped:
        problems.append(f"misshaped tensor(s): {_listing(sorted(misshaped))}")
    if unexpected:
        problems.append(f"unexpected tensor(s): {_listing(sorted(unexpected))}")
    if duplicated:
        problems.append(f"tensor(s) stored twice: {_listing(sorted(duplicated))}")
    if problems:
        raise WeightError(f"checkpoint {model_dir} does not match Qwen2-Audio: " + "; ".join(problems))
    for name, load in loaders.items():
        param = params[name]
        value = load().T if getattr(param, "stored_transposed", False) else load()
        param.set_data(ms.Tensor(np.ascontiguousarray(value, dtype=np.float32)).astype(param.dtype))
    return len(loaders)
