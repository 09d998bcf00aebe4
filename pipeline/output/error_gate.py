"""The error gate: a run whose rows mostly failed is not a success.

Judged on the rows an invocation completed (its runs/ file: this invocation's rows and those of an
earlier one killed before it could write its own), so a nightly job is judged on tonight's rows,
not on years of earlier ones. A row failed when its status is not ok (error, or partial: some of
its segments failed). Over max_error_rate, the run still writes everything it would (its tables
and run.json when it finished), but no _SUCCESS, and exits 3 (exit_codes.OVER_ERROR_THRESHOLD),
so a broken mount or a revoked credential alerts someone instead of passing as a night of error
rows. An invocation is judged once: a rerun judges only the rows it completes itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class GateResult:
    rows: int
    failed: int
    max_error_rate: float | None  # None: no gate

    @property
    def rate(self) -> float:
        return self.failed / self.rows if self.rows else 0.0

    @property
    def passed(self) -> bool:
        return self.max_error_rate is None or self.rate <= self.max_error_rate

    def to_dict(self) -> dict:
        return {"rows": self.rows, "failed": self.failed, "rate": round(self.rate, 4),
                "max_error_rate": self.max_error_rate, "passed": self.passed}

    def describe(self) -> str:
        return (f"{self.failed} of this run's {self.rows} rows failed ({self.rate:.1%}), over max_error_rate "
                f"{self.max_error_rate:.1%}")


def judge(statuses: Iterable[str], max_error_rate: float | None) -> GateResult:
    statuses = list(statuses)
    return GateResult(len(statuses), sum(s != "ok" for s in statuses), max_error_rate)


def judge_counts(rows: int, failed: int, max_error_rate: float | None) -> GateResult:
    """judge, from the counts (an invocation's runs/ file: output/delta.DeltaWritten)."""
    return GateResult(rows, failed, max_error_rate)
