"""Shared fixtures."""

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


@pytest.fixture(scope="session", autouse=True)
def fake_aws_credentials():
    """Tests talk to a local S3 server only (tests/storage): fake credentials, no instance-metadata
    look-ups, nothing from the developer's own AWS set-up. For the whole session and before Ray
    starts, because Ray's worker processes inherit the environment of the process that starts Ray."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                     "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_MAX_ATTEMPTS"):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        patch.setenv("AWS_CONFIG_FILE", os.devnull)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        yield


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
    # (size, flavour, seed[, generation_config.json values]): the instruct model with plain
    # multi-head attention, and the base model with grouped-query attention and odd sizes.
    "small-instruct": ("small", "instruct", 0),
    "odd-base": ("odd", "base", 3),
    # Greedy with a repetition penalty, and two end-of-sequence ids (the instruct flavour's).
    "penalty-instruct": ("small", "instruct", 5, {"repetition_penalty": 1.3}),
    # The values Qwen2-Audio-7B-Instruct's generation_config.json publishes.
    "sampling-instruct": ("small", "instruct", 0, {"do_sample": True, "top_k": 20, "top_p": 0.5, "temperature": 0.7,
                                                   "repetition_penalty": 1.1}),
}


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory):
    from pipeline.testing.tiny_model import write_tiny_checkpoint

    made = {}

    def get(name: str) -> Path:
        if name not in made:
            size, flavour, seed, *generation = CHECKPOINTS[name]
            made[name] = write_tiny_checkpoint(tmp_path_factory.mktemp(name), seed=seed, flavour=flavour, size=size,
                                               generation=generation[0] if generation else None)
        return made[name]

    return get


@pytest.fixture(scope="session")
def ray_cluster():
    """One Ray for the whole session, with two fake NPUs: Ray sets ASCEND_RT_VISIBLE_DEVICES for
    actors that ask for one exactly as on an Ascend host."""
    import ray

    # Two model workers and two prepare tasks (one CPU each) at a time.
    ray.init(address="local", num_cpus=4, resources={"NPU": 2}, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()
