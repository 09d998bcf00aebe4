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
# The encoder halves frames in its second convolution and again in the average pool, so a bucket's
# frame count must be a multiple of 4 for both to divide evenly.
FRAME_QUANTUM = 4

# A clip shorter than its bucket must leave a few padding frames before the bucket edge: the
# convolutions read one frame past the last valid one, and inside a bucket that frame is log-mel
# padding (as in the 30 s reference), while past the bucket edge it would be zeros. Only the
# 30 s window itself may be filled to the last frame, because the reference pads to exactly that.
BUCKET_MARGIN_FRAMES = 4


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


def bucket_frames_for_seconds(seconds: float) -> int:
    frames = round(seconds * FRAMES_PER_SECOND)
    if frames % FRAME_QUANTUM or not 0 < frames <= WINDOW_FRAMES:
        raise ValueError(
            f"bucket of {seconds} s is {frames} frames: it must be a positive multiple of "
            f"{FRAME_QUANTUM} frames and at most {WINDOW_FRAMES} ({WINDOW_S} s)"
        )
    return frames


def fits_bucket(valid_frames: int, bucket_frames: int) -> bool:
    """True when a clip of valid_frames can run in a bucket of bucket_frames exactly."""
    if bucket_frames == WINDOW_FRAMES:
        return valid_frames <= WINDOW_FRAMES
    return valid_frames + BUCKET_MARGIN_FRAMES <= bucket_frames
