"""Parsers: turn a model's raw answer into column values.

Answers come from two checkpoints that phrase the same thing differently (the base checkpoint's
special tags, the instruct checkpoint's sentences, bullets and quotes), so each parser accepts the
shapes seen in practice. Parsers never raise: any text, even empty or garbled, gives a value of the
column's type (see tasks.OUTPUT_COLUMNS), so one odd answer cannot fail its batch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_SPECIAL_TOKEN = re.compile(r"<\|[^|<>]*\|>")
_QUOTES = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb"
_LANGUAGE_NAMES = {
    "english": "en", "chinese": "zh", "mandarin": "zh", "cantonese": "zh", "spanish": "es",
    "french": "fr", "german": "de", "italian": "it", "portuguese": "pt", "russian": "ru",
    "japanese": "ja", "korean": "ko", "arabic": "ar", "hindi": "hi", "dutch": "nl", "turkish": "tr",
    "vietnamese": "vi", "indonesian": "id", "thai": "th", "polish": "pl", "ukrainian": "uk",
}
_LANGUAGE_CODES = frozenset(_LANGUAGE_NAMES.values())
_NAMES_PATTERN = "|".join(_LANGUAGE_NAMES)
_LANGUAGE_PREFIXES = (
    re.compile(r"language\s*[:=]\s*([a-z]+)\b[\s.,;:]*", re.IGNORECASE),
    re.compile(rf"({'|'.join(sorted(_LANGUAGE_CODES))})\s*:\s*"),  # lowercase only: not "It: ..."
    re.compile(rf"({_NAMES_PATTERN})\s*:\s*", re.IGNORECASE),
)
_TRANSCRIPT_LABEL = re.compile(
    r"(?:the\s+)?(?:original\s+)?(?:content|transcript(?:ion)?|text)"
    r"(?:\s+of\s+(?:this|the)\s+(?:audio|speech|recording))?(?:\s+is)?\s*:\s*", re.IGNORECASE)
_NO_SPEECH = re.compile(r"[\W_]*(?:no speech|there is no speech|no one speaks|nobody speaks)[\W_]*", re.IGNORECASE)
_NEGATION = re.compile(r"\b(?:no|not|non|none|without|never|neither|nor|free of)\b|n't\b")
_CLAUSE_BREAK = re.compile(r"[.;:!?\n]|\bbut\b|\bhowever\b")
# Whole answers that mean "no label", after normalising ("n/a" reads "n a").
_EMPTY_ANSWERS = {"", "none", "no", "clean", "nothing", "n a", "na", "none of them", "none of these", "none of the above"}
_NULL_TAGS = {"none", "n/a", "nothing", "etc", "no sound events", "no events", "no sound"}
_LIST_SPLIT = re.compile(r"[,;\n]|\s+and\s+", re.IGNORECASE)
_BULLET = re.compile(r"^(?:[-*\u2022\u00b7\u2013\u2014>]+|\(?\d{1,3}[.)]|\d{1,3}\s+-)\s*")
_TAG_LEAD_IN = re.compile(
    r"^(?:(?:the|this) (?:audio|clip|recording) (?:contains|features|includes|has)|i (?:can )?hear|"
    r"there (?:is|are)|(?:the )?sound(?:s)? of|an?|the)\s+")


def strip_tokens(text: str) -> str:
    """text with every <|...|> special token replaced by a space (None reads as "")."""
    return _SPECIAL_TOKEN.sub(" ", text or "")


def squash(text: str) -> str:
    """text with each run of whitespace made one space and the ends trimmed."""
    return " ".join(text.split())


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        return text[1:-1].strip()
    return text


def _language_code(word: str) -> str | None:
    word = word.lower()
    if word in _LANGUAGE_NAMES:
        return _LANGUAGE_NAMES[word]
    return word if re.fullmatch(r"[a-z]{2}", word) else None


def parse_transcript(raw: str) -> dict[str, object]:
    """A leading <|xx|> tag (base checkpoint) or an "en:" / "English:" / "Language: English"
    prefix (instruct checkpoint) gives the language; every other <|...|> token is removed."""
    raw = raw or ""
    leading = re.match(r"\s*(?:<\|[^|<>]*\|>\s*)*", raw).group()
    tag = re.search(r"<\|([a-z]{2,3})\|>", leading)
    language = tag.group(1) if tag else None
    text = squash(strip_tokens(raw))
    if language is None:
        for prefix in _LANGUAGE_PREFIXES:
            match = prefix.match(text)
            if match:
                language, text = _language_code(match.group(1)), text[match.end():]
                break
    text = _unquote(_TRANSCRIPT_LABEL.sub("", text, count=1) if _TRANSCRIPT_LABEL.match(text) else text)
    if _NO_SPEECH.fullmatch(text):
        text, language = "", None  # no speech has no language
    return {"transcript": text, "language": language}


def parse_caption(raw: str) -> dict[str, object]:
    text = squash(strip_tokens(raw))
    text = re.sub(r"^(?:audio\s+)?caption\s*:\s*", "", text, flags=re.IGNORECASE)
    return {"caption": _unquote(text)}


def split_list(raw: str, tags: bool) -> list[str]:
    """Items of a list answer: split on commas, semicolons, newlines and " and "; bullets,
    numbering, quotes, brackets and trailing punctuation removed; "none" and empties dropped;
    repeats (compared case-insensitively) dropped, first spelling kept. tags=True (sound events)
    also lowercases and drops lead-ins such as "the audio contains" and articles."""
    text = strip_tokens(raw).strip()
    # A header before the list ("Sound events: ...", "The tags are:\n- ...") is not an item.
    text = re.sub(r"^[^,;\n:]*:\s*", "", text, count=1)
    items: list[str] = []
    seen: set[str] = set()
    for piece in _LIST_SPLIT.split(text):
        item = _BULLET.sub("", piece.strip())
        item = squash(item.strip(_QUOTES + "[]{} ").rstrip(".!?:").strip(_QUOTES + " "))
        if tags:
            item = item.lower()
            while (shorter := _TAG_LEAD_IN.sub("", item)) != item:
                item = shorter
        key = item.casefold()
        if key and key not in _NULL_TAGS and key not in seen:
            seen.add(key)
            items.append(item)
    return items


# A label followed by a verdict on it: "hate speech: no", "Violence - yes", "violence (no)",
# "**Violence**: Not present", "violence=false", {"violence": true}, "| violence | no |",
# "Violence? Yes.", "hate speech is not present". A separator is required: "violence no" is not a
# verdict. Longer phrases first (alternation takes the first that matches).
_VERDICT_NO = ("not present", "not detected", "not found", "not applicable", "not contained", "not",
               "absent", "negative", "false", "none", "no", "n a", "0")
_VERDICT_YES = ("present", "detected", "found", "contained", "positive", "true", "yes", "1")
_SEPARATOR = r"[\s\"'`*)\]]*(?:[:=(\[?|\-\u2013\u2014]|\bis\b|\bare\b)[\s\"'`*(\[]*"
_VERDICT = rf"(?P<verdict>{'|'.join(re.escape(v) for v in (*_VERDICT_NO, *_VERDICT_YES))})(?!\w|\.\d)"


def _label_pattern(label: str) -> str:
    phrase = r"\s+".join(re.escape(word) for word in _normalise(label).split())
    return rf"(?<![a-z0-9]){phrase}(?![a-z0-9])"


def _verdicts(text: str, label: str) -> tuple[list[bool], list[tuple[int, int]]]:
    """The verdicts the answer gives on label (True: it applies), and where they stand."""
    found, spans = [], []
    for match in re.finditer(_label_pattern(label) + _SEPARATOR + _VERDICT, text):
        found.append(match.group("verdict") in _VERDICT_YES)
        spans.append(match.span())
    return found, spans


def _mentions_unnegated(text: str, label: str) -> bool:
    """True when some clause of text names label with no negation before it in that clause."""
    pattern = re.compile(_label_pattern(label))
    for clause in _CLAUSE_BREAK.split(text):
        # The clause's first mention is the least likely to be negated: check only that one.
        mention = pattern.search(clause)
        if mention:
            negation = _NEGATION.search(clause, 0, mention.start())
            if negation is None:
                return True
    return False


def _normalise(text: str) -> str:
    """Casefolded, curly apostrophes straight, and "-", "_" or "/" inside a word read as spaces
    ("self-harm", "hate_speech"); a dash between spaces stays (it may separate a verdict)."""
    text = text.casefold().replace("\u2019", "'").replace("\u2018", "'")
    return squash(re.sub(r"(?<=\w)[-_/](?=\w)", " ", text))


def parse_moderation(raw: str, labels: Sequence[str]) -> dict[str, object]:
    """Configured labels the answer says apply, in the configured order. Matching is by whole
    phrase, case-insensitive, with "-", "_" and "/" inside a word read as spaces.

    - A verdict given on a label decides it: "hate speech: no, violence: yes", "Violence - no",
      "violence (yes)", "hate speech is not present", {"violence": false}. A label with any
      verdict that it applies counts; one whose every verdict denies it does not.
    - Otherwise (a list, a sentence) a label counts when some clause names it with no negation
      before it in that clause: "violence, profanity" counts both; "no violence", "does not
      contain hate speech", "neither violence nor hate speech" count none.
    - "none", "no", "clean" (and any answer naming no label) is [].
    False positives are the costly error for moderation, so a denial always wins over a mention.
    """
    text = _normalise(strip_tokens(raw))
    if text.strip(" .!\"'") in _EMPTY_ANSWERS:
        return {"moderation": []}
    decided: dict[str, bool] = {}
    spans: list[tuple[int, int]] = []
    for label in labels:
        found, where = _verdicts(text, label)
        if found:
            decided[label] = any(found)
            spans.extend(where)
    # What the verdicts said is settled: it must not read as a negation of a label listed after it
    # ("violence: no, profanity" names profanity unnegated).
    # (spans of two labels may overlap: "self harm: no" holds "harm: no").
    rest = list(text)
    for begin, end in spans:
        rest[begin:end] = "." * (end - begin)
    rest = "".join(rest)
    return {"moderation": [label for label in labels
                           if (decided[label] if label in decided else _mentions_unnegated(rest, label))]}
