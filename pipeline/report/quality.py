"""Label quality against reference labels carried through from the manifest: OUT/quality.json.

Compared: ok rows whose reference is not null (`status == "ok"`; a partial row is not compared).
- transcript: WER and CER, corpus-level (total edits / total reference words; characters, spaces
  included), after the same normalisation of both sides (`normalise`); rows whose normalised
  reference is empty are left out; a null transcript on an ok row counts as empty. Overall and per
  detected language (`"unknown"` where the row has none). Edit distances are rapidfuzz's
  Levenshtein distances over words and over characters: the engine jiwer itself runs on, called
  directly because jiwer's per-call checks and transforms cost 25x more (25k rows: 5.9 s against
  0.24 s); tests check the figures equal jiwer's corpus-level WER and CER.
- list tasks (events, moderation, custom list tasks): micro precision, recall and F1 over rows,
  each row's tags lower-cased and stripped, empty ones dropped, compared as sets. A reference given
  as a string is split at commas. A ratio whose denominator is 0 (no tag predicted, or none in
  the references) is 0.0, as scikit-learn reports it.
- text tasks (captions, custom text tasks): the rows compared, and a hook (`text_similarity`) for
  a similarity score; none is computed unless one is given.

quality.json holds exactly `{task: {"rows": N, ...}}` with the figures above; the page also shows
the worst rows and the per-tag table (QualityDetails). Rows are read batch by batch, and only the
rows that have a reference become Python objects.
"""

from __future__ import annotations

import functools
import heapq
import json
import sys
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import UserError

WORST_ROWS = 10  # per task, on the page
TAG_TABLE = 20  # most frequent reference tags per list task, on the page
UNKNOWN_LANGUAGE = "unknown"

# A text-similarity scorer for text tasks: (references, hypotheses) -> {figure: value}, merged into
# the task's quality.json entry. None: only the rows compared are reported.
TextSimilarity = Callable[[Sequence[str], Sequence[str]], Mapping[str, float]]


class BadReference(UserError):
    """A --reference or `references:` entry that cannot be used (unknown task or column)."""


@functools.cache
def _punctuation_and_symbols() -> dict[int, str]:
    """Every code point of Unicode category P* or S* -> a space (str.translate's table; built once,
    0.2 s, and only when transcripts are compared)."""
    return {cp: " " for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp))[0] in "PS"}


def normalise(text: str) -> str:
    """Lower-case; every Unicode punctuation (P*) or symbol (S*) character becomes a space;
    whitespace collapsed (and none left at either end)."""
    return " ".join(text.lower().translate(_punctuation_and_symbols()).split())


def tag_set(value) -> frozenset[str]:
    """A list task's labels as a set: lower-cased, stripped, empty ones dropped. A string (a
    reference column written as text) is split at commas, unless it is a JSON array of strings."""
    if value is None:
        return frozenset()
    items = _json_list(value) if isinstance(value, str) else value
    if items is None:
        items = value.split(",")
    return frozenset(t for t in (str(i).strip().lower() for i in items if i is not None) if t)


def _json_list(text: str) -> list | None:
    if not text.lstrip().startswith("["):
        return None
    try:
        found = json.loads(text)
    except ValueError:
        return None
    return found if isinstance(found, list) and all(isinstance(i, str) for i in found) else None


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


@dataclass
class _EditCounts:
    rows: int = 0
    word_edits: int = 0
    words: int = 0
    char_edits: int = 0
    chars: int = 0

    def add(self, word_edits: int, words: int, char_edits: int, chars: int) -> None:
        self.rows += 1
        self.word_edits += word_edits
        self.words += words
        self.char_edits += char_edits
        self.chars += chars

    def figures(self) -> dict:
        return {"rows": self.rows, "wer": self.word_edits / self.words if self.words else None,
                "cer": self.char_edits / self.chars if self.chars else None}


