"""Follow-up questions in a job: `follows` on built-in and custom tasks, `when` rules, and the
configuration mistakes that must stop a run (exit 2) naming the task; rows of a long file, each
segment its own conversation, in the final table."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, from_mapping, load
from pipeline.output.tables import _skipped
from pipeline.tasks.catalog import follow_up_settings, resolve_tasks
from pipeline.tasks.conditions import Condition, RuleError

REPO = Path(__file__).resolve().parents[1]


def tasks(**job):
    return {t.name: t for t in resolve_tasks(from_mapping(job))}


def test_built_in_and_custom_tasks_follow_in_chains_and_branches():
    found = tasks(tasks=["caption", "events", "transcript"], follows={"transcript": "caption", "events": "caption"},
                  when={"transcript": {"contains": "speech", "task": "caption"}},
                  custom_tasks=[{"name": "mood", "prompt": "What mood?", "follows": "transcript",
                                 "when": {"matches": r"\bhappy"}}])
    assert found["caption"].follows is None and found["caption"].when is None
    assert found["events"].follows == found["transcript"].follows == "caption"  # a branch
    assert found["mood"].follows == "transcript"  # a 3-turn chain
    assert found["mood"].when == Condition(matches=r"\bhappy")
    assert follow_up_settings(found.values()) == {
        "events": {"follows": "caption", "when": None},
        "transcript": {"follows": "caption", "when": {"contains": ["speech"], "task": "caption"}},
        "mood": {"follows": "transcript", "when": {"matches": r"\bhappy"}},
    }
    assert follow_up_settings(tasks(tasks=["caption"]).values()) == {}  # no key: fingerprints unchanged


@pytest.mark.parametrize("job, message", [
    ({"follows": {"caption": "caption"}}, "'caption' is in a cycle: caption -> caption"),
    ({"tasks": ["caption", "events"], "follows": {"caption": "events", "events": "caption"}},
     "'caption' is in a cycle: caption -> events -> caption"),
    ({"tasks": ["caption"], "custom_tasks": [{"name": "a", "prompt": "?", "follows": "b"},
                                             {"name": "b", "prompt": "?", "follows": "a"}]},
     "'a' is in a cycle: a -> b -> a"),
    ({"tasks": ["caption"], "follows": {"caption": "events"}}, "'caption' follows 'events', which is not a task"),
    ({"tasks": ["caption"], "follows": {"speech": "caption"}}, "'speech' is not a task of this run"),
    ({"tasks": ["caption"], "custom_tasks": [{"name": "x", "prompt": "?", "follows": "captoin"}]},
     "'x' follows 'captoin', which is not a task"),
    ({"tasks": ["caption"], "when": {"caption": {"contains": "speech"}}}, "when: 'caption' follows no task"),
    ({"tasks": ["caption", "events"], "follows": {"events": "caption"}, "when": {"events": {"contains": []}}},
     "'events': 'contains' takes a tag"),
    ({"tasks": ["caption", "events"], "follows": {"events": "caption"}, "when": {"events": {"matches": "(a"}}},
     "'events': 'matches': '(a' is not a regular expression"),
    ({"tasks": ["caption", "events"], "follows": {"events": "caption"}, "when": {"events": {"speech": "yes"}}},
     "'events': unknown key(s) ['speech']"),
    ({"tasks": ["caption", "events", "transcript"], "follows": {"events": "caption"},
      "when": {"events": {"task": "transcript", "contains": "x"}}}, "'events' reads 'transcript', which is not an earlier"),
    ({"tasks": ["caption"], "custom_tasks": [{"name": "x", "prompt": "?", "follows": "caption"}],
      "follows": {"x": "caption"}}, "custom task 'x' sets it in custom_tasks and in 'follows'"),
])
def test_mistakes_name_the_task(job, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        resolve_tasks(from_mapping(job))


def test_rules_read_tags_or_patterns():
    speech = Condition.parse({"contains": ["Speech", "singing"]})
    assert speech.unmet("events", "speech, dog barking") is None
    assert speech.unmet("events", "- Singing\n- piano") is None
    assert speech.unmet("events", "male speech, music") == "when: events lists speech or singing: no"
    music = Condition.parse({"matches": r"\bmusic", "task": "caption"})
    assert music.task == "caption" and music.unmet("caption", "Music plays.<|im_end|>") is None
    assert music.unmet("caption", "A dog barks; musical.") is None and music.unmet("caption", "A dog.") is not None
    with pytest.raises(RuleError, match="exactly one of"):
        Condition.parse({"contains": "a", "matches": "b"})


def test_a_long_rows_skipped_follow_ups_say_how_many_segments_skipped_them():
    segments = [{"speech": "when: caption matches 'talk': no"}, {}, {"speech": "when: caption matches 'talk': no"}]
    assert _skipped(segments, ["caption", "speech"]) == [("speech", "in 2 of 3 segments: when: caption matches 'talk': no")]
    assert _skipped(segments[:1], ["caption", "speech"]) == [("speech", "when: caption matches 'talk': no")]


def test_the_example_chain_job_loads():
    config = load(REPO / "jobs" / "audio-captions-chain.yaml")
    found = tasks(**{k: v for k, v in yaml.safe_load((REPO / "jobs" / "audio-captions-chain.yaml").read_text()).items()})
    chain = [name for name, task in found.items() if task.follows]
    assert chain == ["speech", "music"] and found["music"].when.task == "caption" and config.tasks == ("caption",)


def command(*args):
    return subprocess.run([sys.executable, "-m", "pipeline", "annotate", *map(str, args)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)


def test_configuration_errors_exit_2_naming_the_task(checkpoint_dir, tmp_path):
    from tests.jobs.conftest import write_clip, write_manifest

    write_clip(tmp_path / "a.wav", 1.0)
    manifest = write_manifest(tmp_path / "m.parquet", {"a": "a.wav"})
    cycle = tmp_path / "cycle.yaml"
    cycle.write_text(yaml.safe_dump({"tasks": ["caption", "events"], "follows": {"caption": "events",
                                                                                 "events": "caption"}}))
    result = command(manifest, "--job", cycle, "--dry-run")
    assert result.returncode == 2 and "'caption' is in a cycle: caption -> events -> caption" in result.stderr
    # Base-style prompts have no conversation to continue: known once the checkpoint is read.
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"model": str(checkpoint_dir("odd-base")), "tasks": ["caption"],
                                    "custom_tasks": [{"name": "more", "prompt": "More?", "follows": "caption"}]}))
    result = command(manifest, "--job", base, "--dry-run")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "'more' follows 'caption', but the prompt style is base" in result.stderr


def test_a_looping_answer_has_its_whole_conversation_generated_again():
    """retry_degenerate: the retry asks for the looping answer's conversation (its first question
    and every follow-up of it), never another conversation of the clip."""
    import numpy as np

    from pipeline.items import Item
    from pipeline.model.decoding import Decoding, ResolvedDecoding
    from pipeline.model.interface import Answer, BatchOutput
    from pipeline.run.worker import BatchAnnotator, PreparedBatch, ReadyClip

    found = tasks(tasks=["caption", "events"], custom_tasks=[
        {"name": "detail", "prompt": "More?", "follows": "caption"},
        {"name": "why", "prompt": "Why?", "follows": "detail", "when": {"contains": "never"}}])
    asked = []

    class Model:
        """First: detail (2) loops and why (3) is skipped; the retry: every task asked answers."""

        def generate(self, clips):
            asked.append([c.tasks for c in clips])
            if clips[0].attempt == 0:
                return BatchOutput([["words", "words", "la la", None]], skipped=[{3: "when: detail lists never: no"}],
                                   answers=[[Answer(1, True, -1.0), Answer(1, True, -1.0), Answer(2, False, -1.0, True),
                                             None]])
            n = len(clips[0].tasks)
            return BatchOutput([["again"] * n], answers=[[Answer(1, True, -1.0)] * n], skipped=[{}])

    decoding = ResolvedDecoding(Decoding(), {}, retry=Decoding(repetition_penalty=1.2),
                                retry_changes={"repetition_penalty": 1.2})
    item = Item(id="a", path="a.wav", row=0, segment=0, n_segments=1, start_s=0.0, end_s=1.0)
    prepared = PreparedBatch(batch=None, ready=[ReadyClip(item, np.zeros((128, 10), np.float32), 8, 0.0, 1.0, False)])
    [result], _ = BatchAnnotator(Model(), list(found.values()), (), decoding).run(prepared)
    assert asked == [[None], [(0, 2, 3)]]  # caption, detail, why: not events
    assert result.retried == {"caption": "repetition_penalty=1.2", "detail": "repetition_penalty=1.2",
                              "why": "repetition_penalty=1.2"}
    assert result.raw == {"caption": "again", "events": "words", "detail": "again", "why": "again"}
    assert result.skipped == {}
