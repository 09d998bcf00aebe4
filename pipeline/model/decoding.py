"""How tokens are chosen: the checkpoint's generation_config.json by default, job keys and
command-line options over it, and where each value came from (no MindSpore here).

transformers' `generate()` reads generation_config.json, fills what the file leaves out with its own
defaults (`GenerationConfig._get_default_generation_params()`: no sampling, temperature 1.0, top-k 50,
top-p 1.0, repetition penalty 1.0) and lets its arguments override both; vLLM does the same through
`get_default_sampling_params()`. This module resolves the same keys the same way, so a job with no
decoding keys decodes as the checkpoint's authors intend, and records for each value whether it came
from the checkpoint, transformers' default, the job file or a command-line option.

The engine applies a resolved Decoding exactly as transformers' logits processors do, in their order
(model/graphs.py): repetition penalty over every token id of the prompt and of the answer so far,
then, when sampling, temperature, top-k and top-p.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

GENERATION_CONFIG = "generation_config.json"
# The keys a job, an option or the checkpoint may set, in the order transformers applies them.
DECODING_KEYS = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty")
# transformers 5's defaults for what generation_config.json leaves out.
TRANSFORMERS_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0,
                         "repetition_penalty": 1.0}
DEFAULT_SEED = 0

# Where a value came from, as run.json, the start line and the dry run say it.
CHECKPOINT, DEFAULT, JOB, OPTION = "checkpoint", "default", "job", "option"


class DecodingError(ValueError):
    """Decoding values that cannot be used; the message names the value and where it came from."""


@dataclass(frozen=True)
class Decoding:
    """One way of choosing tokens. The defaults are greedy without penalty.

    do_sample false is greedy (argmax after the repetition penalty); temperature, top_k and top_p
    then do nothing, as in transformers. top_k 0 keeps every token. Sampling draws come from a
    generator seeded by (seed, row id, task), so a row gets the same tokens whatever else runs."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = DEFAULT_SEED

    @property
    def greedy(self) -> bool:
        return not self.do_sample

    @property
    def penalised(self) -> bool:
        return self.repetition_penalty != 1.0

    def effective(self) -> dict:
        """The values that decide the tokens (what the run's settings fingerprint holds): greedy
        decoding ignores the sampling values, as transformers does."""
        if self.greedy:
            return {"do_sample": False, "repetition_penalty": self.repetition_penalty}
        return asdict(self)

    def describe(self, sources: dict[str, str] | None = None) -> str:
        """'greedy, repetition_penalty 1.1 (checkpoint)' or 'sampling: temperature 0.7 (checkpoint), ...'."""
        sources = sources or {}

        def value(key: str) -> str:
            source = sources.get(key)
            return f"{key} {getattr(self, key):g}" + (f" ({source})" if source else "")

        if self.greedy:
            head = "greedy" + (f" ({sources['do_sample']})" if sources.get("do_sample") else "")
            return head + (f", {value('repetition_penalty')}" if self.penalised else "")
        keys = ("temperature", "top_k", "top_p", "repetition_penalty", "seed")
        return "sampling" + (f" ({sources['do_sample']})" if sources.get("do_sample") else "") + ": " + \
            ", ".join(value(k) for k in keys)

    def changed_from(self, other: Decoding) -> dict:
        """The effective values that differ from other's (what a retry records it used)."""
        mine, theirs = self.effective(), other.effective()
        return {k: v for k, v in mine.items() if theirs.get(k) != v}


def generation_config(model_dir: Path) -> dict:
    """The checkpoint's generation_config.json, or {} when it has none."""
    path = Path(model_dir) / GENERATION_CONFIG
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise DecodingError(f"{path}: not a JSON object")
    return data


