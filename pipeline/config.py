"""Run configuration: one frozen dataclass, loaded from a flat, commented YAML job file.

Unknown keys are errors (a typo must not silently fall back to a default). YAML holds data only:
no import paths, nothing executed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline import shapes
from pipeline.errors import UserError
from pipeline.reasons import parse_reasons


class ConfigError(UserError, ValueError):
    """A job file or option that cannot be used; the message says which key and why."""


@dataclass(frozen=True)
class CustomTask:
    """A user-defined task: a question about the audio and how to parse the answer."""

    name: str
    prompt: str
    max_new_tokens: int = 64
    parser: str = "text"  # "text" keeps the answer as a string, "list" splits it into tags
    # A follow-up question: asked in the same conversation after this task's answer (instruct style).
    follows: str | None = None
    # Its rule on an earlier answer (tasks/conditions.py), e.g. {contains: speech}; None: always asked.
    when: dict | None = None


@dataclass(frozen=True)
class Config:
    # --- model ---
    # A Hugging Face checkpoint folder, or a hub id resolved to a local snapshot when a hub is reachable.
    model: str = "Qwen/Qwen2-Audio-7B-Instruct"
    # Hub revision to resolve (recorded in run.json); ignored for a local folder.
    revision: str | None = None
    # base: plain prompts after the audio; instruct: the chat template. auto: instruct when the
    # checkpoint ships a chat template.
    prompt_style: str = "auto"
    # bf16 is Ascend's native type; the CPU backend cannot run bf16 graphs, so auto means fp32 there.
    dtype: str = "auto"
    # auto picks Ascend when MindSpore sees an NPU, else CPU.
    device: str = "auto"
    # MindSpore compiler cache; a subfolder per (model, shapes, MindSpore version) so nothing stale
    # is reused. null disables it.
    compile_cache_dir: str | None = ".ms_compile_cache"

    # --- tasks ---
    tasks: tuple[str, ...] = ("caption", "events", "transcript", "moderation")
    # Replace a built-in task's prompt: {task name: question}. Applies to the chosen prompt style.
    prompts: dict[str, str] = field(default_factory=dict)
    # Labels the moderation task may return; anything else the model says is dropped.
    moderation_labels: tuple[str, ...] = (
        "hate speech", "harassment", "violence", "sexual content", "self-harm", "profanity",
    )
    # generated: one question lists the labels and the answer is parsed (tasks/parsers.py). scored:
    # one yes/no question per label, sharing the clip's prefix; P(yes) from the first answer token's
    # raw distribution goes to `moderation_scores`, and `moderation` lists the labels whose score
    # reaches their threshold (tasks/scoring.py). No parsing, one prefilled token per label.
    moderation_mode: str = "generated"
    # scored only: {label: threshold in [0, 1]}; labels not listed use moderation_threshold.
    moderation_thresholds: dict[str, float] = field(default_factory=dict)
    moderation_threshold: float = 0.5
    custom_tasks: tuple[CustomTask, ...] = ()
    # Per-task cap on generated tokens: {task name: tokens}; built-in defaults otherwise.
    max_new_tokens: dict[str, int] = field(default_factory=dict)
    # Follow-up questions: {task: the task it follows}. The task's question becomes the next user
    # turn of the same conversation, after that task's question and answer, continued from its
    # cache (instruct style only). Custom tasks may also say `follows:` themselves.
    follows: dict[str, str] = field(default_factory=dict)
    # A follow-up's rule on an earlier answer: {task: {contains: TAG} | {matches: PATTERN}, with
    # task: TASK to read another earlier turn}; a skipped follow-up is null with its reason.
    when: dict[str, dict] = field(default_factory=dict)

    # --- decoding ---
    # null: the checkpoint's generation_config.json, as transformers' generate() reads it (and
    # transformers' default where the file says nothing); a value here overrides it, an option
    # (--temperature, --greedy, ...) overrides this. See model/decoding.py.
    do_sample: bool | None = None
    # Sampling only. 0 means greedy (do_sample false), as it always has here.
    temperature: float | None = None
    top_k: int | None = None  # 0: no top-k
    top_p: float | None = None
    repetition_penalty: float | None = None  # 1: none; greedy decoding applies it too
    # Sampling draws are seeded per (row id, task) from this, so reruns give the same tokens. null: 0.
    seed: int | None = None
    # Answers that hit their cap while repeating (the `looped` column) are generated once more with
    # these decoding keys changed, e.g. {repetition_penalty: 1.2} or {do_sample: true, seed: 1}; the
    # retry's answer is kept and the `retried` column says so. null: never.
    retry_degenerate: dict[str, object] | None = None

    # --- model shapes and batching ---
    # Decode slots per worker: task rows decoded together (0 = as many as memory_budget_gb holds,
    # at most 32). More slots read the weights fewer times per token; fewer idle less at the end.
    decode_slots: int = 0
    # Split the decode slots into long ones and short ones (caches of a few hundred positions) by
    # the length mix of the run's first clips (docs/engine.md, short slots). Off by default: a few %
    # fewer step seconds where long and short clips interleave through the manifest, and 15-30%
    # more where they come in runs (a manifest sorted by length): at most half the slots serve long
    # rows then. On an NPU short slots also take less memory, so more slots fit.
    short_slots: bool = False
    # Per-worker memory for the engine's caches and working memory, beside the weights (0 = what the
    # worker's share of its machine has: host memory on CPU, the NPU's memory on Ascend).
    memory_budget_gb: float = 0.0
    # Each NPU's memory, what memory_budget_gb 0 plans within on Ascend (the driver, which plans the
    # shapes for every worker, need not see an NPU): 64 for an Ascend 910B; set it for another device.
    npu_memory_gb: float = 64.0
    # Work is dispatched to workers in batches of about this much audio (and at most batch_items
    # items): a unit of dispatch and retry, not a model shape (workers pack clips themselves).
    batch_audio_s: float = 60.0
    batch_items: int = 64

    # --- long audio ---
    # Segment cuts may move this far from their nominal point to land in a pause (0 to < 5 s).
    segment_search_s: float = 2.0

    # --- audio intake ---
    # When set, relative manifest paths resolve against it and paths outside it are rejected.
    audio_root: str | None = None
    # Shards that hold their audio (Parquet with an audio column of bytes, WebDataset tars) and have
    # no `id` column: the column (or KEY.json field) whose values are the ids. null: `<shard>/<row>`
    # for Parquet, the sample's key for WebDataset (stable while the shards are).
    id_column: str | None = None
    # Peak level (dBFS) under which a clip is flagged silent; silent clips are still annotated.
    silence_dbfs: float = -60.0

    # --- object storage (s3:// manifests, audio and OUT: AWS S3, Huawei OBS, MinIO...) ---
    # Endpoint of an S3-compatible store with its scheme, e.g. https://obs.cn-north-4.myhuaweicloud.com
    # or http://minio.local:9000. null: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, else AWS S3 itself.
    # Credentials are never job keys: each process reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    # (or ~/.aws, or its instance role).
    s3_endpoint_url: str | None = None
    # null: AWS_REGION or AWS_DEFAULT_REGION.
    s3_region: str | None = None
    # true: bucket.endpoint/key URLs even with a custom endpoint (path-style otherwise), for stores
    # that accept only virtual-hosted-style requests.
    s3_virtual_addressing: bool = False
    # Attempts per request, with exponential back-off, on throttling, 5xx and timeouts.
    # null: AWS_MAX_ATTEMPTS, else 5.
    s3_max_attempts: int | None = None
    # Local disk per worker process for copies of objects that only ffmpeg decodes (AAC/M4A, WMA...).
    object_cache_gb: float = 2.0

    # --- execution ---
    # The Ray cluster to join: HOST:PORT of its head (the GCS port of `ray start --head --port`), or
    # auto (the one `ray start` left running on this node). null: RAY_ADDRESS when set, else a
    # private local Ray for this run, whatever else runs on the node; local: that private Ray even
    # when RAY_ADDRESS is set. --ray-address overrides it. docs/clusters.md.
    ray_address: str | None = None
    # Workers: one per NPU when NPUs exist, else this many CPU workers (0 = one per 8 cores, at
    # least 1: a worker's kernels use several threads, and more workers than that only contend).
    cpu_workers: int = 0
    # Threads each CPU worker gives MindSpore's kernels (0 = cores / workers).
    cpu_threads_per_worker: int = 0
    # A batch is tried this many times before it is split to isolate a bad item; bounded so a
    # poison input cannot loop forever (Ray's own default retries forever).
    max_attempts: int = 2
    # Batches each worker holds beyond the first: its model serves them together, so its decode
    # slots always find rows. With fewer, slots idle while the next batch is read and encoded
    # (`make bench`, 60 s batches: 0.72 of decode slot-steps useful with 3, 0.91 with 8). A
    # batch's audio and features are a few MB, so holding nine costs little memory.
    prefetch_batches: int = 8
    # Results are committed as a part every this many items (or commit_seconds, whichever first):
    # large enough that a million-row run makes a few thousand files, small enough that a kill
    # loses little work.
    commit_items: int = 512
    commit_seconds: float = 30.0

    # --- work budgets and changed audio (scheduled jobs: docs/schedulers.md) ---
    # When a budget is reached, no more work is dispatched, everything finished is committed and
    # the command exits 75; the next run continues where this one stopped. null: no limit.
    # Rows sent to the model, at most (rows that cannot even be read become error rows besides).
    max_rows: int | None = None
    # Hours of audio sent to the model, at most; at least 30 s, one segment's worth.
    max_hours: float | None = None
    # Minutes after the start when dispatch stops; batches already dispatched still finish.
    max_wall_minutes: float | None = None
    # A row whose audio file changed since it was labelled is labelled again. false: changed means
    # another size or modification time (an object's ETag); true: another SHA-256 of the content,
    # which reads every file in full on every run.
    verify_content: bool = False

    # --- reliability (docs/guarantees.md) ---
    # The error gate: when more than this fraction of the rows an invocation completed failed
    # (status error or partial), it writes what it would (tables and run.json when it finished)
    # but no _SUCCESS, and exits 3. null: no gate. The default catches a run where almost nothing
    # works (a wrong mount, a revoked credential), not a dataset's usual share of bad files.
    max_error_rate: float | None = 0.5
    # Committed error rows to try again on this run (ok rows are never touched): reason codes, or
    # [all]. Usually given once on the command line (--retry-errors), not in a job file.
    retry_errors: tuple[str, ...] = ()
    # Tries within the run of an item that failed transiently (storage_unavailable, read_error),
    # with back-off, before it is written as such (the next run tries it again).
    transient_attempts: int = 3
    # Watchdog: a batch is abandoned (its worker replaced, the batch retried alone) when it runs
    # batch_timeout_factor times longer than this run's measured speed says it should, and never
    # sooner than batch_timeout_min_s (also the expectation before any batch has finished).
    batch_timeout_factor: float = 5.0
    batch_timeout_min_s: float = 600.0
    # A worker (a replacement too) not loaded and ready this long after it was started is given
    # up: its node is gone, or the cluster has no room for it. The run goes on with the others, and
    # stops with an error only when none is left.
    worker_start_timeout_s: float = 1800.0

    # --- label quality (docs/report.md) ---
    # Reference columns to compare the labels with, {task: column}, e.g. {transcript: ref_text,
    # events: ref_tags}: pass-through columns of the manifest. Every run's report then measures the
    # labels against them (WER/CER, precision/recall/F1) and writes OUT/quality.json. Not part of
    # the settings' fingerprint: references never change the labels.
    references: dict[str, str] = field(default_factory=dict)

    # Not a job key: the keys command-line options set, for the provenance run.json records.
    set_by_options: tuple[str, ...] = ()

    def with_overrides(self, **overrides) -> Config:
        clean = {k: v for k, v in overrides.items() if v is not None}
        merged = from_mapping({**job_keys(self), **clean}, source="command line")
        return dataclasses.replace(merged, set_by_options=tuple(sorted(set(self.set_by_options) | set(clean))))

    def decoding_keys(self, origin: str) -> dict:
        """The decoding keys set here (not null), by "job" (the job file or code) or "option"."""
        keys = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "seed")
        chosen = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        by_option = {k: v for k, v in chosen.items() if k in self.set_by_options}
        return by_option if origin == "option" else {k: v for k, v in chosen.items() if k not in by_option}


INTERNAL_FIELDS = frozenset({"set_by_options"})


def job_keys(config: Config) -> dict:
    """The config as a job file would hold it."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in INTERNAL_FIELDS}


