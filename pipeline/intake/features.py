"""Whisper log-mel features for a clip, computed for the clip's own length rather than always 30 s.

The transformers feature extractor is the reference's own code, so features match it exactly: the
first F frames are identical whether the waveform is padded to F frames or to 30 s, because the
log-mel floor is set by the clip's own maximum. A clip's features include the padding frames the
model's first convolution reads past its end (shapes.TRAILING_FRAMES).
"""

from __future__ import annotations

import numpy as np

from pipeline import shapes

def clip_features(extractor, samples: np.ndarray) -> tuple[np.ndarray, int]:
    """-> (features [n_mels, frames] float32, valid frame count) for 16 kHz mono samples of at most
    the 30 s window; frames is the valid count plus the trailing padding, rounded up to the frame
    quantum and capped at the window (past which the reference reads zeros)."""
    valid = shapes.frames_for_samples(len(samples))
    if not shapes.fits_window(valid):
        raise ValueError(f"{len(samples)} samples do not fit the {shapes.WINDOW_S} s window")
    quantum = shapes.FRAME_QUANTUM
    frames = min(shapes.WINDOW_FRAMES, -(-(valid + shapes.TRAILING_FRAMES) // quantum) * quantum)
    out = extractor(
        samples.astype(np.float32),
        sampling_rate=shapes.SAMPLE_RATE,
        padding="max_length",
        max_length=frames * shapes.HOP_LENGTH,
        truncation=False,
        return_attention_mask=True,
        return_tensors="np",
    )
    return out["input_features"][0].astype(np.float32), int(out["attention_mask"][0].sum())
