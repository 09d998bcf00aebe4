"""Tasks: what the model is asked about each clip and how its answers become output columns
(pipeline.tasks.merge combines a long file's segments).

Built-in tasks and the columns they fill:
    caption     -> caption (string)      one sentence describing the audio
    events      -> events (list)         lowercase sound-event tags
    transcript  -> transcript (string), language (string or null: ISO 639-1 code)
    moderation  -> moderation (list)     labels from the configured list only, and
                   moderation_scores (map label -> P(yes); null unless moderation_mode is scored)
Custom tasks (config.custom_tasks) fill one column named after the task: a string ("text") or a
list ("list"). parse picks the parser (pipeline.tasks.parsers) for a task; parsers never raise: any
text gives a value of the column's type.

Any task may follow another (`follows`): its question is then the next user turn of the same
conversation, after the other task's answer, and may be skipped by a rule on an earlier answer
(`when`, tasks/conditions.py). Its column is its own, as for any task.

With `moderation_mode: scored` the moderation task becomes one task per label, named
`moderation:LABEL`, each a yes/no question with a one-token cap (parser "moderation_score"); they
share the clip's prefix like any tasks, and together fill the moderation columns
(tasks/scoring.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from pipeline.config import Config, ConfigError
from pipeline.tasks.conditions import Condition, RuleError
from pipeline.tasks.scoring import BASE_QUESTION, INSTRUCT_QUESTION, LABEL_PLACEHOLDER, SCORED_PARSER, task_name
from pipeline.tasks.parsers import (
    parse_caption,
    parse_moderation,
    parse_transcript,
    split_list,
    strip_tokens,
)

STYLES = ("base", "instruct")
LABELS_PLACEHOLDER = "{labels}"


@dataclass(frozen=True)
class Task:
    name: str
    base_prompt: str  # text right after <|audio_bos|><|AUDIO|><|audio_eos|> (base checkpoint)
    instruct_prompt: str  # the user's question inside the chat template (instruct checkpoint)
    max_new_tokens: int
    parser: str  # "caption" | "events" | "transcript" | "moderation" | "moderation_score" | "text" | "list"
    follows: str | None = None  # the task whose answer it follows in the same conversation
    when: Condition | None = None  # whether it is asked, from an earlier answer (follow-ups only)
    label: str | None = None  # a scored moderation question: the label it asks about
    threshold: float | None = None  # and the P(yes) from which the label is flagged

    def prompt(self, style: str) -> str:
        if style not in STYLES:
            raise ValueError(f"prompt style must be one of {STYLES}, got {style!r}")
        return self.base_prompt if style == "base" else self.instruct_prompt


# Base prompts follow Qwen2-Audio's pre-training phrasing ("<task> in English:"); instruct prompts
# ask for a bare answer in the shape the parser expects, because the chat model otherwise wraps
# answers in sentences. The transcript cap covers 30 s of fast speech (~130 tokens) with room for
# the language tag and for scripts that take more tokens per word.
BUILTIN_TASKS: dict[str, Task] = {
    "caption": Task(
        "caption",
        "Generate the caption in English:",
        "Describe what you hear in this audio in one English sentence.",
        64, "caption"),
    "events": Task(
        "events",
        "Detect the sound events in the audio and list them in English, separated by commas:",
        "List the sound events you hear in this audio as short English tags separated by commas, "
        "for example: speech, dog barking. Answer with the tags only.",
        48, "events"),
    "transcript": Task(
        "transcript",
        "Detect the language and recognize the speech:",
        "Detect the language of the speech in this audio and transcribe it word for word. Answer as "
        "the two-letter language code, a colon and the transcript, for example: en: good morning. "
        "If nobody speaks, answer: no speech.",
        192, "transcript"),
    "moderation": Task(
        "moderation",
        f"Classify the speech into these categories: {LABELS_PLACEHOLDER}. Matching categories "
        "separated by commas, or none:",
        f"Does the speech in this audio contain any of these: {LABELS_PLACEHOLDER}? Answer only "
        "with the matching categories from that list, separated by commas, or none.",
        32, "moderation"),
}
OUTPUT_COLUMNS: dict[str, str] = {
    "caption": "string", "events": "list", "transcript": "string", "language": "string",
    "moderation": "list", "moderation_scores": "scores",
}
_COLUMNS_BY_PARSER = {
    "caption": ("caption",), "events": ("events",), "transcript": ("transcript", "language"),
    "moderation": ("moderation", "moderation_scores"), SCORED_PARSER: ("moderation", "moderation_scores"),
}
# Columns every output row has besides the annotations (the manifest's own and the run's); a
# custom task must not shadow them.
RESERVED_COLUMNS = frozenset({
    "id", "audio", "path", "duration_s", "row", "segment", "segments", "n_segments", "start_s",
    "end_s", "status", "error", "error_detail", "silent", "raw", "skipped", "manifest_language", "manifest_duration_s",
    # What the model says about each answer (output/answer_columns.py).
    "logprob", "logprob_sum", "answer_tokens", "hit_cap", "looped", "retried",
})


def _check_names(config: Config) -> None:
    custom_names = [t.name for t in config.custom_tasks]
    # Compared case-insensitively: some Parquet readers fold column names.
    taken = {n.casefold() for n in (*BUILTIN_TASKS, *OUTPUT_COLUMNS, *RESERVED_COLUMNS)}
    for name in custom_names:
        if name.casefold() in taken:
            raise ConfigError(f"custom_tasks: the name '{name}' is taken by a built-in task or output column")
    for name in config.tasks:
        if name in custom_names:
            raise ConfigError(f"tasks: '{name}' is a custom task; custom tasks always run, leave it out of 'tasks'")
        if name not in BUILTIN_TASKS:
            raise ConfigError(
                f"tasks: unknown task '{name}'; built-in tasks are {sorted(BUILTIN_TASKS)} "
                "(define anything else under custom_tasks)"
            )
    for names, key in ((list(config.tasks), "tasks"), (custom_names, "custom_tasks")):
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"{key}: {repeated} listed more than once")
    for key, mapping in (("prompts", config.prompts), ("max_new_tokens", config.max_new_tokens)):
        for name in mapping:
            if key == "prompts" and name in custom_names:
                raise ConfigError(f"prompts: '{name}' is a custom task; set its prompt in custom_tasks")
            if name not in BUILTIN_TASKS and name not in custom_names:
                raise ConfigError(f"{key}: unknown task '{name}'")


def _labels_text(labels: Sequence[str]) -> str:
    seen = set()
    for label in labels:
        if not label.strip() or re.search(r"[,;\n]", label):
            raise ConfigError(f"moderation_labels: {label!r} must be non-empty with no commas, semicolons or newlines")
        if label.casefold() in seen:
            raise ConfigError(f"moderation_labels: {label!r} listed more than once")
        seen.add(label.casefold())
    if not labels:
        raise ConfigError("moderation_labels: the moderation task needs at least one label")
    return ", ".join(labels)


def _scored_questions(config: Config) -> list[Task]:
    """moderation_mode scored: one yes/no task per label, capped at one token (only the first
    token's distribution is read). A prompt override for moderation names the label as {label}."""
    base, instruct = BASE_QUESTION, INSTRUCT_QUESTION
    if "moderation" in config.prompts:
        base = instruct = config.prompts["moderation"]
        if LABEL_PLACEHOLDER not in base:
            raise ConfigError("prompts: with moderation_mode scored the moderation prompt asks about one label and "
                              "must contain {label}")
    if "moderation" in config.max_new_tokens:
        raise ConfigError("max_new_tokens: moderation_mode scored reads one token per label; leave out its cap")
    for key, mapping in (("follows", config.follows), ("when", config.when)):
        if "moderation" in mapping or "moderation" in mapping.values():
            raise ConfigError(f"{key}: scored moderation questions cannot be part of a conversation")
    thresholds = {label.casefold(): value for label, value in config.moderation_thresholds.items()}
    return [Task(task_name(label), base.replace(LABEL_PLACEHOLDER, label), instruct.replace(LABEL_PLACEHOLDER, label),
                 1, SCORED_PARSER, label=label,
                 threshold=thresholds.get(label.casefold(), config.moderation_threshold))
            for label in config.moderation_labels]


def resolve_tasks(config: Config) -> list[Task]:
    """The tasks to run, in order: config.tasks, then config.custom_tasks.

    config.prompts replaces a built-in task's question for both prompt styles (a moderation
    prompt must contain {labels}, which becomes the configured labels); config.max_new_tokens
    replaces any task's cap. Unknown names, repeats and clashing custom names are ConfigErrors.
    """
    _check_names(config)
    for name, prompt in config.prompts.items():
        if not prompt.strip():
            raise ConfigError(f"prompts: the prompt for '{name}' is empty")
    for name, cap in config.max_new_tokens.items():
        if cap < 1:
            raise ConfigError(f"max_new_tokens: '{name}' needs at least 1 token, got {cap}")

    tasks = []
    for name in config.tasks:
        builtin = BUILTIN_TASKS[name]
        base, instruct = builtin.base_prompt, builtin.instruct_prompt
        if name in config.prompts:
            base = instruct = config.prompts[name]
        if name == "moderation" and config.moderation_mode == "scored":
            _labels_text(config.moderation_labels)
            tasks += _scored_questions(config)
            continue
        if name == "moderation":
            if LABELS_PLACEHOLDER not in base:
                raise ConfigError("prompts: the moderation prompt must contain {labels}, where the labels go")
            labels = _labels_text(config.moderation_labels)
            base, instruct = base.replace(LABELS_PLACEHOLDER, labels), instruct.replace(LABELS_PLACEHOLDER, labels)
        cap = config.max_new_tokens.get(name, builtin.max_new_tokens)
        tasks.append(Task(name, base, instruct, cap, builtin.parser))
    for custom in config.custom_tasks:
        cap = config.max_new_tokens.get(custom.name, custom.max_new_tokens)
        tasks.append(Task(custom.name, custom.prompt, custom.prompt, cap, custom.parser))
    return _with_follow_ups(config, tasks)


def _with_follow_ups(config: Config, tasks: list[Task]) -> list[Task]:
    """Each task's `follows` and `when` (job keys `follows` and `when`, or a custom task's own),
    checked: every name a task of this run, no cycle, `when` only on a follow-up, `task` an earlier
    turn of its conversation. The prompt style is checked with the checkpoint (model_plan)."""
    names = [t.name for t in tasks]
    follows, when = dict(config.follows), dict(config.when)
    for custom in config.custom_tasks:
        for key, value, mapping in (("follows", custom.follows, follows), ("when", custom.when, when)):
            if value is not None:
                if custom.name in mapping:
                    raise ConfigError(f"{key}: custom task '{custom.name}' sets it in custom_tasks and in '{key}'")
                mapping[custom.name] = value
    for key, mapping in (("follows", follows), ("when", when)):
        for name in mapping:
            if name not in names:
                raise ConfigError(f"{key}: '{name}' is not a task of this run (tasks: {names})")
    for name, parent in follows.items():
        if parent not in names:
            raise ConfigError(f"follows: '{name}' follows '{parent}', which is not a task of this run (tasks: {names})")
    for name in follows:
        chain = [name]
        while chain[-1] in follows:
            chain.append(follows[chain[-1]])
            if chain[-1] in chain[:-1]:
                cycle = chain[chain.index(chain[-1]):]
                raise ConfigError(f"follows: '{name}' is in a cycle: {' -> '.join(cycle)} (each task must start "
                                  "from a first question)")
    rules = {}
    for name, value in when.items():
        if name not in follows:
            raise ConfigError(f"when: '{name}' follows no task; a rule decides whether a follow-up is asked")
        try:
            rule = Condition.parse(value)
        except RuleError as exc:
            raise ConfigError(f"when: '{name}': {exc}") from None
        earlier = []
        at = name
        while at in follows:
            at = follows[at]
            earlier.append(at)
        if rule.task is not None and rule.task not in earlier:
            raise ConfigError(f"when: '{name}' reads '{rule.task}', which is not an earlier turn of its conversation "
                              f"({' -> '.join(reversed([name, *earlier]))})")
        rules[name] = rule
    return [replace(t, follows=follows.get(t.name), when=rules.get(t.name)) for t in tasks]


def follow_up_settings(tasks: Sequence[Task]) -> dict:
    """What run.json and the settings fingerprint record of the conversations: {task: {follows,
    when}} for each follow-up; {} when there are none."""
    return {t.name: {"follows": t.follows, "when": t.when.to_dict() if t.when else None}
            for t in tasks if t.follows}


def output_columns(tasks: Sequence[Task]) -> dict[str, str]:
    """Column name -> "string" | "list" | "scores" for the columns these tasks fill, in task order."""
    columns: dict[str, str] = {}
    for task in tasks:
        if task.parser in _COLUMNS_BY_PARSER:
            columns.update({c: OUTPUT_COLUMNS[c] for c in _COLUMNS_BY_PARSER[task.parser]})
        else:
            columns[task.name] = "list" if task.parser == "list" else "string"
    return columns


# --- parsing -------------------------------------------------------------------------------------

def parse(task: Task, raw: str, moderation_labels: Sequence[str] = ()) -> dict[str, object]:
    """The output columns one task's raw answer fills (see output_columns)."""
    if task.parser == "caption":
        return parse_caption(raw)
    if task.parser == "events":
        return {"events": split_list(raw, tags=True)}
    if task.parser == "transcript":
        return parse_transcript(raw)
    if task.parser == "moderation":
        return {**parse_moderation(raw, moderation_labels), "moderation_scores": None}
    if task.parser == "list":
        return {task.name: split_list(raw, tags=False)}
    return {task.name: strip_tokens(raw).strip()}
