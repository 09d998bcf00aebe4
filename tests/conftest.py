"""Shared fixtures."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


@pytest.fixture
def write_tone(tmp_path):
    """write_tone(name, seconds=1.0, rate=16000, channels=1, freq=440.0, amplitude=0.5, **soundfile
    options) writes a sine tone under tmp_path (subfolders allowed) and returns its path."""

    def write(name, seconds=1.0, rate=16_000, channels=1, freq=440.0, amplitude=0.5, **options):
        t = np.arange(round(seconds * rate)) / rate
        samples = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
        if channels > 1:
            samples = np.stack([samples] * channels, axis=1)
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, samples, rate, **options)
        return path

    return write


CHECKPOINTS = {
    # (size, flavour, seed): the instruct model with plain multi-head attention, and the base
    # model with grouped-query attention and odd sizes.
    "small-instruct": ("small", "instruct", 0),
    "odd-base": ("odd", "base", 3),
}


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory):
    from pipeline.testing.tiny_model import write_tiny_checkpoint

    made = {}

    def get(name: str) -> Path:
        if name not in made:
            size, flavour, seed = CHECKPOINTS[name]
            made[name] = write_tiny_checkpoint(tmp_path_factory.mktemp(name), seed=seed, flavour=flavour, size=size)
        return made[name]

    return get


@pytest.fixture(scope="session")
def ray_cluster():
    """One Ray for the whole session, with two fake NPUs: Ray sets ASCEND_RT_VISIBLE_DEVICES for
    actors that ask for one exactly as on an Ascend host."""
    import ray

    # Two model workers and two prepare tasks (one CPU each) at a time.
    ray.init(num_cpus=4, resources={"NPU": 2}, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()
