"""quality.json against an independent computation of the issue's definitions (within 1e-6)."""

import json
import unicodedata

import jiwer
import pyarrow as pa
import pytest

from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.report import write_report
from pipeline.report.quality import normalise, tag_set
from pipeline.testing.synthetic_out import write_out

ROWS = [
    # id, status, language, transcript, ref_text, events, ref_tags
    ("a", "ok", "en", "Hello, world! It's 5 o'clock.", "hello world its five o clock", ["speech", "Music "], ["speech"]),
    ("b", "ok", "en", "good morning", "Good   morning, everyone…", ["dog barking"], "dog barking, speech"),
    ("c", "ok", None, "bonjour a tous", "Bonjour à tous", [], ["music"]),
    ("d", "ok", "de", None, "guten Tag", None, ["wind", ""]),
    ("e", "ok", "de", "guten tag", "¿?!… —", ["rain"], None),  # normalised reference empty: left out
    ("f", "error", None, None, "never compared", None, ["speech"]),
    ("g", "partial", "en", "half of it", "half of it", ["speech"], ["speech"]),  # not ok: left out
    ("h", "ok", "zh", "你好 世界", "你好，世界。", ["Speech", "speech"], ["speech", "laughter"]),
    ("i", "ok", "en", "so it goes", None, ["applause"], []),
]


def table():
    columns = list(zip(*ROWS))
    n = len(ROWS)
    ref_tags = [",".join(v) if isinstance(v, list) else v for v in columns[6]]  # the manifest wrote a string
    return pa.table({
        "id": pa.array(columns[0]), "audio": pa.array([f"audio/{i}.wav" for i in columns[0]]),
        "status": pa.array(columns[1]), "error": pa.array([None if s == "ok" else "model_error" for s in columns[1]]),
        "error_detail": pa.array([None if s == "ok" else "boom" for s in columns[1]]),
        "duration_s": pa.array([1.5] * n), "n_segments": pa.array([1] * n, pa.int32()),
        "silent": pa.array([False] * n), "caption": pa.array(["a sound"] * n),
        "events": pa.array(columns[5], pa.list_(pa.string())), "transcript": pa.array(columns[3], pa.string()),
        "language": pa.array(columns[2], pa.string()), "moderation": pa.array([[]] * n, pa.list_(pa.string())),
        "raw": pa.nulls(n, pa.map_(pa.string(), pa.string())), "manifest_language": pa.nulls(n, pa.string()),
        "ref_text": pa.array(columns[4], pa.string()), "ref_tags": pa.array(ref_tags, pa.string()),
        "ref_caption": pa.array(["a sound", None, "noise", None, None, None, None, "x", None]),
    })


# --- the independent computation: the definitions, written out plainly ----------------

def independent_normalise(text):
    spaced = "".join(" " if unicodedata.category(c).startswith(("P", "S")) else c for c in text.lower())
    return " ".join(spaced.split())


def levenshtein(a, b):
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def expected_transcript():
    totals = {}
    for item_id, status, language, hyp, ref, *_ in ROWS:
        if status != "ok" or ref is None or not independent_normalise(ref):
            continue
        r, h = independent_normalise(ref), independent_normalise(hyp or "")
        for key in ("all", language or "unknown"):
            t = totals.setdefault(key, [0, 0, 0, 0, 0])
            t[0] += 1
            t[1] += levenshtein(r.split(), h.split())
            t[2] += len(r.split())
            t[3] += levenshtein(r, h)
            t[4] += len(r)
    figures = {k: {"rows": t[0], "wer": t[1] / t[2], "cer": t[3] / t[4]} for k, t in totals.items()}
    return {**figures.pop("all"), "by_language": figures}


