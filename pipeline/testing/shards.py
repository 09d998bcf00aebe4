"""Shards of real recordings, as audio datasets keep them, for tests and the memory benchmark: a
Parquet file in the Hugging Face layout (`audio` a struct {bytes, path}, row groups of 100 rows,
the features in the schema metadata under `huggingface`) and WebDataset tar shards
(`KEY.flac` + `KEY.json` + `KEY.txt`).

The recordings are the example manifest's clips (manifests/audio: WAV, FLAC, MP3, OGG/Vorbis,
Opus), plus an M4A (AAC) made from one of them with ffmpeg when ffmpeg is installed.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

EXAMPLE_AUDIO = Path(__file__).resolve().parents[2] / "manifests" / "audio"
AUDIO_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
HF_FEATURES = {"info": {"features": {"audio": {"_type": "Audio"}, "id": {"dtype": "string", "_type": "Value"}}}}


def recordings(with_m4a: bool = True) -> dict[str, bytes]:
    """File name -> bytes of each example recording (and `speech_greeting_aac.m4a` when ffmpeg is
    installed and with_m4a)."""
    found = {p.name: p.read_bytes() for p in sorted(EXAMPLE_AUDIO.iterdir()) if p.is_file()}
    if with_m4a and shutil.which("ffmpeg"):
        found["speech_greeting_aac.m4a"] = m4a_of(EXAMPLE_AUDIO / "speech_greeting.wav")
    return found


def m4a_of(source: Path) -> bytes:
    """AAC in an MP4 container, made by ffmpeg from a recording."""
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp, source.stem + ".m4a")
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(source), "-c:a", "aac", str(target)],
                       check=True, stdin=subprocess.DEVNULL)
        return target.read_bytes()


def write_hf_parquet(path: Path, audio: list[dict | bytes | None], columns: dict[str, list] | None = None,
                     row_group_size: int = 100, binary: bool = False) -> Path:
    """A Parquet file whose `audio` column is the Hugging Face struct (a dict {bytes, path} or None
    per row), or plain binary with binary=True (bytes or None per row); `columns` are added as
    they are (e.g. an `id` or a pass-through column)."""
    kind = pa.binary() if binary else AUDIO_STRUCT
    table = pa.table({**(columns or {}), "audio": pa.array(audio, kind)})
    table = table.replace_schema_metadata({b"huggingface": json.dumps(HF_FEATURES).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar shard of these members, in this order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def webdataset_members(clips: dict[str, bytes], prefix: str = "", metadata: bool = True) -> list[tuple[str, bytes]]:
    """KEY.<ext> (+ KEY.json with the clip's name and format, + KEY.txt) for each clip, keyed by
    the clip's name without its extension under `prefix`."""
    members = []
    for name, data in clips.items():
        stem, ext = name.rsplit(".", 1)
        key = f"{prefix}{stem}"
        members.append((f"{key}.{ext}", data))
        if metadata:
            members.append((f"{key}.json", json.dumps({"source": name, "format": ext}).encode()))
            members.append((f"{key}.txt", f"the {stem.replace('_', ' ')} clip".encode()))
    return members
