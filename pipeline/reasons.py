"""Machine-readable reason codes for every way an item can fail, and what kind of failure each is.
Each failure also carries a human-readable detail; the code is what dashboards and reruns key on.

Every reason has a Kind, which decides what happens to it (docs/guarantees.md):
- PERMANENT: about the file or its path (missing, corrupt, ...). Committed as the row's error at
  once and never retried, except by `--retry-errors`.
- TRANSIENT: about the storage, not the file (an object store or a file system failing for a
  while). Retried within the run with back-off; still failing after that, the row is written with
  it so the output has its row, but it does not count as done: the next run retries it.
- PROCESSING: about this run's processing (a model error, a lost or OOM-killed worker, a batch
  that stalled, a decode task that crashed). Retried within the run, alone and in smaller batches,
  until the item that causes it stands alone; an item that still fails on its own every time is a
  poison item and is committed with the reason (`--retry-errors` tries it again later).
"""

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    # Path problems, found before decoding.
    MISSING_FILE = "missing_file"
    PERMISSION_DENIED = "permission_denied"
    NOT_A_FILE = "not_a_file"
    OUTSIDE_AUDIO_ROOT = "outside_audio_root"
    # The object store kept failing (throttling, 5xx, timeouts) after retries.
    STORAGE_UNAVAILABLE = "storage_unavailable"
    # A local or network file system failed a read (EIO, ESTALE, a timeout) after retries.
    READ_ERROR = "read_error"
    # Content problems, found while probing or decoding.
    EMPTY_AUDIO = "empty_audio"
    CORRUPT_AUDIO = "corrupt_audio"
    TRUNCATED_AUDIO = "truncated_audio"
    UNSUPPORTED_CODEC = "unsupported_codec"
    DECODER_UNAVAILABLE = "decoder_unavailable"
    NON_FINITE_SAMPLES = "non_finite_samples"
    DURATION_MISMATCH = "duration_mismatch"
    # Audio kept inside other files (a Parquet shard's audio column, WebDataset tar shards).
    NO_AUDIO = "no_audio"  # a null audio value or struct, or a WebDataset sample with no audio member
    AMBIGUOUS_AUDIO = "ambiguous_audio"  # a WebDataset sample with more than one audio member
    CORRUPT_SHARD = "corrupt_shard"  # the Parquet row group (or footer) holding the row cannot be read
    # Processing problems, found after retries were exhausted (the item failed alone every time).
    MODEL_ERROR = "model_error"
    WORKER_LOST = "worker_lost"
    OUT_OF_MEMORY = "out_of_memory"
    TIMED_OUT = "timed_out"
    DECODE_CRASHED = "decode_crashed"


class Kind(StrEnum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    PROCESSING = "processing"


KIND: dict[Reason, Kind] = {
    Reason.MISSING_FILE: Kind.PERMANENT,
    Reason.PERMISSION_DENIED: Kind.PERMANENT,
    Reason.NOT_A_FILE: Kind.PERMANENT,
    Reason.OUTSIDE_AUDIO_ROOT: Kind.PERMANENT,
    Reason.STORAGE_UNAVAILABLE: Kind.TRANSIENT,
    Reason.READ_ERROR: Kind.TRANSIENT,
    Reason.EMPTY_AUDIO: Kind.PERMANENT,
    Reason.CORRUPT_AUDIO: Kind.PERMANENT,
    Reason.TRUNCATED_AUDIO: Kind.PERMANENT,
    Reason.UNSUPPORTED_CODEC: Kind.PERMANENT,
    Reason.DECODER_UNAVAILABLE: Kind.PERMANENT,
    Reason.NON_FINITE_SAMPLES: Kind.PERMANENT,
    Reason.DURATION_MISMATCH: Kind.PERMANENT,
    Reason.NO_AUDIO: Kind.PERMANENT,
    Reason.AMBIGUOUS_AUDIO: Kind.PERMANENT,
    Reason.CORRUPT_SHARD: Kind.PERMANENT,
    Reason.MODEL_ERROR: Kind.PROCESSING,
    Reason.WORKER_LOST: Kind.PROCESSING,
    Reason.OUT_OF_MEMORY: Kind.PROCESSING,
    Reason.TIMED_OUT: Kind.PROCESSING,
    Reason.DECODE_CRASHED: Kind.PROCESSING,
}

# Failures that say nothing about the file itself: written, but the next run retries them
# instead of keeping them (output/sink.py).
TRANSIENT = frozenset(r for r, kind in KIND.items() if kind is Kind.TRANSIENT)
# Failures the run retries before it commits anything (run/retry.py).
RETRIED_IN_RUN = frozenset(r for r, kind in KIND.items() if kind is not Kind.PERMANENT)


def parse_reasons(text: str) -> frozenset[Reason]:
    """'missing_file,model_error' -> those reasons; raises ValueError naming an unknown one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in Reason.__members__.values()]
    if unknown or not names:
        raise ValueError(f"unknown reason code(s) {unknown or [text]}; known: {', '.join(sorted(Reason))}")
    return frozenset(Reason(n) for n in names)


@dataclass(frozen=True)
class Failure:
    """Why one item could not be annotated."""

    reason: Reason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"