def expected_events():
    tp = fp = fn = rows = 0
    for item_id, status, _, _, _, events, ref in ROWS:
        if status != "ok" or ref is None:
            continue
        ref = ref.split(",") if isinstance(ref, str) else ref
        labels = {t.strip().lower() for t in events or [] if t.strip()}
        wanted = {t.strip().lower() for t in ref if t.strip()}
        rows += 1
        tp, fp, fn = tp + len(labels & wanted), fp + len(labels - wanted), fn + len(wanted - labels)
    p, r = tp / (tp + fp), tp / (tp + fn)
    return {"rows": rows, "precision": p, "recall": r, "f1": 2 * p * r / (p + r)}


def assert_close(found, expected):
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, dict):
            assert_close(found[key], value)
        elif isinstance(value, float):
            assert found[key] == pytest.approx(value, abs=1e-6), key
        else:
            assert found[key] == value, key


@pytest.fixture
def out(tmp_path):
    write_out(tmp_path / "out", table())
    return tmp_path / "out"


def test_quality_json_equals_an_independent_computation(out, capsys):
    code = main(["report", str(out), "--reference", "transcript=ref_text", "--reference", "events=ref_tags",
                 "--reference", "caption=ref_caption"])
    assert code == 0
    quality = json.loads((out / "quality.json").read_text())
    assert set(quality) == {"transcript", "events", "caption"}
    assert_close(quality["transcript"], expected_transcript())
    assert_close(quality["events"], expected_events())
    # Text tasks: the rows compared, and no score invented.
    assert quality["caption"] == {"rows": 3}
    assert quality["transcript"]["rows"] == 5 and set(quality["transcript"]["by_language"]) == {"en", "unknown", "de",
                                                                                                  "zh"}
    printed = capsys.readouterr().out
    assert "quality.json" in printed and "transcript: 5 rows" in printed


def test_corpus_figures_equal_jiwers():
    pairs = [(independent_normalise(ref), independent_normalise(hyp or "")) for _, status, _, hyp, ref, *_ in ROWS
             if status == "ok" and ref is not None and independent_normalise(ref)]
    refs, hyps = zip(*pairs)
    expected = expected_transcript()
    assert jiwer.wer(list(refs), list(hyps)) == pytest.approx(expected["wer"], abs=1e-12)
    assert jiwer.cer(list(refs), list(hyps)) == pytest.approx(expected["cer"], abs=1e-12)


def test_normalisation_and_tag_sets():
    assert normalise("  Hello,\tWORLD!  ") == "hello world"
    assert normalise("C'est 5€ — «ça»") == "c est 5 ça"
    assert normalise("a+b=c ~ d") == "a b c d"  # symbols (Sm) too
    assert normalise("¿?!…") == ""
    text = "".join(chr(c) for c in range(0x20, 0x3000))
    assert normalise(text) == independent_normalise(text)
    assert tag_set([" Speech", "speech", "", None, "Dog Barking "]) == {"speech", "dog barking"}
    assert tag_set("rain, , Wind") == {"rain", "wind"}
    assert tag_set('["Rain", "dog, barking"]') == {"rain", "dog, barking"}  # a JSON array written as text
    assert tag_set("[not json, rain") == {"[not json", "rain"}
    assert tag_set(None) == frozenset()


def test_the_jobs_references_make_every_report_compare(out):
    run = json.loads((out / "run.json").read_text())
    run["config"]["references"] = {"transcript": "ref_text"}
    (out / "run.json").write_text(json.dumps(run))
    written = write_report(out)
    assert set(written.quality) == {"transcript"}
    assert_close(written.quality["transcript"], expected_transcript())
    page = (out / "report.html").read_text()
    assert f'data-figure="quality:transcript:wer">{expected_transcript()["wer"]:.4f}' in page


@pytest.mark.parametrize("option, message", [
    ("transcript=no_such_column", "no_such_column"),
    ("speakers=ref_text", "not a task"),
    ("transcript", "TASK=COLUMN"),
])
def test_a_reference_that_cannot_be_used_is_refused(out, option, message, capsys):
    assert main(["report", str(out), "--reference", option]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "quality.json").exists()
    with pytest.raises(UserError, match="no_such_column"):
        write_report(out, {"events": "no_such_column"})