@dataclass(frozen=True)
class ResolvedDecoding:
    """The run's decoding, the retry's (retry_degenerate), and where each value came from."""

    decoding: Decoding
    sources: dict[str, str]  # key -> checkpoint | default | job | option
    retry: Decoding | None = None
    retry_changes: dict | None = None  # what the retry changes, as the job gave it
    eos_source: str = CHECKPOINT  # end-of-sequence ids: from the checkpoint or the tokenizer
    pad_token_id: int | None = None

    @property
    def retry_label(self) -> str | None:
        """What a retry changes, as the `retried` column records it: 'repetition_penalty=1.2'."""
        if self.retry is None:
            return None
        return ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                         for k, v in sorted(self.retry_changes.items()))

    def describe(self) -> str:
        text = self.decoding.describe(self.sources)
        if self.retry is not None:
            text += f"; looping answers generated again with {self.retry_label}"
        return text

    def to_dict(self) -> dict:
        """run.json's "decoding": every value with its source, and the retry."""
        return {
            **asdict(self.decoding), "sources": dict(self.sources),
            "retry_degenerate": None if self.retry is None else {
                "changes": dict(self.retry_changes), "decoding": asdict(self.retry)},
            "eos_token_ids_from": self.eos_source, "pad_token_id": self.pad_token_id,
        }

    def settings(self) -> dict:
        """What the run's settings fingerprint holds: the values that decide the tokens."""
        return {**self.decoding.effective(),
                **({"retry_degenerate": self.retry.effective()} if self.retry is not None else {})}


@dataclass(frozen=True)
class GraphFeatures:
    """What the compiled graphs can do beyond argmax: a graph without them costs nothing for them
    (greedy without penalty compiles the same graphs as before either existed)."""

    penalty: bool = False  # a presence state per slot, and the repetition penalty
    sampling: bool = False  # temperature, top-k and top-p, and a draw per row

    @classmethod
    def needed(cls, *decodings: Decoding | None) -> GraphFeatures:
        present = [d for d in decodings if d is not None]
        return cls(penalty=any(d.penalised for d in present), sampling=any(d.do_sample for d in present))

    def allows(self, decoding: Decoding) -> bool:
        return (self.penalty or not decoding.penalised) and (self.sampling or decoding.greedy)

    def key(self) -> list[bool]:
        return [self.penalty, self.sampling]


def _check(values: dict, where: dict[str, str]) -> None:
    def fail(key: str, need: str) -> None:
        raise DecodingError(f"{key} {values[key]!r} (from the {where.get(key, 'default')}) {need}")

    if not isinstance(values["do_sample"], bool):
        fail("do_sample", "must be true or false")
    for key in ("temperature", "top_p", "repetition_penalty"):
        if isinstance(values[key], bool) or not isinstance(values[key], (int, float)):
            fail(key, "must be a number")
    if isinstance(values["top_k"], bool) or not isinstance(values["top_k"], int) or values["top_k"] < 0:
        fail("top_k", "must be a whole number, 0 for no top-k")
    if not 0 < values["top_p"] <= 1:
        fail("top_p", "must be above 0 and at most 1")
    if values["repetition_penalty"] <= 0:
        fail("repetition_penalty", "must be above 0 (1 is no penalty)")
    if values["do_sample"] and values["temperature"] <= 0:
        fail("temperature", "must be above 0 when sampling (do_sample false, or --greedy, decodes greedily)")


