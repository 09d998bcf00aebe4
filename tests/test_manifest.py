"""Manifest validation: every way a manifest can be wrong stops the run with a message naming the
offending ids or rows; a good one comes back typed, with pass-through columns untouched."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import cli
from pipeline.intake.audio import DecodedAudio, decode, resolve_path
from pipeline.errors import UserError
from pipeline.intake.manifest_checks import read_manifest
from pipeline.intake.manifest_table import Manifest, ManifestError

EXAMPLE = Path(__file__).resolve().parent.parent / "manifests" / "example.parquet"


def write(tmp_path, columns: dict, name="m.parquet") -> Path:
    table = columns if isinstance(columns, pa.Table) else pa.table(columns)
    pq.write_table(table, tmp_path / name)
    return tmp_path / name


def error(path) -> str:
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    return str(caught.value)


def test_minimal_manifest(tmp_path):
    manifest = read_manifest(write(tmp_path, {"id": ["a", "b"], "audio": ["a.wav", "/x/b.flac"]}))
    assert isinstance(manifest, Manifest) and manifest.num_rows == 2
    assert manifest.ids == ["a", "b"] and manifest.paths == ["a.wav", "/x/b.flac"]
    assert manifest.durations == [None, None] and manifest.languages == [None, None]
    assert manifest.passthrough_columns == [] and manifest.base_dir == tmp_path


def test_optional_columns_and_passthrough_are_kept(tmp_path):
    extra = {
        "speaker": pa.array([7, None, 9], pa.int32()),
        "tags": pa.array([["x"], [], ["y", "z"]]),
        "meta": pa.array([{"k": 1}, {"k": 2}, {"k": 3}]),
    }
    path = write(tmp_path, {
        "id": ["a", "b", "c"], "audio": ["a.wav", "b.wav", "c.wav"],
        "duration_s": pa.array([1, None, 0], pa.int64()),  # ints are fine, cast to float seconds
        "language": ["en", None, "de"], **extra,
    })
    manifest = read_manifest(path)
    assert manifest.durations == [1.0, None, 0.0]
    assert manifest.languages == ["en", None, "de"]
    assert manifest.passthrough_columns == ["speaker", "tags", "meta"]
    for name, column in extra.items():
        assert manifest.table.column(name).combine_chunks().equals(column)


def test_string_flavours_are_accepted(tmp_path):
    path = write(tmp_path, {
        "id": pa.array(["a", "b"]).dictionary_encode(),  # what pandas writes for a category column
        "audio": pa.array(["a.wav", "b.wav"], pa.large_string()),
        "language": pa.array([None, None], pa.null()),
        "duration_s": pa.array([None, None], pa.null()),
    })
    manifest = read_manifest(path)
    assert manifest.ids == ["a", "b"] and manifest.paths == ["a.wav", "b.wav"]
    assert manifest.table.schema.field("id").type == pa.string()
    assert manifest.durations == [None, None]


def test_missing_or_unreadable_file(tmp_path):
    assert "does not exist" in error(tmp_path / "nope.parquet")
    assert "folder" in error(tmp_path)
    (tmp_path / "fake.parquet").write_text("id,audio\na,a.wav\n")
    assert "not a readable Parquet file" in error(tmp_path / "fake.parquet")


def test_missing_columns(tmp_path):
    message = error(write(tmp_path, {"id": ["a"], "path": ["a.wav"]}))
    assert "missing required column(s) ['audio']" in message and "'path'" in message
    message = error(write(tmp_path, {"ID": ["a"], "audio": ["a.wav"]}))
    assert "['id']" in message and "case-sensitive" in message


def test_integer_ids_are_rejected_with_a_cast_suggestion(tmp_path):
    message = error(write(tmp_path, {"id": [1, 2], "audio": ["a.wav", "b.wav"]}))
    assert "ids must be strings" in message and "astype(str)" in message and "int64" in message


@pytest.mark.parametrize("column,values,expected", [
    ("audio", [1, 2], "audio paths must be strings"),
    ("duration_s", ["1.5", "2"], "duration_s' has type string"),
    ("duration_s", [True, False], "duration_s' has type bool"),
    ("language", [1, 2], "languages must be strings"),
])
def test_wrong_column_types(tmp_path, column, values, expected):
    columns = {"id": ["a", "b"], "audio": ["a.wav", "b.wav"], column: values}
    assert expected in error(write(tmp_path, columns))


def test_null_and_empty_ids_name_their_rows(tmp_path):
    message = error(write(tmp_path, {"id": ["a", None, "c", None, ""], "audio": ["x.wav"] * 5}))
    assert "2 rows have a null id: row 1, row 3" in message
    assert "1 row has an empty id: '' (row 4)" not in message  # an empty id is shown by row
    assert "1 row has an empty id: row 4" in message


def test_duplicate_ids_are_named_with_a_count(tmp_path):
    ids = [f"id{i}" for i in range(30)] * 2 + ["solo"]
    message = error(write(tmp_path, {"id": ids, "audio": ["x.wav"] * len(ids)}))
    assert "30 ids appear more than once" in message
    assert "'id0' (2 rows)" in message and "'id9' (2 rows)" in message
    assert "'id10'" not in message and "and 20 more" in message
    assert "'solo'" not in message


def test_bad_paths_name_their_ids(tmp_path):
    message = error(write(tmp_path, {"id": ["a", "b", "c", "d"], "audio": ["a.wav", None, "", "  "]}))
    assert "1 row has a null audio path: 'b' (row 1)" in message
    assert "2 rows have an empty audio path: 'c' (row 2), 'd' (row 3)" in message


def test_bad_durations_name_their_ids_and_values(tmp_path):
    durations = [1.0, -2.0, float("nan"), float("inf"), None]
    message = error(write(tmp_path, {"id": list("abcde"), "audio": ["x.wav"] * 5, "duration_s": durations}))
    assert "1 row has a negative duration_s: 'b' (row 1: -2.0)" in message
    assert "NaN or infinite" in message and "'c' (row 2: nan)" in message and "'d' (row 3: inf)" in message
    assert "'e'" not in message  # null means unknown, which is fine


def test_every_problem_is_reported_at_once(tmp_path):
    message = error(write(tmp_path, {"id": ["a", "a", None], "audio": ["", "x.wav", "y.wav"],
                                     "duration_s": [-1.0, 1.0, 1.0]}))
    assert message.count("\n  - ") == 4


def test_no_rows_and_repeated_columns(tmp_path):
    empty = pa.table({"id": pa.array([], pa.string()), "audio": pa.array([], pa.string())})
    assert "no rows" in error(write(tmp_path, empty))
    doubled = pa.Table.from_arrays([pa.array(["a"]), pa.array(["a.wav"]), pa.array(["b"])], ["id", "audio", "id"])
    assert "appear more than once" in error(write(tmp_path, doubled))


def test_the_cli_prints_the_problem_not_a_traceback(tmp_path, capsys):
    path = write(tmp_path, {"id": [1], "audio": ["a.wav"]})
    assert cli.main(["manifest", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and "astype(str)" in err
    assert issubclass(ManifestError, UserError)
    good = write(tmp_path, {"id": ["a"], "audio": ["a.wav"]}, name="good.parquet")
    assert cli.main(["manifest", "validate", str(good)]) == 0
    assert "1 rows, valid" in capsys.readouterr().out


def test_a_million_rows_validate(tmp_path):
    """Correctness at scale (vectorised checks); speed is reported in manifests/README.md, not timed here."""
    n = 1_000_000
    ids = pa.array(np.char.add("clip", np.arange(n).astype(str)))
    durations = np.full(n, 3.0)
    durations[[17, 999_999]] = -1.0
    path = write(tmp_path, {"id": ids, "audio": ids, "duration_s": durations})
    message = error(path)
    assert "2 rows have a negative duration_s: 'clip17' (row 17: -1.0), 'clip999999'" in message


def test_example_manifest_validates_and_decodes():
    manifest = read_manifest(EXAMPLE)
    assert manifest.num_rows >= 6
    assert {"source", "description"} <= set(manifest.passthrough_columns)
    assert "en" in manifest.languages and None in manifest.languages
    assert any(d > 30 for d in manifest.durations)  # the long clip that needs segmenting
    silent = []
    for id_, path, duration in zip(manifest.ids, manifest.paths, manifest.durations):
        decoded = decode(resolve_path(path, manifest.base_dir, None))
        assert isinstance(decoded, DecodedAudio), (id_, decoded)
        assert decoded.duration_s == pytest.approx(duration, abs=0.05), id_
        if decoded.silent:
            silent.append(id_)
    assert silent == ["room_tone"]


@pytest.mark.parametrize("durations, warned", [
    ([4000, 54000, 12000], ["these look like milliseconds"]),  # whole numbers, median 12000: ms
    ([4.0, 100000.0, 30.5], ["1 row has a duration_s over 24 hours: 'b' (row 1: 100000.0)"]),
    ([4, 54, 120], []),  # whole seconds
    ([None, 3.5, 7200.0], []),  # two hours is a podcast, not a mistake
])
def test_duration_values_that_cannot_be_right_are_warned_about(tmp_path, capfd, durations, warned):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "audio": ["a.wav", "b.wav", "c.wav"],
                             "duration_s": pa.array(durations, pa.float64())}), path)
    assert cli.main(["manifest", "validate", str(path)]) == 0  # warnings, not errors: the run copes
    err = capfd.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("warning:")] == [
        line for line in err.splitlines() if any(w in line for w in warned)]
    assert all(w in err for w in warned)
