"""The units of work that flow through the pipeline, as plain frozen dataclasses.

A manifest row becomes one Item (audio up to 30 s) or several (one per segment of longer audio).
Items are grouped into Batches for dispatch. Every Item ends as exactly one ItemResult.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from pipeline.reasons import Failure


@dataclass(frozen=True)
class Source:
    """What a row's audio was when it was planned (intake/sources.py), recorded with its results."""

    audio: str  # the manifest's audio value
    duration_s: float | None  # the manifest's duration_s
    version: str | None  # storage.version of the file; None: no readable file there now
    sha256: str | None = None  # with verify_content

    def row(self) -> dict:
        return {"source_audio": self.audio, "source_duration_s": self.duration_s,
                "source_version": self.version, "source_sha256": self.sha256}


@dataclass(frozen=True)
class Item:
    """One clip or one segment of a long file: at most the 30 s window of audio."""

    row: int  # position in the manifest, to join pass-through columns back
    id: str  # the manifest id
    path: str  # resolved audio path
    segment: int  # 0-based segment index; 0 for a clip of at most 30 s
    n_segments: int  # 1 for a clip of at most 30 s
    # Nominal window within the file. For segments the actual cut points move up to the search
    # radius toward a pause, and are decided from the audio when it is decoded.
    start_s: float
    end_s: float
    # The row's duration its plan was made from (the file's length for every segment of it); 0 for
    # a row that could not be planned, None for items from before this was recorded. Results of
    # one row count only when they come from one plan (output/sink.py).
    planned_s: float | None = None
    # The row's audio as it was planned (None: not recorded, e.g. items built by hand in tests):
    # committed with the results, so that a later run can tell whether the audio changed since.
    source: Source | None = None

    @property
    def key(self) -> str:
        """Unique and stable across runs: what resume uses to skip committed work."""
        return f"{self.id}#{self.segment}"


@dataclass(frozen=True)
class Batch:
    """Items dispatched together to one worker (a unit of dispatch and retry, not a model shape)."""

    items: tuple[Item, ...]
    attempt: int = 0  # how many times this exact batch already failed on its own
    # Run on a worker holding nothing else: it failed beside other batches, so whether it is the
    # one at fault is known only when it runs alone (run/retry.py).
    alone: bool = False

    @property
    def batch_id(self) -> str:
        """Derived from the content, so a part's file name says what it holds."""
        digest = hashlib.sha256("\n".join(sorted(i.key for i in self.items)).encode()).hexdigest()
        return f"b-{digest[:16]}"


@dataclass(frozen=True)
class ItemResult:
    """The outcome of one Item: annotations on success, a reason code and detail on failure."""

    item: Item
    status: str  # "ok" or "error"
    error: str | None = None  # a Reason value when status is "error"
    error_detail: str | None = None
    start_s: float | None = None  # actual cut points (segments) or 0 and the decoded duration
    end_s: float | None = None
    silent: bool | None = None
    # Raw decoded text of every task that answered, keyed by task name.
    raw: dict[str, str] = field(default_factory=dict)
    # Parsed outputs keyed by output column (caption, events, transcript, language, moderation,
    # custom task names): a string or a list of strings.
    parsed: dict[str, object] = field(default_factory=dict)
    # With duration_mismatch: the file's length as decoded, longer than its plan allows (the driver
    # plans the row again from it instead of committing this result).
    measured_s: float | None = None
    # What the model says about each task's answer (model.interface.Answer), keyed by task name;
    # empty when the model cannot say.
    answers: dict[str, object] = field(default_factory=dict)
    # Tasks whose looping answer was generated again (retry_degenerate): what the retry changed.
    retried: dict[str, str] = field(default_factory=dict)
    # Follow-up questions their rule (`when:`) skipped, keyed by task name: why (their columns are null).
    skipped: dict[str, str] = field(default_factory=dict)


def failure_result(item: Item, failure: Failure, start_s=None, end_s=None) -> ItemResult:
    """The error result of an item whose audio cannot be used (the reason and its detail)."""
    return ItemResult(item=item, status="error", error=str(failure.reason), error_detail=failure.detail,
                      start_s=start_s, end_s=end_s)