class _Worst:
    """The rows with the highest error, kept in a bounded heap."""

    def __init__(self, size: int = WORST_ROWS):
        self.size, self.heap, self.count = size, [], 0

    def offer(self, score: tuple, row: dict) -> None:
        self.count += 1
        entry = (score, -self.count, row)  # ties: the earlier row stays
        if len(self.heap) < self.size:
            heapq.heappush(self.heap, entry)
        elif entry > self.heap[0]:
            heapq.heapreplace(self.heap, entry)

    def rows(self) -> list[dict]:
        return [row for _, _, row in sorted(self.heap, reverse=True)]


class _TranscriptQuality:
    def __init__(self):
        self.overall = _EditCounts()
        self.by_language: dict[str, _EditCounts] = defaultdict(_EditCounts)
        self.worst = _Worst()

    def add(self, ids, audio, hypotheses, references, languages) -> None:
        from rapidfuzz.distance import Levenshtein

        for item_id, where, hyp, raw_ref, language in zip(ids, audio, hypotheses, references, languages):
            ref = normalise(raw_ref)
            if not ref:
                continue
            label = normalise(hyp or "")
            ref_words = ref.split()
            counts = (Levenshtein.distance(ref_words, label.split()), len(ref_words),
                      Levenshtein.distance(ref, label), len(ref))
            language = language or UNKNOWN_LANGUAGE
            self.overall.add(*counts)
            self.by_language[language].add(*counts)
            self.worst.offer((counts[0] / counts[1], counts[0]), {
                "id": item_id, "audio": where, "language": language, "reference": raw_ref, "label": hyp,
                "wer": counts[0] / counts[1]})

    def result(self) -> dict:
        return {**self.overall.figures(),
                "by_language": {lang: self.by_language[lang].figures() for lang in sorted(self.by_language)}}


class _ListQuality:
    def __init__(self):
        self.rows = 0
        self.tp = self.fp = self.fn = 0
        self.per_tag: dict[str, Counter] = defaultdict(Counter)
        self.worst = _Worst()

    def add(self, ids, audio, hypotheses, references, languages) -> None:
        for item_id, where, hyp, ref in zip(ids, audio, hypotheses, references):
            predicted, expected = tag_set(hyp), tag_set(ref)
            self.rows += 1
            hits, extra, missing = predicted & expected, predicted - expected, expected - predicted
            self.tp += len(hits)
            self.fp += len(extra)
            self.fn += len(missing)
            for tags, kind in ((hits, "tp"), (extra, "fp"), (missing, "fn")):
                for tag in tags:
                    self.per_tag[tag][kind] += 1
            errors = len(extra) + len(missing)
            if errors:
                self.worst.offer((errors, -len(hits)), {
                    "id": item_id, "audio": where, "reference": sorted(expected), "label": sorted(predicted),
                    "missing": sorted(missing), "extra": sorted(extra)})

    def result(self) -> dict:
        if not self.rows:
            return {"rows": 0, "precision": None, "recall": None, "f1": None}
        precision, recall = _ratio(self.tp, self.tp + self.fp), _ratio(self.tp, self.tp + self.fn)
        return {"rows": self.rows, "precision": precision, "recall": recall,
                "f1": _ratio(2 * precision * recall, precision + recall)}

    def tag_table(self) -> list[dict]:
        """The most frequent tags in the references (then in the labels), each with its figures."""
        ranked = sorted(self.per_tag.items(), key=lambda kv: (-(kv[1]["tp"] + kv[1]["fn"]),
                                                              -(kv[1]["tp"] + kv[1]["fp"]), kv[0]))
        table = []
        for tag, c in ranked[:TAG_TABLE]:
            precision, recall = _ratio(c["tp"], c["tp"] + c["fp"]), _ratio(c["tp"], c["tp"] + c["fn"])
            table.append({"tag": tag, "references": c["tp"] + c["fn"], "labels": c["tp"] + c["fp"],
                          "precision": precision, "recall": recall,
                          "f1": _ratio(2 * precision * recall, precision + recall)})
        return table


