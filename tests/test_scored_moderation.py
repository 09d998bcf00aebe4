"""moderation_mode scored: job keys, the per-label questions, thresholds and how scores combine
(the scores themselves against the reference: tests/model/test_scored.py)."""

import numpy as np
import pyarrow as pa
import pytest

from pipeline.config import ConfigError, from_mapping
from pipeline.items import Batch, Item
from pipeline.model.interface import Answer, BatchOutput
from pipeline.output.sink import column_type
from pipeline.run.worker import BatchAnnotator, PreparedBatch, ReadyClip
from pipeline.tasks.catalog import output_columns, resolve_tasks
from pipeline.tasks.merge import aggregate_row

LABELS = ["hate speech", "violence", "profanity"]


def scored(**keys):
    return from_mapping({"tasks": ["caption", "moderation"], "moderation_labels": LABELS,
                         "moderation_mode": "scored", **keys}, source="job")


def test_one_yes_no_question_per_label_with_its_threshold():
    tasks = resolve_tasks(scored(moderation_thresholds={"Violence": 0.8}, moderation_threshold=0.4))
    assert [t.name for t in tasks] == ["caption", "moderation:hate speech", "moderation:violence",
                                       "moderation:profanity"]
    questions = tasks[1:]
    assert [t.threshold for t in questions] == [0.4, 0.8, 0.4]
    assert all(t.max_new_tokens == 1 and t.label in t.prompt("instruct") and t.label in t.prompt("base")
               and "yes or no" in t.prompt("instruct") for t in questions)
    assert output_columns(tasks) == {"caption": "string", "moderation": "list", "moderation_scores": "scores"}
    assert column_type("scores") == pa.map_(pa.string(), pa.float64())
    custom = resolve_tasks(scored(prompts={"moderation": "Is there {label} here?"}))
    assert custom[2].prompt("instruct") == "Is there violence here?"


def test_generated_is_the_default_and_lists_the_labels_in_one_question():
    tasks = resolve_tasks(from_mapping({"tasks": ["moderation"], "moderation_labels": LABELS}, source="job"))
    assert [t.name for t in tasks] == ["moderation"] and tasks[0].max_new_tokens == 32


@pytest.mark.parametrize("keys, message", [
    ({"moderation_mode": "scores"}, "'moderation_mode' must be one of ('generated', 'scored')"),
    ({"moderation_thresholds": {"spam": 0.5}}, "names ['spam'], which are not in moderation_labels"),
    ({"moderation_thresholds": {"violence": 1.5}}, "threshold for 'violence' must be in [0, 1]"),
    ({"moderation_threshold": -0.1}, "threshold for 'moderation_threshold' must be in [0, 1]"),
    ({"moderation_thresholds": {"violence": "high"}}, "'moderation_thresholds.violence' must be float"),
    ({"moderation_mode": "generated", "moderation_thresholds": {"violence": 0.5}}, "needs moderation_mode: scored"),
])
def test_job_keys_that_cannot_be_used(keys, message):
    with pytest.raises(ConfigError) as caught:
        scored(**keys)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("keys, message", [
    ({"prompts": {"moderation": "Any of {labels}?"}}, "must contain {label}"),
    ({"max_new_tokens": {"moderation": 4}}, "reads one token per label"),
    ({"follows": {"moderation": "caption"}}, "cannot be part of a conversation"),
    ({"moderation_labels": []}, "needs at least one label"),
])
def test_tasks_that_cannot_be_scored(keys, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        resolve_tasks(scored(**keys))


class ScoringModel:
    """Answers every question with one token and the scores it is given, per clip key."""

    graphs_compiled = 0

    def __init__(self, scores):
        self.scores = scores

    def generate(self, clips):
        texts, answers = [], []
        for clip in clips:
            texts.append(["Caption: A dog barks."] + [" yes" if p > 0.5 else " no" for p in self.scores[clip.key]])
            answers.append([Answer(3, True, -1.0)] + [Answer(1, False, -0.5, p_yes=p) for p in self.scores[clip.key]])
        return BatchOutput(texts, answers=answers)


def test_labels_at_or_over_their_threshold_are_flagged():
    tasks = resolve_tasks(scored(moderation_thresholds={"violence": 0.8}))
    model = ScoringModel({"a#0": [0.5, 0.79, 0.2], "b#0": [0.49, 0.8, 0.99]})
    items = [Item(row, key, f"{key}.wav", 0, 1, 0.0, 1.0) for row, key in enumerate(("a", "b"))]
    ready = [ReadyClip(item, np.zeros((128, 10), np.float32), 8, 0.0, 1.0, False) for item in items]
    results, _ = BatchAnnotator(model, tasks, LABELS).run(PreparedBatch(Batch(tuple(items)), ready))
    parsed = {r.item.id: r.parsed for r in results}
    assert parsed["a"] == {"caption": "A dog barks.", "moderation": ["hate speech"],
                           "moderation_scores": [("hate speech", 0.5), ("violence", 0.79), ("profanity", 0.2)]}
    assert parsed["b"]["moderation"] == ["violence", "profanity"]
    assert set(results[0].answers) == {t.name for t in tasks}


def test_a_file_takes_each_labels_highest_score_over_its_segments():
    columns = {"moderation": "list", "moderation_scores": "scores"}
    segments = [{"moderation": [], "moderation_scores": [("violence", 0.2), ("spam", 0.1)]},
                {"moderation": ["violence"], "moderation_scores": {"violence": 0.9, "spam": 0.05}},
                {"moderation": None, "moderation_scores": None}]
    assert aggregate_row(segments, columns) == {"moderation": ["violence"],
                                                "moderation_scores": [("violence", 0.9), ("spam", 0.1)]}
    generated = [{"moderation": ["violence"], "moderation_scores": None}] * 2
    assert aggregate_row(generated, columns) == {"moderation": ["violence"], "moderation_scores": None}