def _seed(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodingError(f"seed {value!r} must be a whole number")
    return value


def resolve(checkpoint: dict, job: dict, options: dict, retry: dict | None = None) -> ResolvedDecoding:
    """checkpoint: generation_config.json's contents; job and options: the decoding keys (and seed)
    set by the job file and by command-line options, None for unset. Options win over the job, the
    job over the checkpoint, the checkpoint over transformers' defaults.

    A temperature of 0 from the job or an option means greedy, as it always has here (transformers
    refuses it when sampling): it turns do_sample off unless do_sample is set beside it."""
    values, sources = {}, {}
    for key in DECODING_KEYS:
        for source, given in ((OPTION, options), (JOB, job), (CHECKPOINT, checkpoint)):
            if given.get(key) is not None:
                values[key], sources[key] = given[key], source
                break
        else:
            values[key], sources[key] = TRANSFORMERS_DEFAULTS[key], DEFAULT
    zero = values["temperature"] == 0 and sources["temperature"] in (OPTION, JOB)
    if zero and sources["do_sample"] not in (OPTION, JOB) and values["do_sample"]:
        values["do_sample"], sources["do_sample"] = False, sources["temperature"]
    if isinstance(values["temperature"], int) and not isinstance(values["temperature"], bool):
        values["temperature"] = float(values["temperature"])
    _check(values, sources)
    seed_source = OPTION if options.get("seed") is not None else JOB if job.get("seed") is not None else DEFAULT
    seed = _seed({OPTION: options, JOB: job}.get(seed_source, {}).get("seed", DEFAULT_SEED))
    sources["seed"] = seed_source
    decoding = Decoding(
        do_sample=values["do_sample"], temperature=float(values["temperature"]), top_k=int(values["top_k"]),
        top_p=float(values["top_p"]), repetition_penalty=float(values["repetition_penalty"]), seed=seed)
    if not retry:
        return ResolvedDecoding(decoding, sources)
    return ResolvedDecoding(decoding, sources, *retry_decoding(decoding, retry))


RETRY_KEYS = (*DECODING_KEYS, "seed")


def retry_decoding(decoding: Decoding, changes: dict) -> tuple[Decoding, dict]:
    """retry_degenerate: the run's decoding with these keys changed. A retry that would decode
    exactly as the run does would only repeat the loop, so it is refused."""
    unknown = sorted(set(changes) - set(RETRY_KEYS))
    if unknown:
        raise DecodingError(f"retry_degenerate: unknown key(s) {unknown}; it takes {list(RETRY_KEYS)}")
    values = asdict(decoding)
    values.update(changes)
    if values["temperature"] == 0 and "do_sample" not in changes:
        values["do_sample"] = False
    _check(values, {k: "retry_degenerate" for k in changes})
    retry = Decoding(**{f.name: values[f.name] for f in fields(Decoding)})
    retry = replace(retry, seed=_seed(retry.seed), temperature=float(retry.temperature),
                    top_p=float(retry.top_p), repetition_penalty=float(retry.repetition_penalty))
    if retry.effective() == decoding.effective() and not retry.do_sample:
        raise DecodingError(f"retry_degenerate {changes} decodes exactly as the run does (greedy, "
                            f"repetition_penalty {decoding.repetition_penalty:g}): a retry would repeat the loop")
    return retry, dict(changes)


def end_of_sequence(checkpoint: dict, fallback: tuple[int, ...]) -> tuple[tuple[int, ...], str]:
    """End-of-sequence ids as transformers' generate() takes them: generation_config.json's
    eos_token_id (an int or a list) when it has one; else `fallback` (the tokenizer's).
    -> (ids, where they came from)."""
    eos = checkpoint.get("eos_token_id")
    if eos is None or eos == []:
        return tuple(dict.fromkeys(fallback)), "tokenizer"
    ids = eos if isinstance(eos, list) else [eos]
    if any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
        raise DecodingError(f"{GENERATION_CONFIG}: eos_token_id {eos!r} must be a token id or a list of them")
    return tuple(dict.fromkeys(ids)), CHECKPOINT


def pad_token(checkpoint: dict, eos_ids: tuple[int, ...]) -> int | None:
    """generation_config.json's pad_token_id, else the first end-of-sequence id (as transformers
    pads finished rows when none is set). The engine never pads an answer; run.json records it."""
    pad = checkpoint.get("pad_token_id")
    return pad if isinstance(pad, int) and not isinstance(pad, bool) else (eos_ids[0] if eos_ids else None)


# Columns of the per-row decoding parameters the graphs read (model/token_choice.py), one row per
# prefill output or decode slot, built on the host by row_parameters.
TEMPERATURE, TOP_K, TOP_P_LIMIT, PENALTY, SAMPLE, DRAW = range(6)
ROW_PARAMETERS = 6


def row_parameters(decoding: Decoding, u: float, vocab: int) -> tuple[float, ...]:
    """One row of the graphs' decoding parameters. u: the row's uniform draw in (0, 1] (any value
    when greedy)."""
    top_k = min(decoding.top_k, vocab) if decoding.top_k > 0 else vocab
    top_p_limit = 1.0 - decoding.top_p if decoding.top_p < 1.0 else -1.0
    return (decoding.temperature if decoding.do_sample else 1.0, float(top_k), top_p_limit,
            decoding.repetition_penalty, 1.0 if decoding.do_sample else 0.0, u)
