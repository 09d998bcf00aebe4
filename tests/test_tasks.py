"""Tasks: prompts for both checkpoints, parsers on realistic and messy answers, how a long file's
segments combine, and the config mistakes resolve_tasks must catch."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config import Config, ConfigError, CustomTask
from pipeline.tasks import (
    BUILTIN_TASKS,
    OUTPUT_COLUMNS,
    aggregate,
    aggregate_row,
    output_columns,
    parse,
    resolve_tasks,
)

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


# --- caption ---

@pytest.mark.parametrize("raw, caption", [
    ("A dog barks repeatedly while cars pass by.<|endoftext|>", "A dog barks repeatedly while cars pass by."),
    ('  Caption: "Rain falls on a tin roof."  ', "Rain falls on a tin roof."),
    ("A man speaks\n  while music plays.<|im_end|>", "A man speaks while music plays."),
    ("", ""),
])
def test_caption(raw, caption):
    assert run("caption", raw) == {"caption": caption}


# --- events ---

@pytest.mark.parametrize("raw, events", [
    ("speech, music, dog barking", ["speech", "music", "dog barking"]),
    ("Speech; Music; Speech.", ["speech", "music"]),
    ("1. Speech\n2) Dog barking\n3. Car horn honking.", ["speech", "dog barking", "car horn honking"]),
    ("- Rain\n* Thunder\n\u2022 Wind", ["rain", "thunder", "wind"]),
    ('Sound events: "Speech", "Laughter"', ["speech", "laughter"]),
    ('["speech", "music"]', ["speech", "music"]),
    ("The audio contains a man speaking and birds chirping.", ["man speaking", "birds chirping"]),
    ("Speech, music, and applause!<|endoftext|>", ["speech", "music", "applause"]),
    ("None", []),
    ("none.", []),
    ("", []),
    (" , ;\n", []),
])
def test_events(raw, events):
    assert run("events", raw) == {"events": events}


# --- transcript ---

@pytest.mark.parametrize("raw, transcript, language", [
    ("<|en|>Hello there, how are you?<|endoftext|>", "Hello there, how are you?", "en"),
    ("<|zh|>今天天气很好。", "今天天气很好。", "zh"),
    ("  <|de|> Guten <|notimestamps|>Morgen.", "Guten Morgen.", "de"),
    ("en: good morning everyone", "good morning everyone", "en"),
    ("Language: English\nTranscript: \"Turn left at the lights.\"", "Turn left at the lights.", "en"),
    ("Spanish: hola a todos", "hola a todos", "es"),
    ("language: fr. Bonjour.", "Bonjour.", "fr"),
    ('The original content of this audio is: "I will be there at noon."', "I will be there at noon.", None),
    ("It: was a dark night", "It: was a dark night", None),  # a capitalised word, not Italian
    ("en: no speech", "", None),
    ("[No speech]", "", None),
    ("Just words, no tag.", "Just words, no tag.", None),
    ("", "", None),
    ("<|en|>", "", "en"),
])
def test_transcript(raw, transcript, language):
    assert run("transcript", raw) == {"transcript": transcript, "language": language}


# --- moderation ---

@pytest.mark.parametrize("raw, labels", [
    ("violence, profanity", ["violence", "profanity"]),
    ("Profanity, VIOLENCE.", ["violence", "profanity"]),  # configured order, any case
    ("None", []),
    ("no.", []),
    ("Clean", []),
    ("N/A", []),
    ("self harm", ["self-harm"]),
    ("Self-Harm; hate_speech", ["hate speech", "self-harm"]),
    ("The speech contains harassment and profanity.", ["harassment", "profanity"]),
    ("There is no hate speech, but there is profanity.", ["profanity"]),
    ("No, the speech does not contain any of these categories.", []),
    ("It contains no hate speech, violence or harassment.", []),
    ("non-violence advocacy", []),
    ("violent", []),  # whole phrases only
    ("spam, fraud", []),  # labels that are not configured are dropped
    ("violence<|im_end|>", ["violence"]),
])
def test_moderation(raw, labels):
    assert run("moderation", raw) == {"moderation": labels}


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
            if column == "language":
                assert value is None or isinstance(value, str)
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