class _TextQuality:
    def __init__(self, similarity: TextSimilarity | None):
        self.similarity = similarity
        self.rows = 0
        self.references: list[str] = []
        self.hypotheses: list[str] = []

    def add(self, ids, audio, hypotheses, references, languages) -> None:
        self.rows += len(references)
        if self.similarity is not None:
            self.references += [str(r) for r in references]
            self.hypotheses += [h or "" for h in hypotheses]

    def result(self) -> dict:
        found = {"rows": self.rows}
        if self.similarity is not None and self.rows:
            found.update(self.similarity(self.references, self.hypotheses))
        return found


@dataclass
class QualityDetails:
    """What the page shows beside quality.json."""

    worst: dict[str, list[dict]] = field(default_factory=dict)  # task -> its worst rows
    tags: dict[str, list[dict]] = field(default_factory=dict)  # list task -> per-tag figures
    references: dict[str, str] = field(default_factory=dict)  # task -> reference column


def task_kind(parser: str | None, column_type: pa.DataType) -> str:
    """"transcript", "list" or "text": how a task's labels are compared."""
    if parser == "transcript":
        return "transcript"
    if parser in ("events", "moderation", "list") or pa.types.is_list(column_type) or pa.types.is_large_list(column_type):
        return "list"
    return "text"


def check_references(references: Mapping[str, str], schema: pa.Schema, tasks: Iterable[str]) -> None:
    """Every task compared must be one whose labels OUT holds, every column one OUT carries."""
    tasks = list(tasks)
    for task, column in references.items():
        if task not in tasks or task not in schema.names:
            raise BadReference(f"reference for '{task}': not a task of this output (tasks: {', '.join(tasks)})")
        if column not in schema.names:
            raise BadReference(f"reference column '{column}' for '{task}' is not in the output; reference "
                                  "columns come from the manifest as pass-through columns")
        if column == task:
            raise BadReference(f"reference for '{task}': the column is the task's own labels")


class QualityJudge:
    """Takes the rows batch by batch (add: columns id, audio, status, language, and each compared
    task's and reference's), then gives quality.json's content and what the page shows besides."""

    def __init__(self, references: Mapping[str, str], kinds: Mapping[str, str],
                 text_similarity: TextSimilarity | None = None):
        self.references = dict(references)
        self.judges = {}
        for task in references:
            kind = kinds[task]
            self.judges[task] = (_TranscriptQuality() if kind == "transcript" else _ListQuality() if kind == "list"
                                 else _TextQuality(text_similarity))

    def add(self, batch: pa.RecordBatch) -> None:
        ok = pc.equal(batch.column("status"), "ok")
        for task, column in self.references.items():
            chosen = batch.filter(pc.and_kleene(ok, pc.is_valid(batch.column(column))))
            if not chosen.num_rows:
                continue
            language = (chosen.column("language").to_pylist() if "language" in chosen.schema.names
                        else [None] * chosen.num_rows)
            self.judges[task].add(chosen.column("id").to_pylist(), chosen.column("audio").to_pylist(),
                                  chosen.column(task).to_pylist(), chosen.column(column).to_pylist(), language)

    def result(self) -> tuple[dict, QualityDetails]:
        quality = {task: judge.result() for task, judge in self.judges.items()}
        details = QualityDetails(
            worst={task: judge.worst.rows() for task, judge in self.judges.items() if hasattr(judge, "worst")},
            tags={task: judge.tag_table() for task, judge in self.judges.items() if isinstance(judge, _ListQuality)},
            references=dict(self.references))
        return quality, details


def compute_quality(batches: Iterable[pa.RecordBatch], references: Mapping[str, str], kinds: Mapping[str, str],
                    text_similarity: TextSimilarity | None = None) -> tuple[dict, QualityDetails]:
    judge = QualityJudge(references, kinds, text_similarity)
    for batch in batches:
        judge.add(batch)
    return judge.result()


def parse_reference_options(values: Sequence[str]) -> dict[str, str]:
    """--reference TASK=COLUMN, repeatable."""
    found = {}
    for value in values:
        task, sep, column = value.partition("=")
        if not sep or not task.strip() or not column.strip():
            raise BadReference(f"--reference {value!r}: expected TASK=COLUMN, e.g. transcript=ref_text")
        found[task.strip()] = column.strip()
    return found
