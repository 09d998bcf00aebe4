"""One batch, start to finish: decode -> cut -> features (BatchPreparer, CPU) then model -> parse
(BatchAnnotator, next to the model).

No Ray here. The runner runs the two halves in different processes, so that the next batch is
decoded while the model works on the current one (MindSpore holds the GIL while a graph runs, so
a thread beside the model would not overlap). The model is anything with the TextModel interface;
the real one is model.engine.MindSporeModel.

Bad input never fails a batch: an item whose audio cannot be used becomes an error result and the
rest of the batch still runs. Only the model itself failing raises, so the runner can retry the
batch and, if it keeps failing, split it to isolate the item that causes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from pipeline import shapes
from pipeline.intake import audio
from pipeline.intake.embedded import refs
from pipeline.intake.embedded.files import Source
from pipeline.intake.embedded.parquet_cells import read_cells
from pipeline.intake.features import clip_features
from pipeline.intake.segment import (
    boundary_nominals,
    find_cut,
    search_window,
    segment_bounds,
)
from pipeline.items import Batch, Item, ItemResult, failure_result
from pipeline.model.interface import ClipInput, TextModel
from pipeline.reasons import Failure, Reason
from pipeline.tasks.catalog import Task, output_columns, parse
from pipeline.tasks.scoring import SCORED_PARSER, scored_columns, text_score


@dataclass
class ReadyClip:
    item: Item
    features: np.ndarray
    valid_frames: int
    start_s: float
    end_s: float
    silent: bool


@dataclass
class PreparedBatch:
    batch: Batch
    ready: list[ReadyClip] = field(default_factory=list)
    failed: list[ItemResult] = field(default_factory=list)


class BatchPreparer:
    """The CPU side: runs while the model works on the previous batch."""

    def __init__(self, extractor, silence_dbfs: float, search_s: float):
        self.extractor = extractor
        self.silence_dbfs = silence_dbfs
        self.search_s = search_s

    def _cut(self, path: Source, nominal_s: float | None) -> float | None | Failure:
        """Where a boundary falls, decided from the audio around it alone, so both segments that
        share it find the same cut however and wherever they are processed."""
        if nominal_s is None:
            return None
        lo, hi = search_window(nominal_s, self.search_s)
        window = audio.decode(path, lo, hi, self.silence_dbfs)
        if isinstance(window, Failure):
            return window
        return find_cut(window.samples, shapes.SAMPLE_RATE, window.start_s, nominal_s, self.search_s)

    def _decode(self, item: Item, path: Source | Failure) -> ReadyClip | ItemResult:
        if isinstance(path, Failure):  # embedded audio that could not be read
            return failure_result(item, path, item.start_s, item.end_s)
        if item.n_segments == 1:
            decoded = audio.decode(path, silence_dbfs=self.silence_dbfs)
            start = 0.0
        else:
            before, after = (self._cut(path, nominal) for nominal in boundary_nominals(item))
            for cut in (before, after):
                if isinstance(cut, Failure):
                    return self._shorter_than_planned(item, path, cut) or failure_result(item, cut, item.start_s,
                                                                                          item.end_s)
            start, end = segment_bounds(item, before, after)
            # The last segment decodes to the end of the file, not to the planned end: a file longer
            # than planned is noticed, never silently cut.
            last = item.segment == item.n_segments - 1
            decoded = audio.decode(path, start, None if last else end, self.silence_dbfs)
            if isinstance(decoded, Failure):
                return self._shorter_than_planned(item, path, decoded) or failure_result(item, decoded, item.start_s,
                                                                                          item.end_s)
        if isinstance(decoded, Failure):
            return failure_result(item, decoded, item.start_s, item.end_s)
        end = start + decoded.duration_s
        frames = shapes.frames_for_samples(len(decoded.samples))
        if not shapes.fits_window(frames):
            # Longer than the plan allows: the driver plans the row again from this length.
            return _mismatch(item, path, start, end)
        features, valid = clip_features(self.extractor, decoded.samples)
        return ReadyClip(item, features, valid, start, end, decoded.silent)

    @staticmethod
    def _sources(batch: Batch) -> dict[str, Source | Failure]:
        """Each item's audio: a resolved path or URL, a tar member (read in place), or the bytes of
        a Parquet cell, read here for the whole batch so that a row group is read once per batch."""
        found = {text: refs.parse(text) for text in dict.fromkeys(i.path for i in batch.items)}
        cells = [where for where in found.values() if isinstance(where, refs.ParquetCell)]
        read = read_cells(cells) if cells else {}
        return {text: read.get(where, where) for text, where in found.items()}

    def _shorter_than_planned(self, item: Item, path: Source, failure: Failure) -> ItemResult | None:
        """A segment's region, or the region around one of its cuts, holds no audio: the file may end
        before its plan (an overstated duration_s: minutes written for seconds, milliseconds for
        seconds). Then -> a duration_mismatch result with the file's real length, from which the
        driver plans the row again (every segment planned past the end would fail otherwise, and
        for good: empty_audio is permanent). None when the file is as long as planned."""
        if failure.reason != Reason.EMPTY_AUDIO:
            return None
        real = file_length(path)
        planned = item.planned_s if item.planned_s is not None else item.end_s
        if not real or real >= planned - SHORTER_BY_S:  # unreadable now, empty (an error anyway), or as planned
            return None
        return _mismatch(item, path, 0.0, real)

    def prepare(self, batch: Batch) -> PreparedBatch:
        prepared = PreparedBatch(batch)
        sources = self._sources(batch)
        for item in batch.items:
            outcome = self._decode(item, sources[item.path])
            (prepared.ready if isinstance(outcome, ReadyClip) else prepared.failed).append(outcome)
        return prepared


# A file is shorter than its plan when it ends this much before the planned length (a frame's
# rounding is not a difference).
SHORTER_BY_S = 0.05
_TAIL_S = 60.0  # decoded from before the header's end to find the real one


def file_length(path: Source) -> float | None:
    """The file's length as decoded: the header's length checked by decoding its last _TAIL_S to the
    end (headers may be estimates), from the start when that region is empty. None when the file
    cannot be read now."""
    info = audio.probe(path)
    from_s = max(0.0, info.duration_s - _TAIL_S) if not isinstance(info, Failure) else 0.0
    tail = audio.decode(path, from_s)
    if isinstance(tail, Failure) and from_s > 0:
        from_s, tail = 0.0, audio.decode(path, 0.0)
    if isinstance(tail, Failure):
        return 0.0 if tail.reason == Reason.EMPTY_AUDIO else None
    return tail.start_s + tail.duration_s


def _mismatch(item: Item, path: Source, start: float, end: float) -> ItemResult:
    """The file decodes to `end` s, which its plan does not fit: the driver plans the row again."""
    planned = item.planned_s if item.planned_s is not None else item.end_s
    detail = (f"{path.name} decodes to {end:.2f} s but was planned as {planned:.2f} s (from the manifest's "
              f"duration_s or the file header); fix or drop duration_s for this row") if planned else (
              f"{path.name} decodes to {end:.2f} s, longer than one window; its length was not known "
              "before decoding, so it is planned again from this length")
    result = failure_result(item, Failure(Reason.DURATION_MISMATCH, detail), start, end)
    return replace(result, measured_s=end)


class BatchAnnotator:
    """The model side: generate for the ready clips, parse, and pass the failed ones through.
    decoding: the run's (model.decoding.ResolvedDecoding); with its retry (retry_degenerate), answers
    the model flags as loops are generated once more with the retry's decoding, and kept (with the
    rest of their conversation, when they are turns of one). A follow-up its rule skipped has no
    text: its columns are null, and `skipped` says why."""

    def __init__(self, model: TextModel, tasks: list[Task], moderation_labels, decoding=None):
        self.model = model
        self.tasks = tasks
        self.moderation_labels = tuple(moderation_labels)
        self.retry = decoding.retry if decoding is not None else None
        self.retry_label = decoding.retry_label if self.retry is not None else None

    def run(self, prepared: PreparedBatch):
        """-> (results for every item of the batch, generation stats or None)."""
        results = list(prepared.failed)
        if not prepared.ready:
            return results, None
        clips = prepared.ready
        output = self.model.generate([ClipInput(c.item.key, c.features, c.valid_frames) for c in clips])
        _check(output, [len(self.tasks)] * len(clips))
        texts = [list(t) for t in output.texts]
        answers = [list(a) for a in output.answers] if output.answers else [[] for _ in clips]
        skipped = [{self.tasks[i].name: reason for i, reason in skips.items()}
                   for skips in (output.skipped or [{} for _ in clips])]
        retried = [{} for _ in clips]
        if self.retry is not None:
            self._retry_loops(clips, texts, answers, skipped, retried, output.stats)
        for clip, clip_texts, known, skips, again in zip(clips, texts, answers, skipped, retried):
            parsed: dict[str, object] = {}
            scores: dict[str, float] = {}
            for task, text, answer in zip(self.tasks, clip_texts, known or [None] * len(self.tasks)):
                if task.parser == SCORED_PARSER:  # a yes/no question: its score, no parsing
                    scores[task.label] = answer.p_yes if answer is not None and answer.p_yes is not None \
                        else text_score(text)
                    continue
                # A follow-up its rule skipped: null columns, not an empty answer.
                parsed.update({c: None for c in output_columns([task])} if text is None
                              else parse(task, text, self.moderation_labels))
            if scores:
                scored = [t for t in self.tasks if t.parser == SCORED_PARSER]
                parsed.update(scored_columns([t.label for t in scored], [t.threshold for t in scored], scores))
            results.append(ItemResult(
                item=clip.item, status="ok", start_s=clip.start_s, end_s=clip.end_s, silent=clip.silent,
                raw={task.name: text for task, text in zip(self.tasks, clip_texts) if text is not None},
                parsed=parsed, skipped=skips,
                answers={task.name: answer for task, answer in zip(self.tasks, known) if answer is not None},
                retried=again,
            ))
        return results, output.stats

    def _conversation(self, task: int) -> tuple[int, ...]:
        """Every task of the conversation `task` belongs to: its first question's and each that
        follows from it (a first question alone when nothing follows)."""
        names = [t.name for t in self.tasks]

        def root(i: int) -> int:
            return root(names.index(self.tasks[i].follows)) if self.tasks[i].follows else i

        return tuple(i for i in range(len(self.tasks)) if root(i) == root(task))

    def _retry_loops(self, clips, texts, answers, skipped, retried, stats) -> None:
        """Generate the looping answers again (only those tasks of those clips), in place. A
        looping answer in a conversation has its whole conversation generated again: the answers
        after it saw the loop, and a follow-up is only asked after the answers before it."""
        again = [(c, tuple(sorted({t for i, answer in enumerate(known) if answer is not None and answer.looped
                                   for t in self._conversation(i)}))) for c, known in enumerate(answers)]
        again = [(c, tasks) for c, tasks in again if tasks]
        if not again:
            return
        second = self.model.generate([ClipInput(clips[c].item.key, clips[c].features, clips[c].valid_frames,
                                                tasks=tasks, decoding=self.retry, attempt=1) for c, tasks in again])
        _check(second, [len(tasks) for _, tasks in again])
        for (c, tasks), new_texts, new_answers, new_skipped in zip(
                again, second.texts, second.answers or [[]] * len(again), second.skipped or [{}] * len(again)):
            for i, (t, text, answer) in enumerate(zip(tasks, new_texts, new_answers or [None] * len(tasks))):
                name = self.tasks[t].name
                texts[c][t] = text
                if answer is not None or text is None:
                    answers[c][t] = answer
                skipped[c].pop(name, None)
                if i in new_skipped:
                    skipped[c][name] = new_skipped[i]
                else:
                    retried[c][name] = self.retry_label
        second.stats.retried_answers += sum(len(tasks) for _, tasks in again)
        stats.add(second.stats)


def _check(output, tasks_per_clip: list[int]) -> None:
    """The model's side of the contract: one list of texts per clip, one text per task asked for."""
    if len(output.texts) != len(tasks_per_clip) or any(len(t) != n for t, n in zip(output.texts, tasks_per_clip)):
        raise RuntimeError(
            f"the model returned {len(output.texts)} results for {len(tasks_per_clip)} clips; "
            "it must return one list of task texts per clip, in order"
        )
