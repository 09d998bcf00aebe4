"""Precompiling every declared graph, and MindSpore's compile cache across processes.

The cache is keyed by the order graphs compile in a process, so the engine compiles all of them at
load in declared order: a second process that meets its buckets in another data order must still
get the right graphs (this failed, with every row a model_error, before precompiling).
"""

import json
import os
import subprocess
import sys
from pathlib import Path


from tests.model.conftest import features_for
from tests.model.test_reference import BUCKETS, BUDGETS, QUESTIONS, clips_for, load_model, make_generator

REPO = Path(__file__).resolve().parents[2]

GENERATE = """
import json, sys
from transformers import WhisperFeatureExtractor
from pipeline.config import Config
from pipeline.model.engine import MindSporeModel
from pipeline.model.model_plan import plan_model
from pipeline.plan import batch_sizes_for_budget
from pipeline.tasks.catalog import resolve_tasks
from tests.model.test_reference import clips_for
from tests.model.conftest import features_for

model_dir, cache, order = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
config = Config(model=model_dir, device="cpu", buckets_s=(5.0, 10.0, 30.0), max_batch=2, tasks=("caption", "events"),
                max_new_tokens={"caption": 5, "events": 5})
plan = plan_model(config, resolve_tasks(config), "cpu", batch_sizes_for_budget)
model = MindSporeModel(plan, None if cache == "none" else cache, cpu_threads=1)
extractor = WhisperFeatureExtractor.from_pretrained(model_dir)
out = {}
for bucket in order:
    clips = clips_for(float(bucket))[:2]
    features, valid = features_for(extractor, clips, plan.declared[float(bucket)].frames)
    out[bucket] = model.generate(float(bucket), features, valid, ["a", "b"][: len(clips)]).texts
print("RESULT" + json.dumps({"texts": out, "compiled": model.graphs_compiled}))
"""


def test_precompile_compiles_each_declared_graph_once(checkpoint_dir, reference, mindspore_cpu):
    model_dir = checkpoint_dir("small-instruct")
    ref = reference(model_dir)
    spec, model = load_model(model_dir)
    eager, _ = make_generator(model_dir, ref, spec, model, QUESTIONS[:2], BUDGETS[:2])
    eager.precompile()
    assert eager.graphs_compiled == 3 * len(BUCKETS)
    lazy, _ = make_generator(model_dir, ref, spec, model, QUESTIONS[:2], BUDGETS[:2])
    clips = clips_for(10.0)
    features, valid = features_for(ref.processor.feature_extractor, clips, eager.declared[10.0].frames)
    assert eager.generate(10.0, features, valid, ["x"]).tokens == lazy.generate(10.0, features, valid, ["x"]).tokens
    assert eager.graphs_compiled == 3 * len(BUCKETS)


def _run(script_dir, model_dir, cache, order):
    # A script file, not `python -c`: MindSpore's compile cache hashes the entry script.
    script = script_dir / "generate.py"
    script.write_text(GENERATE)
    # Each run is what it says: no cache switched on in the caller's environment leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MS_COMPILER_CACHE")}
    done = subprocess.run([sys.executable, str(script), str(model_dir), str(cache), order], cwd=REPO,
                          env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
    # MindSpore logs this line for every graph it loads from the cache instead of compiling.
    return {**json.loads(line[len("RESULT"):]), "cache_hits": done.stderr.count("Use the compilation cache")}


def test_compile_cache_serves_another_process_in_another_order(checkpoint_dir, tmp_path):
    model_dir = checkpoint_dir("small-instruct")
    cache = tmp_path / "cache"
    uncached = _run(tmp_path, model_dir, "none", "5.0,30.0")
    cold = _run(tmp_path, model_dir, cache, "5.0,30.0")
    assert list(cache.rglob("*.mindir")), "the cache folder stayed empty"
    warm = _run(tmp_path, model_dir, cache, "30.0,10.0,5.0")
    for run in (cold, warm):
        assert run["texts"]["5.0"] == uncached["texts"]["5.0"]
    assert warm["texts"]["30.0"] == uncached["texts"]["30.0"]
    assert cold["compiled"] == warm["compiled"] == 3 * 3
    assert (uncached["cache_hits"], cold["cache_hits"], warm["cache_hits"]) == (0, 0, 9)
