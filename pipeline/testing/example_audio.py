"""Regenerate the example manifest: manifests/example.parquet and the clips in manifests/audio/.

    python -m pipeline.testing.example_audio [manifests]

Speech is synthesised with espeak-ng (`apt-get install espeak-ng`); music and environmental sound
are synthesised here with numpy, seeded, so reruns give the same clips. The generated files are
committed, so nothing else in the project needs espeak-ng. Formats are mixed on purpose (WAV,
FLAC, OGG/Vorbis, Opus, MP3; mono and stereo; 16, 22.05, 44.1 and 48 kHz) so the example run goes
through every decoder path and the resampler.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import soxr

from pipeline.intake import audio

SPEECH_RATE = 16_000
SENTENCES = [  # the long clip: sentences with real pauses, so segmentation has somewhere to cut
    "Every morning, the old lighthouse keeper climbed the stairs to check the lamp.",
    "He counted the steps out loud, one hundred and twelve of them.",
    "From the top he could see the fishing boats leaving the harbour.",
    "On clear days the mountains across the bay looked close enough to touch.",
    "In the afternoon he wrote down the weather in a thick blue notebook.",
    "Wind from the west, light rain, and a calm sea.",
    "At night the beam swept across the water every ten seconds.",
    "Sailors said they could set their watches by it.",
    "When the keeper finally retired, the town gave him a small brass bell.",
    "He hung it by his door, and rang it every evening at sunset.",
]
PAUSES_S = [1.2, 0.9, 1.5, 1.0, 2.0, 0.8, 1.4, 1.1, 1.2]  # the 2 s one falls near the 30 s mark


def speak(text: str, voice: str = "en-us", words_per_minute: int = 150) -> np.ndarray:
    """espeak-ng speech as 16 kHz float32 (argument list, no shell)."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp, "speech.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(wav), text],
                       check=True, stdin=subprocess.DEVNULL)
        samples, rate = sf.read(wav, dtype="float32")
    return soxr.resample(samples, rate, SPEECH_RATE).astype(np.float32)


def room_tone(seconds: float, rate: int, dbfs: float, rng: np.random.Generator) -> np.ndarray:
    return (rng.standard_normal(round(seconds * rate)) * 10 ** (dbfs / 20)).astype(np.float32)


def long_story(rng: np.random.Generator) -> np.ndarray:
    pieces = [room_tone(0.5, SPEECH_RATE, -70, rng)]
    for sentence, pause in zip(SENTENCES, PAUSES_S + [0.6]):
        pieces += [speak(sentence), room_tone(pause, SPEECH_RATE, -70, rng)]
    story = np.concatenate(pieces)
    return story + room_tone(len(story) / SPEECH_RATE, SPEECH_RATE, -70, rng)


