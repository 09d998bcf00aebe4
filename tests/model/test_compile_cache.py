"""MindSpore's compile cache across processes, and one compile per node.

The cache is keyed by the order graphs compile in a process, so the engine compiles all four at
load in a fixed order; workers of one node share the folder, and a lock makes the first compile
while the others wait and load what it wrote.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

GENERATE = """
import json, sys
from transformers import WhisperFeatureExtractor
from pipeline.config import Config
from pipeline.intake.features import clip_features
from pipeline.model.engine import MindSporeModel
from pipeline.model.interface import ClipInput
from pipeline.model.model_plan import plan_model
from pipeline.tasks.catalog import resolve_tasks
from tests.model.conftest import noise_clip

model_dir, cache = sys.argv[1], sys.argv[2]
config = Config(model=model_dir, device="cpu", decode_slots=2, tasks=("caption", "events"),
                max_new_tokens={"caption": 5, "events": 5})
plan = plan_model(config, resolve_tasks(config), "cpu", 4 * 2**30)
model = MindSporeModel(plan, None if cache == "none" else cache, cpu_threads=1)
extractor = WhisperFeatureExtractor.from_pretrained(model_dir)
clips = []
for i, seconds in enumerate((1.0, 12.0, 29.5)):
    features, valid = clip_features(extractor, noise_clip(seconds, seed=i))
    clips.append(ClipInput(str(i), features, valid))
print("RESULT" + json.dumps({"texts": model.generate(clips).texts, "compiled": model.graphs_compiled}))
"""


def _start(script_dir: Path, model_dir, cache):
    # A script file, not `python -c`: MindSpore's compile cache hashes the entry script.
    script = script_dir / "generate.py"
    script.write_text(GENERATE)
    # Each run is what it says: no cache switched on in the caller's environment leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MS_COMPILER_CACHE")}
    return subprocess.Popen([sys.executable, str(script), str(model_dir), str(cache)], cwd=REPO,
                            env={**env, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _result(process) -> dict:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    line = next(line for line in stdout.splitlines() if line.startswith("RESULT"))
    # MindSpore logs this line for every graph it loads from the cache instead of compiling.
    return {**json.loads(line[len("RESULT"):]), "cache_hits": stderr.count("Use the compilation cache")}


def test_a_warm_cache_serves_every_graph_with_the_same_results(checkpoint_dir, tmp_path):
    model_dir = checkpoint_dir("small-instruct")
    cache = tmp_path / "cache"
    uncached = _result(_start(tmp_path, model_dir, "none"))
    cold = _result(_start(tmp_path, model_dir, cache))
    assert list(cache.rglob("*.mindir")), "the cache folder stayed empty"
    warm = _result(_start(tmp_path, model_dir, cache))
    assert uncached["texts"] == cold["texts"] == warm["texts"]
    assert uncached["compiled"] == cold["compiled"] == warm["compiled"] == 4
    assert (uncached["cache_hits"], cold["cache_hits"], warm["cache_hits"]) == (0, 0, 4)


def test_workers_starting_together_compile_once(checkpoint_dir, tmp_path):
    model_dir = checkpoint_dir("small-instruct")
    cache = tmp_path / "cache"
    first, second = _start(tmp_path, model_dir, cache), _start(tmp_path, model_dir, cache)
    runs = [_result(first), _result(second)]
    assert runs[0]["texts"] == runs[1]["texts"]
    # One process compiled all four graphs into the cache, the other loaded all four.
    assert sorted(run["cache_hits"] for run in runs) == [0, 4]
