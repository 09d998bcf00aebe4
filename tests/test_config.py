"""Job files and options: typos are errors, every shipped job file loads, overrides apply."""

from pathlib import Path

import pytest

from pipeline.cli import build_parser, job_config, parse_custom_task
from pipeline.config import Config, ConfigError, load
from pipeline.tasks.catalog import resolve_tasks

JOBS = sorted((Path(__file__).resolve().parents[1] / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("job", JOBS, ids=[j.name for j in JOBS])
def test_every_shipped_job_file_loads(job):
    config = load(job)
    assert resolve_tasks(config)


def test_default_job_file_lists_every_key_with_its_default():
    import dataclasses

    import yaml

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "jobs" / "default.yaml").read_text())
    assert set(data) == {f.name for f in dataclasses.fields(Config)} - {"set_by_options"}
    assert load(Path(__file__).resolve().parents[1] / "jobs" / "default.yaml") == Config()


@pytest.mark.parametrize("text, message", [
    ("bogus: 1", "unknown key"),
    ("batch_items: many", "must be int"),
    ("tasks: caption", "must be a list"),
    ("decode_slots: -1", "decode_slots"),
    ("batch_audio_s: 0", "must be positive"),
    ("dtype: int8", "must be one of"),
    ("segment_search_s: 7", "below 5 s"),
    ("custom_tasks: [{name: x}]", "needs 'name' and 'prompt'"),
    ("custom_tasks: [{name: x, prompt: y, parser: json}]", "parser"),
    ("retry_degenerate: {}", "needs the decoding keys a retry changes"),
    ("retry_degenerate: {top_q: 0.5}", "unknown key"),
    ("retry_degenerate: {repetition_penalty: 0}", "repetition_penalty 0 .from the retry_degenerate."),
    ("do_sample: true\ntemperature: 0", "a temperature of 0 means greedy"),
    ("- a list", "mapping"),
    ("key: [unclosed", "not valid YAML"),
])
def test_bad_job_files_name_the_problem(tmp_path, text, message):
    job = tmp_path / "job.yaml"
    job.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load(job)


def test_missing_job_file():
    with pytest.raises(ConfigError, match="cannot read job file"):
        load("no/such/job.yaml")


def test_overrides_are_checked_like_the_file():
    config = Config().with_overrides(tasks=["caption"], model="models/x", device=None)
    assert config.tasks == ("caption",) and config.model == "models/x" and config.device == "auto"
    with pytest.raises(ConfigError):
        Config().with_overrides(top_p=0)


def test_custom_task_option():
    task = parse_custom_task("speakers|text|8|How many people speak? Answer | briefly.")
    assert (task.name, task.parser, task.max_new_tokens) == ("speakers", "text", 8)
    assert task.prompt == "How many people speak? Answer | briefly."
    with pytest.raises(ConfigError, match="NAME\\|PARSER"):
        parse_custom_task("speakers|text|many|How many?")


def test_follows_option_adds_follow_ups_to_the_job(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("tasks: [caption, events, transcript]\nfollows: {events: caption}\n")
    args = build_parser().parse_args(["annotate", "m.parquet", "--job", str(job), "--custom-task",
                                      "speakers|text|16|How many people speak?", "--follows", "speakers = transcript",
                                      "--follows", "transcript=caption"])
    config = job_config(args)
    assert config.follows == {"events": "caption", "speakers": "transcript", "transcript": "caption"}
    assert [t.name for t in config.custom_tasks] == ["speakers"]
    for bad in ("speakers", "=caption", "speakers="):
        with pytest.raises(ConfigError, match="TASK=EARLIER"):
            job_config(build_parser().parse_args(["annotate", "m.parquet", "--follows", bad]))
