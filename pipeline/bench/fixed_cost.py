"""Where a run's fixed cost goes: the time before the first batch reaches the model, and after the
last one returns, piece by piece, from run.json's milestones (seconds since the driver process
started) and the worker's own load phases, with the command's wall time measured around it."""

from __future__ import annotations


def _gap(marks: dict, later: str, earlier: str) -> float | None:
    if later in marks and earlier in marks:
        return round(marks[later] - marks[earlier], 2)
    return None


def fixed_cost(run: dict, command_wall_s: float) -> dict:
    """run: a finished run's run.json; command_wall_s: its command's wall time, process start to exit."""
    marks = run["this_run"].get("milestones") or {}
    workers = run["this_run"].get("workers") or []
    # The worker whose readiness released dispatch: the last of the first ones to load.
    phases = max(workers, key=lambda w: w.get("load_s", 0.0)).get("load_phases", {}) if workers else {}
    start = marks.get("first_model_call", marks.get("first_dispatch"))
    end = round(command_wall_s - marks["work_done"], 2) if "work_done" in marks else None
    pieces = {
        "interpreter_and_imports_s": marks.get("annotate_called"),
        "manifest_and_checks_s": _gap(marks, "ray_starting", "annotate_called"),
        "ray_start_s": _gap(marks, "ray_started", "ray_starting"),
        "model_plan_s": _gap(marks, "model_planned", "ray_started"),
        "work_plan_s": _gap(marks, "work_planned", "model_planned"),
        "worker_submitted_s": _gap(marks, "workers_started", "work_planned"),
        "worker_load_s": _gap(marks, "workers_ready", "workers_started"),
        "worker_load_phases_s": phases,
        "ready_to_first_model_call_s": _gap(marks, "first_model_call", "workers_ready"),
        "final_tables_s": _gap(marks, "tables_written", "work_done"),
        "report_ray_shutdown_exit_s": round(command_wall_s - marks["tables_written"], 2)
        if "tables_written" in marks else None,
    }
    return {"start_to_first_model_call_s": start, "work_done_to_exit_s": end,
            "total_s": round(start + end, 2) if start is not None and end is not None else None,
            "pieces": pieces, "milestones": marks}
