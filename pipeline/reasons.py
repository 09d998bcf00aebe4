"""Machine-readable reason codes for every way an item can fail. Each failure also carries a
human-readable detail; the code is what dashboards and reruns key on."""

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    # Path problems, found before decoding.
    MISSING_FILE = "missing_file"
    PERMISSION_DENIED = "permission_denied"
    NOT_A_FILE = "not_a_file"
    OUTSIDE_AUDIO_ROOT = "outside_audio_root"
    # Content problems, found while probing or decoding.
    EMPTY_AUDIO = "empty_audio"
    CORRUPT_AUDIO = "corrupt_audio"
    TRUNCATED_AUDIO = "truncated_audio"
    UNSUPPORTED_CODEC = "unsupported_codec"
    DECODER_UNAVAILABLE = "decoder_unavailable"
    NON_FINITE_SAMPLES = "non_finite_samples"
    DURATION_MISMATCH = "duration_mismatch"
    # Processing problems, found after retries were exhausted.
    MODEL_ERROR = "model_error"
    WORKER_LOST = "worker_lost"


@dataclass(frozen=True)
class Failure:
    """Why one item could not be annotated."""

    reason: Reason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"
