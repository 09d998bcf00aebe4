"""Shape constants of Qwen2-Audio's audio front end, written once; everything else derives from them.

The model sees 16 kHz audio as Whisper log-mel frames (10 ms hop). Its window is 30 s: 3000 frames,
1500 encoder positions after the stride-2 convolution, 750 audio tokens after the average pool.
"""

import math

SAMPLE_RATE = 16_000
HOP_LENGTH = 160
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH
N_MELS = 128
WINDOW_S = 30
WINDOW_SAMPLES = WINDOW_S * SAMPLE_RATE
WINDOW_FRAMES = WINDOW_SAMPLES // HOP_LENGTH
# The encoder halves frames in its second convolution and again in the average pool, so clips in a
# packed row start on multiples of 4 frames.
FRAME_QUANTUM = 4
# Log-mel padding frames past a clip's last valid frame that the reference's first convolution
# reads (see encoder_positions): a clip's features carry them, so that packed clips stay exact.
TRAILING_FRAMES = 2


def frames_for_samples(n_samples: int) -> int:
    """Valid mel frames for a waveform of n_samples (the feature extractor's attention mask sum)."""
    return math.ceil(n_samples / HOP_LENGTH)


def frames_for_seconds(seconds: float) -> int:
    return frames_for_samples(round(seconds * SAMPLE_RATE))


def encoder_positions(valid_frames: int) -> int:
    """Encoder positions after the stride-2 convolution."""
    return (valid_frames - 1) // 2 + 1


def audio_tokens(valid_frames: int) -> int:
    """Audio tokens the projector emits for valid_frames mel frames (750 for 30 s)."""
    return (encoder_positions(valid_frames) - 2) // 2 + 1


def fits_window(valid_frames: int) -> bool:
    """True when a clip of valid_frames fits the model's 30 s window (one Item, one encoder pass)."""
    return valid_frames <= WINDOW_FRAMES
