"""Packing several clips into one fixed-shape row: host-side layouts, pure numpy (no MindSpore).

Two packings, both exact (a clip's results are bit-for-bit what it gets alone, padded to 30 s):

- Encoder rows (`pack_encoder_row`): clips share one row of mel frames. Each clip brings its valid
  frames plus the two log-mel padding frames the reference's convolutions read past its end; a zero
  frame stands before each clip (the convolution's own zero padding), and clips start on multiples
  of 4 frames so that the stride-2 convolution and the average pool never straddle two clips. The
  encoder zeroes the first convolution's output outside each clip (the second convolution's zero
  padding), gives each clip its own positional embeddings from 0, and attends within a clip only.
- Prefill rows (`pack_prefill_row`): clips' prompts share one row of tokens: each clip's prefix
  (prompt head, audio tokens, tail) followed by every first question's suffix (a follow-up's
  question comes after its parent's answer, in the decode slot, never here). A token sees earlier tokens of
  its own clip's prefix and of its own suffix only, with positions that restart at each clip, so
  every task row is exactly the prompt the reference feeds the model.

Each row comes with its additive attention mask, built here block by block (a clip's block is a
rectangle: far cheaper on the host than comparing ids inside the graph, measured ~10 ms a row on
the CPU backend). Padding positions attend to themselves only, so they stay finite and never reach
a real position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline import shapes

# The additive mask value for hidden keys, as the reference uses (fp32's minimum).
MASKED = float(np.finfo(np.float32).min)
# A zero frame must stand before each clip after the first (the convolution's own zero padding).
GAP_FRAMES = 1


def encoder_span(valid_frames: int) -> int:
    """Frames a clip takes in an encoder row, up to where the next clip may start."""
    span = valid_frames + shapes.TRAILING_FRAMES + GAP_FRAMES
    return -(-span // shapes.FRAME_QUANTUM) * shapes.FRAME_QUANTUM


def fits_at(start: int, valid_frames: int, row_frames: int) -> bool:
    """Whether a clip starting at frame `start` of a row fits: its trailing padding frames must be
    inside the row, except for a clip alone in a 30 s row, which, like the reference, reads the
    convolution's zero padding past the window."""
    if start == 0 and row_frames == shapes.WINDOW_FRAMES:
        return valid_frames <= row_frames
    return start + valid_frames + shapes.TRAILING_FRAMES <= row_frames


@dataclass(frozen=True)
class EncoderRow:
    """Inputs of one encoder row and where each clip's audio tokens come out."""

    features: np.ndarray  # [n_mels, F] float32
    frame_keep: np.ndarray  # [F] float32: 1 where the first convolution's output is kept
    position_ids: np.ndarray  # [F/2] int32: positional-embedding index of each encoder position
    mask: np.ndarray  # [F/2, F/2] float32 additive: 0 where a position may attend
    token_offsets: tuple[int, ...]  # per clip: first audio token in the row's [F/4] outputs
    token_counts: tuple[int, ...]  # per clip: audio tokens (shapes.audio_tokens)


