"""Shared fixtures."""

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
