"""The reference side of `make bench`: transformers_script.py run as its own process on the same audio,
timed whole (interpreter, imports, loading, generation), as a user compares it with `make annotate`.

The script reads a folder of 16 kHz clips, as a user's would. The pipeline cut the long files into
segments; each segment is written as its own clip (16-bit, which is what the recordings hold: the
samples are checked to come back exactly), so both sides see the same audio.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline import shapes

SCRIPT = Path(__file__).with_name("transformers_script.py")


def write_clips(clips: list[np.ndarray], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, samples in enumerate(clips):
        path = folder / f"clip-{n:04d}.flac"
        sf.write(path, samples, shapes.SAMPLE_RATE, subtype="PCM_16")
        back, _ = sf.read(path, dtype="float32")
        if not np.array_equal(back, samples):
            raise RuntimeError(f"{path}: the clip does not survive 16-bit storage; the reference would see other audio")
        paths.append(path)
    return paths


def run_reference(model_dir, clips: list[np.ndarray], prompts: list[str], budgets: list[int], eos_ids, work: Path,
                  batch: int = 8, threads: int | None = None) -> dict:
    """clips: 16 kHz mono audio; prompts: the exact prompt text per task (one <|AUDIO|>).
    -> {"texts": [clip][task], "wall_s" (the process, start to exit), the script's own phases
    (imports_s, load_s, read_s, generate_s), counts of the work computed}."""
    paths = write_clips(clips, work / "reference-clips")
    job = {"model": str(model_dir), "clips": [str(p) for p in paths], "prompts": prompts, "max_new_tokens": budgets,
           "eos_token_ids": list(eos_ids), "batch": batch, "threads": threads}
    job_path, out_path = work / "reference-job.json", work / "reference-out.json"
    job_path.write_text(json.dumps(job))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(SCRIPT), str(job_path), str(out_path)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"the transformers script failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return {**json.loads(out_path.read_text()), "wall_s": wall}