def pack_encoder_row(features: list[np.ndarray], valid_frames: list[int], row_frames: int,
                     n_mels: int) -> EncoderRow:
    """Lay clips out left to right in one row of row_frames mel frames.

    features[c] holds at least valid_frames[c] + shapes.TRAILING_FRAMES frames (or exactly the window, for
    a clip that fills 30 s: the reference reads zeros past the window, as the row edge does).
    """
    positions = row_frames // 2
    packed = np.zeros((n_mels, row_frames), np.float32)
    keep = np.zeros(row_frames, np.float32)
    position_ids = np.zeros(positions, np.int32)
    mask = _self_only(positions)
    offsets, counts = [], []
    start = 0
    for clip, (feats, valid) in enumerate(zip(features, valid_frames)):
        span = encoder_span(valid)
        if not fits_at(start, valid, row_frames):
            raise ValueError(f"clips of {valid_frames} frames do not fit a row of {row_frames}")
        copied = min(valid + shapes.TRAILING_FRAMES, feats.shape[1], row_frames - start)
        packed[:, start:start + copied] = feats[:, :copied]
        # The second convolution reads the first one's output up to frame `valid` (shapes.
        # encoder_positions); everything else in the clip's span must look like zero padding.
        keep[start:start + valid + 1] = 1.0
        first, n_positions = start // 2, shapes.encoder_positions(valid)
        clip_positions = slice(first, min(first + span // 2, positions))
        position_ids[clip_positions] = np.arange(clip_positions.stop - clip_positions.start)
        # Every position of the clip's span sees the clip's valid positions, and nothing else.
        mask[clip_positions] = MASKED
        mask[clip_positions, first:first + n_positions] = 0.0
        offsets.append(start // 4)
        counts.append(shapes.audio_tokens(valid))
        start += span
    return EncoderRow(packed, keep, position_ids, mask, tuple(offsets), tuple(counts))


def prompt_tokens(prompts, audio_tokens: int) -> int:
    """Tokens a clip takes in a prefill row: its prefix once, then every first question's suffix."""
    return prompts.prefix_len(audio_tokens) + sum(len(prompts.suffixes[t]) for t in prompts.roots)


@dataclass(frozen=True)
class TaskPrompt:
    """Where one task row's prompt sits in a prefill row."""

    task: int
    tokens: tuple[int, ...]  # row indices of its prompt tokens in order: the clip's prefix, its suffix
    last: int  # row index of its last token, whose logits give the first generated token


@dataclass(frozen=True)
class PrefillRow:
    ids: np.ndarray  # [L] int32 token ids (audio positions hold the audio token id; replaced)
    audio_rows: np.ndarray  # [L] int32 arena row of each audio token (the trash row elsewhere)
    is_audio: np.ndarray  # [L] bool
    positions: np.ndarray  # [L] int32, restarting at 0 for each clip
    mask: np.ndarray  # [L, L] float32 additive: a token sees its clip's prefix and its own suffix, causally
    tasks: tuple[tuple[TaskPrompt, ...], ...]  # per clip, per first question (prompts.roots)


def pack_prefill_row(prompts, audio: list[tuple[int, int]], row_len: int, trash_row: int) -> PrefillRow:
    """Lay clips' prompts out in one row of row_len tokens. audio[c] = (first arena row of the
    clip's audio tokens, their count); prompts is the model's PromptPlan."""
    ids = np.zeros(row_len, np.int32)
    audio_rows = np.full(row_len, trash_row, np.int32)
    is_audio = np.zeros(row_len, bool)
    positions = np.zeros(row_len, np.int32)
    mask = _self_only(row_len)
    head, tail = list(prompts.head), list(prompts.tail)
    start = 0
    tasks = []
    for clip, (first_row, count) in enumerate(audio):
        prefix = head + [prompts.audio_token_id] * count + tail
        need = prompt_tokens(prompts, count)
        if start + need > row_len:
            raise ValueError(f"clip prompts of {need} tokens do not fit at {start} of a {row_len}-token row")
        span = slice(start, start + len(prefix))
        ids[span] = prefix
        audio_at = slice(start + len(head), start + len(head) + count)
        audio_rows[audio_at] = np.arange(first_row, first_row + count, dtype=np.int32)
        is_audio[audio_at] = True
        positions[span] = np.arange(len(prefix))
        mask[span, span] = _causal(len(prefix))
        prefix_tokens = tuple(range(span.start, span.stop))
        at = span.stop
        clip_tasks = []
        for task in prompts.roots:
            suffix = prompts.suffixes[task]
            ids[at:at + len(suffix)] = suffix
            positions[at:at + len(suffix)] = np.arange(len(prefix), len(prefix) + len(suffix))
            own = slice(at, at + len(suffix))
            mask[own, span] = 0.0  # the whole shared prefix comes before any suffix token
            mask[own, own] = _causal(len(suffix))
            clip_tasks.append(TaskPrompt(task, prefix_tokens + tuple(range(at, at + len(suffix))), at + len(suffix) - 1))
            at += len(suffix)
        tasks.append(tuple(clip_tasks))
        start += need
    return PrefillRow(ids, audio_rows, is_audio, positions, mask, tuple(tasks))


def _self_only(size: int) -> np.ndarray:
    mask = np.full((size, size), MASKED, np.float32)
    np.fill_diagonal(mask, 0.0)
    return mask


def _causal(size: int) -> np.ndarray:
    return np.triu(np.full((size, size), MASKED, np.float32), 1)
