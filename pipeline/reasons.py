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
    # The object store kept failing (throttling, 5xx, timeouts) after retries. Transient: the row
    # is written, and the next run of the same command tries it again.
    STORAGE_UNAVAILABLE = "storage_unavailable"
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


# Failures that say nothing about the file itself: a rerun retries them instead of keeping them.
TRANSIENT = frozenset({Reason.STORAGE_UNAVAILABLE})


@dataclass(frozen=True)
class Failure:
    """Why one item could not be annotated."""

    reason: Reason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"
