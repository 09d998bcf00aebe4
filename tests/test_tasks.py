"""Tasks: prompts for both checkpoints, which parser each task's answer goes to, how a long file's
segments combine, and the config mistakes resolve_tasks must catch."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config import Config, ConfigError, CustomTask
from pipeline.tasks.catalog import (
    BUILTIN_TASKS,
    OUTPUT_COLUMNS,
    output_columns,
    parse,
    resolve_tasks,
)
from pipeline.tasks.merge import aggregate, aggregate_row

LABELS = Config().moderation_labels
TASKS = {t.name: t for t in resolve_tasks(Config(custom_tasks=(
    CustomTask("mood", "What is the mood of this audio?"),
    CustomTask("instruments", "Which instruments play?", parser="list"),
)))}


def run(name, raw):
    return parse(TASKS[name], raw, LABELS)


# --- prompts and resolve_tasks ---

def test_default_prompts_for_both_styles():
    assert TASKS["caption"].prompt("base") == "Generate the caption in English:"
    assert TASKS["transcript"].prompt("base") == "Detect the language and recognize the speech:"
    for task in TASKS.values():
        assert task.prompt("instruct").strip() and task.prompt("base").strip()
        assert "<|AUDIO|>" not in task.prompt("base")  # the model package adds the audio
    with pytest.raises(ValueError):
        TASKS["caption"].prompt("chat")


def test_moderation_prompts_list_the_configured_labels():
    config = Config(tasks=("moderation",), moderation_labels=("spam", "threats"))
    (task,) = resolve_tasks(config)
    for style in ("base", "instruct"):
        assert "spam, threats" in task.prompt(style)
        assert "{labels}" not in task.prompt(style)


def test_order_is_tasks_then_custom_tasks():
    assert list(TASKS) == ["caption", "events", "transcript", "moderation", "mood", "instruments"]
    assert TASKS["mood"].prompt("base") == TASKS["mood"].prompt("instruct") == "What is the mood of this audio?"
    assert TASKS["mood"].max_new_tokens == 64 and TASKS["instruments"].parser == "list"


def test_overrides_replace_prompts_for_both_styles_and_caps():
    config = Config(
        tasks=("caption", "moderation"),
        prompts={"caption": "Describe the scene:", "moderation": "Any of {labels}?"},
        max_new_tokens={"caption": 20, "mood": 9},
        custom_tasks=(CustomTask("mood", "Mood?"),),
    )
    caption, moderation, mood = resolve_tasks(config)
    assert caption.prompt("base") == caption.prompt("instruct") == "Describe the scene:"
    assert caption.max_new_tokens == 20 and mood.max_new_tokens == 9
    assert moderation.prompt("base").startswith("Any of hate speech, harassment")
    assert moderation.max_new_tokens == BUILTIN_TASKS["moderation"].max_new_tokens


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(tasks=("captions",)), "unknown task 'captions'"),
        (dict(tasks=("caption", "caption")), "more than once"),
        (dict(custom_tasks=(CustomTask("mood", "a"), CustomTask("mood", "b"))), "more than once"),
        (dict(custom_tasks=(CustomTask("events", "a"),)), "taken"),
        (dict(custom_tasks=(CustomTask("language", "a"),)), "taken"),
        (dict(custom_tasks=(CustomTask("Caption", "a"),)), "taken"),
        (dict(custom_tasks=(CustomTask("status", "a"),)), "taken"),
        (dict(tasks=("mood",), custom_tasks=(CustomTask("mood", "a"),)), "custom task"),
        (dict(prompts={"captoin": "x"}), "prompts: unknown task 'captoin'"),
        (dict(prompts={"caption": "  "}), "empty"),
        (dict(prompts={"mood": "x"}, custom_tasks=(CustomTask("mood", "a"),)), "set its prompt in custom_tasks"),
        (dict(prompts={"moderation": "Is it bad?"}), "must contain {labels}"),
        (dict(max_new_tokens={"nope": 3}), "max_new_tokens: unknown task 'nope'"),
        (dict(max_new_tokens={"caption": 0}), "at least 1"),
        (dict(moderation_labels=()), "at least one label"),
        (dict(moderation_labels=("spam", "SPAM")), "more than once"),
        (dict(moderation_labels=("spam, scams",)), "no commas"),
    ],
)
def test_config_mistakes_are_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        resolve_tasks(Config(**overrides))


def test_output_columns_follow_the_chosen_tasks():
    assert output_columns(list(TASKS.values())) == {
        **OUTPUT_COLUMNS, "mood": "string", "instruments": "list",
    }
    only = resolve_tasks(Config(tasks=("transcript",)))
    assert output_columns(only) == {"transcript": "string", "language": "string"}


# --- parse: each task's answer goes to its parser (the parsers are tested in test_parsers.py) ---

def test_parse_gives_each_builtin_task_its_parser():
    assert run("caption", "Caption: Rain falls.<|endoftext|>") == {"caption": "Rain falls."}
    assert run("events", "Speech, Dog barking") == {"events": ["speech", "dog barking"]}
    assert run("transcript", "<|en|>Hello.") == {"transcript": "Hello.", "language": "en"}
    # Generated answers have no score: moderation_scores is null (it is filled in scored mode).
    assert run("moderation", "Profanity, VIOLENCE") == {"moderation": ["violence", "profanity"],
                                                        "moderation_scores": None}


# --- custom tasks ---

def test_custom_text_keeps_the_answer():
    assert run("mood", "  Calm and relaxed.\nSlightly melancholic.<|im_end|>") == {
        "mood": "Calm and relaxed.\nSlightly melancholic."}


def test_custom_list_keeps_case_but_drops_repeats():
    assert run("instruments", "Piano, Electric Guitar, piano and drums") == {
        "instruments": ["Piano", "Electric Guitar", "drums"]}


@given(st.text())
def test_parsers_never_fail_and_give_the_column_types(raw):
    for task in TASKS.values():
        parsed = parse(task, raw, LABELS)
        columns = output_columns([task])
        assert set(parsed) == set(columns)
        for column, kind in columns.items():
            value = parsed[column]
            if column in ("language", "moderation_scores"):
                assert value is None or isinstance(value, str) and column == "language"
            elif kind == "list":
                assert isinstance(value, list) and all(isinstance(v, str) and v for v in value)
            else:
                assert isinstance(value, str)


# --- aggregation across segments ---

def test_transcripts_join_with_single_spaces():
    assert aggregate("transcript", ["Hello there.", " ", "How are you? ", None, "Bye."]) == (
        "Hello there. How are you? Bye.")


def test_language_is_the_most_frequent_with_ties_to_the_earliest():
    assert aggregate("language", ["de", "en", "en", None]) == "en"
    assert aggregate("language", [None, "fr", "de", "de", "fr"]) == "fr"
    assert aggregate("language", [None, None]) is None


def test_captions_join_distinct_sentences_in_order():
    assert aggregate("caption", ["A man speaks.", "A man speaks.", "Music plays"]) == (
        "A man speaks. Music plays.")
    assert aggregate("caption", ["A man speaks.", "a man speaks"]) == "A man speaks."
    assert aggregate("caption", ["Rain falls"]) == "Rain falls"
    assert aggregate("caption", ["", None]) == ""


def test_lists_are_unions_in_first_seen_order():
    assert aggregate("events", [["speech", "music"], ["music", "applause"], []]) == ["speech", "music", "applause"]
    assert aggregate("moderation", [["profanity"], [], ["violence", "profanity"]]) == ["profanity", "violence"]
    assert aggregate("instruments", [["Piano"], ["piano", "Drums"]], kind="list") == ["Piano", "Drums"]


def test_custom_text_joins_with_newlines_and_needs_a_kind():
    assert aggregate("mood", ["Calm.", "", "Tense."], kind="string") == "Calm.\nTense."
    with pytest.raises(ValueError, match="kind"):
        aggregate("mood", ["Calm."])


def test_aggregate_row_combines_every_column():
    columns = output_columns([TASKS["transcript"], TASKS["events"], TASKS["mood"]])
    segments = [
        run("transcript", "<|en|>First part.") | run("events", "speech") | run("mood", "Calm."),
        run("transcript", "<|en|>second part.") | run("events", "speech, music") | run("mood", "Tense."),
    ]
    assert aggregate_row(segments, columns) == {
        "transcript": "First part. second part.", "language": "en",
        "events": ["speech", "music"], "mood": "Calm.\nTense.",
    }


def test_a_single_segment_aggregates_to_itself():
    for task in TASKS.values():
        parsed = parse(task, "Speech, music.", LABELS)
        for column, kind in output_columns([task]).items():
            assert aggregate(column, [parsed[column]], kind) == parsed[column]