def chords(rate: int = 44_100) -> np.ndarray:
    """Stereo I-V-vi-IV progression of soft sawtooth-ish pads, 8 s."""
    roots = [261.63, 392.00, 440.00, 349.23]  # C G A F
    thirds = [4, 4, 3, 4]
    t = np.arange(2 * rate) / rate
    envelope = np.minimum(1, t / 0.05) * np.exp(-t / 1.5)
    bars = []
    for root, third in zip(roots, thirds):
        notes = [root, root * 2 ** (third / 12), root * 2 ** (7 / 12), root / 2]
        tone = sum(np.sin(2 * np.pi * f * k * t) / k for f in notes for k in (1, 2, 3))
        bars.append(tone * envelope)
    mono = np.concatenate(bars)
    mono = 0.5 * mono / np.max(np.abs(mono))
    return np.stack([mono, np.roll(mono, rate // 100)], axis=1).astype(np.float32)  # a little width


def melody(rate: int = 22_050) -> np.ndarray:
    """Plucked-string melody (Karplus-Strong), 5 s."""
    rng = np.random.default_rng(1)
    notes = [659.25, 587.33, 523.25, 587.33, 659.25, 659.25, 659.25, 0, 587.33, 587.33, 587.33, 0]
    step = round(0.4 * rate)
    out = np.zeros(step * len(notes) + rate, np.float32)
    for i, freq in enumerate(notes):
        if not freq:
            continue
        period = round(rate / freq)
        buffer = rng.uniform(-1, 1, period)
        pluck = np.empty(rate)
        for n in range(rate):  # the averaging loop is what makes it sound like a string
            pluck[n] = buffer[n % period]
            buffer[n % period] = 0.996 * 0.5 * (buffer[n % period] + buffer[(n + 1) % period])
        out[i * step: i * step + rate] += 0.4 * pluck
    return (0.8 * out / np.max(np.abs(out))).astype(np.float32)


def rain(rng: np.random.Generator, rate: int = 48_000, seconds: float = 8.0) -> np.ndarray:
    """Stereo rain: low-passed noise bed plus scattered drop clicks."""
    n = round(seconds * rate)
    channels = []
    for _ in range(2):
        bed = np.convolve(rng.standard_normal(n), np.ones(8) / 8, mode="same") * 0.08
        drops = np.zeros(n)
        at = rng.integers(0, n - 400, 600)
        decay = np.exp(-np.arange(400) / 40) * np.sin(np.arange(400) * 0.9)
        for start, gain in zip(at, rng.uniform(0.05, 0.3, len(at))):
            drops[start: start + 400] += gain * decay
        channels.append(bed + drops)
    stereo = np.stack(channels, axis=1)
    return (0.7 * stereo / np.max(np.abs(stereo))).astype(np.float32)


def dog_barks(rng: np.random.Generator, rate: int = SPEECH_RATE) -> np.ndarray:
    """Bark-like bursts: a falling harmonic tone with a noisy onset, in a bark-bark ... bark rhythm."""
    out = room_tone(4.0, rate, -55, rng)
    for at in (0.3, 0.65, 1.8, 2.15, 2.5, 3.4):
        length = round(rng.uniform(0.16, 0.24) * rate)
        t = np.arange(length) / rate
        pitch = 520 - 900 * t  # a falling pitch is what reads as a bark
        phase = 2 * np.pi * np.cumsum(pitch) / rate
        tone = sum(np.sin(k * phase) / k for k in range(1, 6))
        noise = rng.standard_normal(length) * np.exp(-t / 0.02)
        envelope = np.minimum(1, t / 0.01) * np.exp(-t / 0.07)
        start = round(at * rate)
        out[start: start + length] += 0.6 * envelope * (tone + 0.8 * noise)
    return (0.8 * out / np.max(np.abs(out))).astype(np.float32)


def generate(folder: Path) -> Path:
    """Write the clips under folder/audio and the manifest folder/example.parquet."""
    rng = np.random.default_rng(0)
    clips = folder / "audio"
    clips.mkdir(parents=True, exist_ok=True)
    # (id, file, samples, rate, soundfile options, language, source, description)
    rows = [
        ("speech_greeting", "speech_greeting.wav", speak("Hello, and welcome to the audio annotation demo."),
         SPEECH_RATE, {"subtype": "PCM_16"}, "en", "espeak-ng", "short English speech"),
        ("speech_directions", "speech_directions.mp3",
         speak("Turn left at the second traffic light, then go straight on for two hundred metres.",
               voice="en-gb"),
         SPEECH_RATE, {"format": "MP3", "compression_level": 0.5}, "en", "espeak-ng",
         "English speech, British voice"),
        ("music_chords", "music_chords.ogg", chords(), 44_100, {"format": "OGG", "subtype": "VORBIS",
         "compression_level": 0.9}, None, "synthesised", "stereo chord progression"),
        ("music_melody", "music_melody.flac", melody(), 22_050, {"subtype": "PCM_16"}, None,
         "synthesised", "plucked-string melody"),
        ("rain", "rain.opus", rain(rng), 48_000, {"format": "OGG", "subtype": "OPUS",
         "compression_level": 0.9}, None, "synthesised", "stereo rain on a roof"),
        ("dog_barks", "dog_barks.flac", dog_barks(rng), SPEECH_RATE, {"subtype": "PCM_16"}, None,
         "synthesised", "dog-bark-like bursts"),
        ("room_tone", "room_tone.flac", room_tone(2.0, SPEECH_RATE, -80, rng), SPEECH_RATE,
         {"subtype": "PCM_16"}, None, "synthesised", "near silence (flagged silent)"),
        ("long_story", "long_story.opus", long_story(rng), SPEECH_RATE, {"format": "OGG", "subtype": "OPUS",
         "compression_level": 0.95}, "en", "espeak-ng", "about 50 s of speech with pauses between sentences"),
    ]
    for _, name, samples, rate, options, *_ in rows:
        sf.write(clips / name, samples, rate, **options)
    durations = []
    for _, name, *_ in rows:
        info = audio.probe(clips / name)
        if not isinstance(info, audio.AudioInfo):
            raise SystemExit(f"generated {name} does not read back: {info}")
        durations.append(round(info.duration_s, 3))
    table = pa.table({
        "id": [r[0] for r in rows],
        "audio": [f"audio/{r[1]}" for r in rows],
        "duration_s": pa.array(durations, pa.float64()),
        "language": pa.array([r[5] for r in rows], pa.string()),
        "source": [r[6] for r in rows],
        "description": [r[7] for r in rows],
    })
    manifest = folder / "example.parquet"
    pq.write_table(table, manifest)
    return manifest


if __name__ == "__main__":
    written = generate(Path(sys.argv[1] if len(sys.argv) > 1 else "manifests"))
    for path in sorted(written.parent.joinpath("audio").iterdir()):
        print(f"{path.stat().st_size / 1024:7.1f} KB  {path}")
    print(f"wrote {written}")
