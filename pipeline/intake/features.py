"""Whisper log-mel features for a clip, computed at its bucket's length rather than always 30 s.

The transformers feature extractor is the reference's own code, so features match it exactly: the
first F frames are identical whether the waveform is padded to F frames or to 30 s, because the
log-mel floor is set by the clip's own maximum.
"""

from __future__ import annotations

import numpy as np

from pipeline import shapes


def bucket_features(extractor, samples: np.ndarray, bucket_frames: int) -> tuple[np.ndarray, int]:
    """-> (features [n_mels, bucket_frames] float32, valid frame count) for 16 kHz mono samples."""
    max_samples = bucket_frames * shapes.HOP_LENGTH
    if len(samples) > max_samples:
        raise ValueError(f"{len(samples)} samples do not fit a bucket of {bucket_frames} frames")
    out = extractor(
        samples.astype(np.float32),
        sampling_rate=shapes.SAMPLE_RATE,
        padding="max_length",
        max_length=max_samples,
        truncation=False,
        return_attention_mask=True,
        return_tensors="np",
    )
    features = out["input_features"][0].astype(np.float32)
    valid = int(out["attention_mask"][0].sum())
    return features, valid
