"""Which committed results count, where OUT holds several for a row or a key (a transient failure
retried, a row planned again from its decoded length, reruns): decided columnar over the results'
state columns, for resume (output/sink.py) and the final tables (output/final.py)."""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.reasons import TRANSIENT


class CurrentResults:
    """Which results count where OUT holds several for a row or a key, decided over the state
    columns of a table of current results (id, key, planned_s, error, run):

    - One plan per id. A row's plan is its planned duration (planned_s), which decides how many
      segments it has and where: results planned from another duration (an intake failure, 0, that a
      later run could read; a file re-planned from its decoded length) would mix segment numbers of
      two plans. Where the row's plan now is known (planned: the manifest's duration_s, OUT's
      duration cache, a header read this run), its results count; elsewhere the plan of its best
      result (lasting over transient, then the latest run, then the longer plan). Results from before
      plans were recorded (null) count with any plan.
    - One result per key, where a key has several: a lasting result wins over transient ones (a
      retried storage_unavailable), then the latest run's; a key with only transient results keeps
      its first. Two lasting results of one run are both kept, for the caller's consistency check
      (tables.current_segments): one run never commits a key twice.

    Columnar (pyarrow.compute, group_by): a million results decide in seconds, with Python only for
    keys left with several transient results.
    """

    def __init__(self, planned: Mapping[str, float]):
        self._planned = _lookup_table(planned)

    def mask(self, table: pa.Table, plan_now: pa.Array | None = None) -> pa.BooleanArray:
        """Which rows of table count (every result of the rows concerned must be in table).
        plan_now: each row's row's planned duration now (null: not known), instead of looking it
        up by id in `planned` (a caller that knows each result's manifest row)."""
        if not table.num_rows:
            return pa.array([], pa.bool_())
        if plan_now is None:
            plan_now = _look_up(self._planned, table.column("id"), "value")
        plan = table.column("planned_s")
        candidates = pc.and_(pc.is_valid(plan), pc.is_null(plan_now))
        ranked = _ranked(table)
        best_plan = _first_by(ranked.append_column("plan", plan).filter(candidates), "id",
                              [("lasting", "descending"), ("run_", "descending"), ("plan", "descending")], ["plan"])
        chosen = pc.coalesce(plan_now, _look_up(best_plan, table.column("id"), "plan"))
        same_plan = pc.or_(pc.is_null(plan), pc.fill_null(pc.equal(plan, chosen), False))

        contenders = ranked.filter(same_plan)
        counts = contenders.group_by("key").aggregate([("key", "count")])
        repeated = counts.filter(pc.greater(counts.column("key_count"), 1)).column("key")
        several = pc.fill_null(pc.is_in(ranked.column("key"), value_set=repeated), False)
        best = _first_by(contenders.filter(pc.is_in(contenders.column("key"), value_set=repeated)), "key",
                         [("lasting", "descending"), ("run_", "descending")], ["lasting", "run_"])
        wins = pc.and_(pc.equal(ranked.column("lasting"), _look_up(best, ranked.column("key"), "lasting")),
                       pc.equal(ranked.column("run_"), _look_up(best, ranked.column("key"), "run_")))
        keep = pc.and_(same_plan, pc.or_(pc.invert(several), pc.fill_null(wins, False)))
        # A key whose winners are transient keeps its first one (Python: such keys are few).
        extra = pc.and_(pc.and_(keep, several), pc.invert(ranked.column("lasting")))
        if pc.any(extra).as_py():
            seen: set[str] = set()
            flags = keep.to_pylist()
            for index in pc.indices_nonzero(extra).to_pylist():
                key = ranked.column("key")[index].as_py()
                flags[index] = key not in seen
                seen.add(key)
            keep = pa.array(flags, pa.bool_())
        return keep.combine_chunks() if isinstance(keep, pa.ChunkedArray) else keep


def current_results(table: pa.Table, planned: Mapping[str, float]) -> pa.Table:
    """The results of table that count (CurrentResults), for a table holding every result at once."""
    return table.filter(CurrentResults(planned).mask(table)) if table.num_rows else table


def _lasting(table) -> pa.Array:
    error = table.column("error")
    return pc.invert(pc.fill_null(pc.is_in(error, value_set=pa.array(sorted(TRANSIENT), pa.string())), False))


def _ranked(table) -> pa.Table:
    """key, id and the rank of each result: lasting (not transient), then its run ('' for none)."""
    return pa.table({"key": table.column("key"), "id": table.column("id"), "lasting": _lasting(table),
                     "run_": pc.fill_null(table.column("run"), "")})


def _first_by(table: pa.Table, group: str, order: list[tuple[str, str]], columns: list[str]) -> pa.Table:
    """Per value of group, the given columns of its first row in this order: group first, then columns."""
    ordered = table.sort_by([(group, "ascending"), *order])
    found = ordered.group_by(group, use_threads=False).aggregate([(c, "first") for c in columns])
    return found.select([group, *(f"{c}_first" for c in columns)]).rename_columns([group, *columns])


def _lookup_table(mapping: Mapping[str, float]) -> pa.Table:
    return pa.table({"id": pa.array(list(mapping), pa.string()), "value": pa.array(list(mapping.values()), pa.float64())})


def _look_up(table: pa.Table, keys, column: str) -> pa.Array:
    """table's column for each of keys, matched against table's first column; null where absent."""
    return table.column(column).take(pc.index_in(keys, value_set=table.column(0)))


