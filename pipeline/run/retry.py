"""What happens to a batch that fails: retry it, split it, or give up on its single item.

Pure logic, no Ray: attempts are bounded (a poison input must not loop forever, which is what
Ray's own defaults of infinite retries would do), and a batch that keeps failing is halved until
the item that breaks it stands alone and is marked failed. Every other item still runs.
"""

from __future__ import annotations

from dataclasses import replace

from pipeline.items import Batch, ItemResult
from pipeline.reasons import Failure, Reason
from pipeline.run.worker import failure_result


class RetryPolicy:
    def __init__(self, max_attempts: int):
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.max_attempts = max_attempts
        self.retries = 0
        self.splits = 0

    def on_failure(self, batch: Batch, reason: Reason, detail: str) -> tuple[list[Batch], list[ItemResult]]:
        """-> (batches to run again, final error results)."""
        attempt = batch.attempt + 1
        if attempt < self.max_attempts:
            self.retries += 1
            return [replace(batch, attempt=attempt)], []
        if len(batch.items) > 1:
            self.splits += 1
            middle = len(batch.items) // 2
            return [Batch(batch.items[:middle]), Batch(batch.items[middle:])], []
        failure = Failure(reason, f"failed {attempt} time(s) on its own; last error: {detail}")
        return [], [failure_result(batch.items[0], failure, batch.items[0].start_s, batch.items[0].end_s)]
