"""The model and the three graphs compiled per audio bucket.

- PrefixGraph (B clips): encode the audio, project it, splice it into the shared prompt prefix
  (everything up to and including <|audio_eos|>) and prefill that prefix once per clip.
- TaskGraph (N = B x tasks rows): prefill each row's task suffix into the row's own cache,
  attending over its clip's prefix cache (read in place, never copied), and pick the first token.
- StepGraph (N rows): one decode step over the prefix caches and the rows' own caches.

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
    """Prefix caches [B, kv, P, d] per layer, each row's clip prefix length [N], suffix ids and
    positions [N, C], own-cache slots [N, C], index of each row's last valid suffix token [N]
    -> first tokens [N], their logits [N, V], the rows' own caches [N, kv, T, d]."""

    def __init__(self, model: Qwen2Audio, spec, own_len: int, dtype, sampling: bool):
        super().__init__(auto_prefix=False)
        self.text = model.language_model.model
        self.lm_head = model.language_model.lm_head
        self.own_len = own_len
        self.kv_heads, self.head_dim = spec.kv_heads, spec.head_dim
        self.dtype = dtype
        self.sampling = sampling

    def construct(self, k_prefix, v_prefix, prefix_lens, ids, positions, own_slots, last_index, temperature, top_p,
                  u):
        n = ids.shape[0]
        empty = ()
        for _ in range(len(k_prefix)):
            empty = empty + (ops.zeros((n, self.kv_heads, self.own_len, self.head_dim), self.dtype),)
        hidden, k_own, v_own = self.text.with_prefix(self.text.embed_tokens(ids), positions, own_slots, empty, empty,
                                                     prefix_lens, k_prefix, v_prefix)
        last = ops.gather(hidden, last_index, 1, 1)
        logits = self.lm_head(last).astype(ms.float32)
        return _choose(logits, temperature, top_p, u, self.sampling), logits, k_own, v_own


class StepGraph(nn.Cell):
    """One decode step: ids, positions and own-cache slots [N, 1], the rows' own caches and the
    clips' prefix caches -> next tokens, logits, updated own caches."""

    def __init__(self, model: Qwen2Audio, sampling: bool):
        super().__init__(auto_prefix=False)
        self.text = model.language_model.model
        self.lm_head = model.language_model.lm_head
        self.sampling = sampling

    def construct(self, ids, positions, own_slots, k_own, v_own, prefix_lens, k_prefix, v_prefix, temperature,
                  top_p, u):
        hidden, k_own, v_own = self.text.with_prefix(self.text.embed_tokens(ids), positions, own_slots, k_own, v_own,
                                                     prefix_lens, k_prefix, v_prefix)
        n, _, h = hidden.shape
        logits = self.lm_head(hidden.reshape(n, h)).astype(ms.float32)
        return _choose(logits, temperature, top_p, u, self.sampling), logits, k_own, v_own


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
