"""The model and the three graphs compiled per audio bucket.

- PrefixGraph (B clips): encode the audio, project it, splice it into the shared prompt prefix
  (everything up to and including <|audio_eos|>) and prefill that prefix once per clip.
- TaskGraph (N = B x tasks rows): copy each clip's prefix cache to its task rows, extend it with
  the task's prompt suffix, and pick the first new token.
- StepGraph (N rows): one decode step.

Each graph instance serves exactly one declared shape, so the number of compiled graphs is the
number of instances used (counted from MindSpore's own per-cell compile cache).
"""

import mindspore as ms
from mindspore import nn, ops

from pipeline.model.decoder import LanguageModel
from pipeline.model.encoder import AudioEncoder, Projector


class Qwen2Audio(nn.Cell):
    """Holds every parameter, named as in the published checkpoints."""

    def __init__(self, spec, dtype):
        super().__init__()
        self.audio_tower = AudioEncoder(spec, dtype)
        self.multi_modal_projector = Projector(spec, dtype)
        self.language_model = LanguageModel(spec, dtype)


def _choose(logits, temperature, top_p, u, sampling: bool):
    """Next token per row: argmax, or top-p sampling driven by a per-row uniform draw u."""
    if not sampling:
        return ops.argmax(logits, -1).astype(ms.int32)
    probs = ops.softmax(logits / temperature, -1)
    sorted_p, order = ops.sort(probs, -1, True)
    before = ops.cumsum(sorted_p, -1) - sorted_p
    kept = sorted_p * (before < top_p).astype(sorted_p.dtype)  # the top token is always kept
    cumulative = ops.cumsum(kept, -1)
    target = u * cumulative[:, -1:]
    index = (cumulative < target).astype(ms.int32).sum(-1, keepdims=True)
    index = ops.minimum(index, ops.fill(ms.int32, index.shape, logits.shape[-1] - 1))
    return ops.gather_elements(order, 1, index).reshape(-1).astype(ms.int32)


class PrefixGraph(nn.Cell):
    """features [B, n_mels, F], encoder key mask [B,1,1,F/2], prefix ids and audio positions [B, P]
    -> per-layer key/value caches [B, kv_heads, P, head_dim]."""

    def __init__(self, model: Qwen2Audio, spec, head_len: int, dtype):
        super().__init__(auto_prefix=False)
        self.encoder = model.audio_tower
        self.projector = model.multi_modal_projector
        self.text = model.language_model.model
        self.head_len = head_len
        self.layers = spec.layers
        self.kv_heads, self.head_dim = spec.kv_heads, spec.head_dim
        self.dtype = dtype

    def construct(self, features, key_mask, ids, audio_mask):
        audio = self.projector(self.encoder(features, key_mask))
        b, p = ids.shape
        a = audio.shape[1]
        # Audio tokens start right after the prompt head, the same offset for every row.
        audio = ops.pad(audio, (0, 0, self.head_len, p - self.head_len - a))
        embeds = ops.select(audio_mask.reshape(b, p, 1), audio, self.text.embed_tokens(ids))
        positions = ops.broadcast_to(ops.arange(0, p, 1, dtype=ms.int32).reshape(1, p), (b, p))
        empty = ()
        for _ in range(self.layers):
            empty = empty + (ops.zeros((b, self.kv_heads, p, self.head_dim), self.dtype),)
        _, k_caches, v_caches = self.text(embeds, positions, empty, empty)
        return k_caches, v_caches


class TaskGraph(nn.Cell):
    """Prefix caches [B, ...], row_map [N] (row -> clip), suffix ids/positions [N, C], index of each
    row's last valid suffix token [N] -> first tokens [N], their logits [N, V], caches [N, ..., S]."""

    def __init__(self, model: Qwen2Audio, cache_len: int, sampling: bool):
        super().__init__(auto_prefix=False)
        self.text = model.language_model.model
        self.lm_head = model.language_model.lm_head
        self.cache_len = cache_len
        self.sampling = sampling

    def construct(self, k_prefix, v_prefix, row_map, ids, positions, last_index, temperature, top_p, u):
        grow = self.cache_len - k_prefix[0].shape[2]
        k_caches = ()
        v_caches = ()
        for i in range(len(k_prefix)):
            k_caches = k_caches + (ops.pad(ops.gather(k_prefix[i], row_map, 0), (0, 0, 0, grow)),)
            v_caches = v_caches + (ops.pad(ops.gather(v_prefix[i], row_map, 0), (0, 0, 0, grow)),)
        hidden, k_caches, v_caches = self.text(self.text.embed_tokens(ids), positions, k_caches, v_caches)
        last = ops.gather(hidden, last_index, 1, 1)
        logits = self.lm_head(last).astype(ms.float32)
        return _choose(logits, temperature, top_p, u, self.sampling), logits, k_caches, v_caches


class StepGraph(nn.Cell):
    """One decode step: ids/positions [N, 1] and caches [N, ..., S] -> next tokens, logits, caches."""

    def __init__(self, model: Qwen2Audio, sampling: bool):
        super().__init__(auto_prefix=False)
        self.text = model.language_model.model
        self.lm_head = model.language_model.lm_head
        self.sampling = sampling

    def construct(self, ids, positions, k_caches, v_caches, temperature, top_p, u):
        hidden, k_caches, v_caches = self.text(self.text.embed_tokens(ids), positions, k_caches, v_caches)
        n, _, h = hidden.shape
        logits = self.lm_head(hidden.reshape(n, h)).astype(ms.float32)
        return _choose(logits, temperature, top_p, u, self.sampling), logits, k_caches, v_caches


def compiled_graph_count(graphs) -> int:
    """Graphs MindSpore actually compiled for these cells (one per distinct input signature)."""
    return sum(len(g.compile_cache) for g in graphs)


class EncoderGraph(nn.Cell):
    """Projected audio features alone, [B, F/4, hidden]: for encoder checks and benchmarks."""

    def __init__(self, model: Qwen2Audio):
        super().__init__(auto_prefix=False)
        self.encoder = model.audio_tower
        self.projector = model.multi_modal_projector

    def construct(self, features, key_mask):
        return self.projector(self.encoder(features, key_mask))
