"""Parsers on realistic and messy model answers: captions, sound-event tags, transcripts with
their language, and moderation labels."""

import pytest

from pipeline.config import Config
from pipeline.tasks.parsers import parse_caption, parse_moderation, parse_transcript, split_list

LABELS = Config().moderation_labels


# --- caption ---

@pytest.mark.parametrize("raw, caption", [
    ("A dog barks repeatedly while cars pass by.<|endoftext|>", "A dog barks repeatedly while cars pass by."),
    ('  Caption: "Rain falls on a tin roof."  ', "Rain falls on a tin roof."),
    ("A man speaks\n  while music plays.<|im_end|>", "A man speaks while music plays."),
    ("", ""),
])
def test_caption(raw, caption):
    assert parse_caption(raw) == {"caption": caption}


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
    ("No sound.", []),
    ("speech, n/a, etc", ["speech"]),
    ("", []),
    (" , ;\n", []),
])
def test_events(raw, events):
    assert split_list(raw, tags=True) == events


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
    assert parse_transcript(raw) == {"transcript": transcript, "language": language}


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
    # A verdict per label, in any order and punctuation: the verdict decides, not the mention.
    ("hate speech: no, violence: no", []),
    ("Violence: yes. Hate speech: no.", ["violence"]),
    ("Hate speech: No\nViolence: Yes\nProfanity: No", ["violence"]),
    ("- Hate speech: no\n- Harassment: no\n- Violence: no\n- Sexual content: no\n- Self-harm: no\n- Profanity: no", []),
    ("1. Violence - yes 2. Profanity - no", ["violence"]),
    ("Violence (no), hate speech (yes)", ["hate speech"]),
    ("**Violence**: Not present. **Profanity**: Present.", ["profanity"]),
    ("violence=false, hate_speech=true", ["hate speech"]),
    ('{"violence": false, "hate speech": false, "profanity": true}', ["profanity"]),
    ("| violence | no |\n| profanity | yes |", ["profanity"]),
    ("Is there hate speech? No. Violence? Yes.", ["violence"]),
    ("Hate speech is not present; violence is present.", ["violence"]),
    ("Self-harm: no", []),  # "harm" inside the verdict on self-harm is not a mention either
    ("violence: no, profanity", ["profanity"]),  # a verdict does not negate the next item
    ("Violence: yes, a man threatens someone. Violence: no.", ["violence"]),  # any yes counts
    ("Violence: a gunshot and screaming", ["violence"]),  # not a verdict: the mention counts
    ("Violence: 0.9", ["violence"]),  # a score is not the verdict 0
    # Lists and denials.
    ("Violence, hate speech.", ["hate speech", "violence"]),
    ("Categories: violence, profanity", ["violence", "profanity"]),
    ("None of these.", []),
    ("None of the above", []),
    ("No, it doesn\u2019t contain hate speech.", []),
    ("Neither violence nor hate speech.", []),
    ("The speech contains violence, not hate speech.", ["violence"]),
    ("There is no violence, but there is hate speech and profanity.", ["hate speech", "profanity"]),
    ("Free of violence and harassment.", []),
])
def test_moderation(raw, labels):
    assert parse_moderation(raw, LABELS) == {"moderation": labels}