def _coerce(name: str, value, annotation, source: str):
    """Check one value against its field type; tuples accept YAML lists."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0], source)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{name}' must be a list, got {value!r}")
        return tuple(_coerce(name, v, args[0], source) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{name}' must be a mapping, got {value!r}")
        return {str(k): _coerce(f"{name}.{k}", v, args[1], source) for k, v in value.items()}
    if annotation is CustomTask:
        if isinstance(value, CustomTask):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: each of '{name}' must be a mapping")
        known = {f.name for f in dataclasses.fields(CustomTask)}
        unknown = set(value) - known
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)} in '{name}'")
        if "name" not in value or "prompt" not in value:
            raise ConfigError(f"{source}: each of '{name}' needs 'name' and 'prompt'")
        when = value.get("when")
        if when is not None and not isinstance(when, dict):
            raise ConfigError(f"{source}: '{name}.when' must be a mapping such as {{contains: speech}}, got {when!r}")
        return CustomTask(
            name=_coerce(f"{name}.name", value["name"], str, source),
            prompt=_coerce(f"{name}.prompt", value["prompt"], str, source),
            max_new_tokens=_coerce(f"{name}.max_new_tokens", value.get("max_new_tokens", 64), int, source),
            parser=_coerce(f"{name}.parser", value.get("parser", "text"), str, source),
            follows=_coerce(f"{name}.follows", value.get("follows"), str | None, source),
            when=when,
        )
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool) and (
        not isinstance(value, annotation) or (annotation is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{source}: '{name}' must be {annotation.__name__}, got {value!r}")
    return value


_CHOICES = {
    "prompt_style": ("auto", "base", "instruct"),
    "dtype": ("auto", "bf16", "fp16", "fp32"),
    "device": ("auto", "ascend", "cpu"),
    "moderation_mode": ("generated", "scored"),
}


def _check(config: Config, source: str) -> None:
    for key, allowed in _CHOICES.items():
        if getattr(config, key) not in allowed:
            raise ConfigError(f"{source}: '{key}' must be one of {allowed}, got {getattr(config, key)!r}")
    if (config.top_p is not None and not 0 < config.top_p <= 1) or (config.temperature or 0) < 0:
        raise ConfigError(f"{source}: need temperature >= 0 and 0 < top_p <= 1")
    if (config.top_k or 0) < 0 or (config.repetition_penalty is not None and config.repetition_penalty <= 0):
        raise ConfigError(f"{source}: need top_k >= 0 (0: no top-k) and repetition_penalty > 0 (1: none)")
    if config.do_sample and config.temperature == 0:
        raise ConfigError(f"{source}: do_sample with temperature 0; a temperature of 0 means greedy")
    if config.retry_degenerate == {}:
        raise ConfigError(f"{source}: 'retry_degenerate' needs the decoding keys a retry changes, "
                          "e.g. {repetition_penalty: 1.2} (null: no retry)")
    if config.retry_degenerate is not None:
        from pipeline.model.decoding import DecodingError, Decoding, retry_decoding

        try:  # the keys and their types now; what they make of the checkpoint's decoding at planning
            retry_decoding(Decoding(do_sample=True), config.retry_degenerate)
        except DecodingError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    if config.batch_items < 1 or config.batch_audio_s <= 0 or config.memory_budget_gb < 0 or config.max_attempts < 1:
        raise ConfigError(f"{source}: batch_items, batch_audio_s and max_attempts must be positive, "
                          "memory_budget_gb 0 (automatic) or positive")
    if config.npu_memory_gb <= 0:
        raise ConfigError(f"{source}: 'npu_memory_gb' must be positive (an Ascend 910B has 64)")
    if config.decode_slots < 0:
        raise ConfigError(f"{source}: 'decode_slots' must be 0 (automatic) or positive")
    if not 0 <= config.segment_search_s < 5:
        raise ConfigError(f"{source}: 'segment_search_s' must be at least 0 and below 5 s")
    if config.commit_items < 1 or config.commit_seconds <= 0 or config.prefetch_batches < 0:
        raise ConfigError(f"{source}: commit_items and commit_seconds must be positive, prefetch_batches >= 0")
    if config.s3_endpoint_url and not config.s3_endpoint_url.startswith(("http://", "https://")):
        raise ConfigError(f"{source}: 's3_endpoint_url' needs its scheme, e.g. https://{config.s3_endpoint_url}")
    if (config.s3_max_attempts is not None and config.s3_max_attempts < 1) or config.object_cache_gb <= 0:
        raise ConfigError(f"{source}: s3_max_attempts must be at least 1 and object_cache_gb positive")
    if config.max_rows is not None and config.max_rows < 1:
        raise ConfigError(f"{source}: 'max_rows' must be at least 1 (null: no limit)")
    if config.max_hours is not None and config.max_hours * 3600 < shapes.WINDOW_S:
        raise ConfigError(f"{source}: 'max_hours' must hold at least one {shapes.WINDOW_S} s segment "
                          f"({shapes.WINDOW_S / 3600:.4f} h; null: no limit)")
    if config.max_wall_minutes is not None and config.max_wall_minutes <= 0:
        raise ConfigError(f"{source}: 'max_wall_minutes' must be positive (null: no limit)")
    if config.max_error_rate is not None and not 0 <= config.max_error_rate <= 1:
        raise ConfigError(f"{source}: 'max_error_rate' must be between 0 and 1 (a fraction of rows; null: no gate)")
    retry = set(config.retry_errors) - {"all"}
    if retry:
        try:
            parse_reasons(",".join(retry))
        except ValueError as exc:
            raise ConfigError(f"{source}: 'retry_errors': {exc}") from None
    if config.transient_attempts < 1:
        raise ConfigError(f"{source}: 'transient_attempts' must be at least 1")
    if config.batch_timeout_factor < 1 or config.batch_timeout_min_s <= 0 or config.worker_start_timeout_s <= 0:
        raise ConfigError(f"{source}: 'batch_timeout_factor' must be at least 1, 'batch_timeout_min_s' and "
                          "'worker_start_timeout_s' positive")
    if not config.tasks and not config.custom_tasks:
        raise ConfigError(f"{source}: no tasks to run")
    _check_thresholds(config, source)
    known_tasks = set(config.tasks) | {t.name for t in config.custom_tasks}
    for task, column in config.references.items():
        if task not in known_tasks:
            raise ConfigError(f"{source}: 'references': '{task}' is not a task of this job (tasks: "
                              f"{', '.join(sorted(known_tasks))})")
        if not column:
            raise ConfigError(f"{source}: 'references': '{task}' needs a column name")
    for task in config.custom_tasks:
        if task.parser not in ("text", "list"):
            raise ConfigError(f"{source}: custom task '{task.name}' parser must be 'text' or 'list'")
        if task.max_new_tokens < 1:
            raise ConfigError(f"{source}: custom task '{task.name}' needs max_new_tokens >= 1")
        if not task.name.isidentifier():
            raise ConfigError(f"{source}: custom task name '{task.name}' must be a plain identifier")


def _check_thresholds(config: Config, source: str) -> None:
    """Thresholds are probabilities, for configured labels, and only mean something when scored."""
    thresholds = {**config.moderation_thresholds, "moderation_threshold": config.moderation_threshold}
    for label, value in thresholds.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{source}: moderation threshold for '{label}' must be in [0, 1], got {value!r}")
    labels = {label.casefold() for label in config.moderation_labels}
    unknown = sorted(label for label in config.moderation_thresholds if label.casefold() not in labels)
    if unknown:
        raise ConfigError(f"{source}: 'moderation_thresholds' names {unknown}, which are not in moderation_labels")
    if config.moderation_thresholds and config.moderation_mode != "scored":
        raise ConfigError(f"{source}: 'moderation_thresholds' needs moderation_mode: scored (generated answers "
                          "have no score to threshold)")


def from_mapping(data: dict, source: str = "config") -> Config:
    hints = typing.get_type_hints(Config)
    known = {f.name for f in dataclasses.fields(Config)} - INTERNAL_FIELDS
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; known keys are {sorted(known)}")
    values = {k: _coerce(k, v, hints[k], source) for k, v in data.items()}
    config = Config(**values)
    _check(config, source)
    return config


def load(path: str | Path | None) -> Config:
    """Load a job file; None gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read job file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a job file is a mapping of keys to values")
    return from_mapping(data, source=str(path))
