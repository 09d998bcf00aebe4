"""report.html in a real browser: headless Chromium (Debian's `chromium`, driven by playwright),
one browser for the module. Rendered without script or errors, its numbers equal run.json and
quality.json, its charts drawn, for a mixed OUT, one with no ok row, one with only errors, an
empty one and one of 100k rows."""

import json
import shutil
import time

import pyarrow.compute as pc
import pytest

from pipeline.report import write_report
from pipeline.testing.synthetic_out import annotations, write_out

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REFERENCES = {"transcript": "ref_text", "events": "ref_tags"}


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def open_page(browser, out):
    """The page as a browser shows it, with every script error and console error it raised."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    problems = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}")
            if message.type in ("error", "warning") else None)
    page.on("request", lambda request: problems.append(f"request: {request.url}")
            if not request.url.startswith("file://") else None)
    page.goto((out / "report.html").resolve().as_uri())
    page.wait_for_load_state("load")
    return page, problems


def figure(page, name):
    return page.locator(f'[data-figure="{name}"]').inner_text()


def check_self_contained(page, problems, out):
    html = (out / "report.html").read_text()
    assert problems == []
    assert page.locator("script").count() == 0 and "<script" not in html
    assert "http://" not in html and "https://" not in html
    for attribute in ("src", "href"):
        for value in page.eval_on_selector_all(f"[{attribute}]", f"els => els.map(e => e.getAttribute('{attribute}'))"):
            assert value.startswith("#") or "://" not in value, value


def check_counts(page, run):
    counts = run["counts"]
    assert figure(page, "rows") == str(counts["rows"])
    for status, count in counts["rows_by_status"].items():
        assert figure(page, f"status:{status}") == str(count)
    for reason, count in counts["rows_by_error"].items():
        assert figure(page, f"reason:{reason}") == str(count)
    assert figure(page, "audio_hours_annotated") == f'{run["audio_hours_annotated"]} h'
    assert figure(page, "wall_s") == f'{run["this_run"]["wall_s"]} s'
    assert figure(page, "throughput") == f'{run["this_run"]["throughput_audio_s_per_s"]} audio-s/s'
    body = page.inner_text("body")
    assert str(counts["rows"]) in body


def drawn(page):
    """Each chart's title and how many marks (bars of some width, lines with points) it has."""
    return page.eval_on_selector_all("svg.chart", """charts => charts.map(c => [c.querySelector('title').textContent,
        [...c.querySelectorAll('rect')].filter(r => r.getBBox().width > 0 && r.getBBox().height > 0).length
        + [...c.querySelectorAll('polyline')].filter(p => p.points.numberOfItems > 1).length])""")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed") / "out"
    run = write_out(out, annotations(3000, seed=11, logprob=True))
    write_report(out, REFERENCES)
    return out, run


def test_a_mixed_out_renders_its_numbers_and_charts(browser, mixed, tmp_path):
    out, run = mixed
    page, problems = open_page(browser, out)
    check_self_contained(page, problems, out)
    check_counts(page, run)
    quality = json.loads((out / "quality.json").read_text())
    body = page.inner_text("body")
    for task, figures in quality.items():
        assert figure(page, f"quality:{task}:rows") == str(figures["rows"])
        for key in ("wer", "cer", "precision", "recall", "f1"):
            if key in figures:
                shown = figure(page, f"quality:{task}:{key}")
                assert shown == f"{figures[key]:.4f}" and shown in body
        for language, found in figures.get("by_language", {}).items():
            assert figure(page, f"quality:{task}:by_language:{language}:wer") == f'{found["wer"]:.4f}'
    charts = dict(drawn(page))
    assert charts["rows by status"] == 3 and charts["rows by error reason"] >= 3
    assert charts["rows by duration"] >= 5
    assert charts["audio seconds per second, per worker"] >= 2  # one line per worker
    assert charts["padding and decode efficiency"] >= 3
    assert charts["most frequent events"] >= 10 and charts["rows by detected language"] >= 5
    assert all(charts[f"{task} mean log-probability"] >= 3 for task in ("caption", "events", "transcript"))
    # Rows: the sample and each task's lowest-confidence rows, with the worst rows per compared task.
    assert page.locator("#sample ~ table tbody tr").count() >= 50
    assert "lowest-confidence" in body and "worst rows" in body
    shot = tmp_path / "mixed.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000  # a page of charts and tables, not a blank one
    page.close()


@pytest.mark.parametrize("what", ["no ok row", "only errors", "no rows"])
def test_outs_without_labels_render(browser, tmp_path, what):
    table = annotations(0 if what == "no rows" else 400, seed=12, ok_share=0.0)
    if what == "only errors":
        table = table.filter(pc.equal(table.column("status"), "error"))
    out = tmp_path / "out"
    run = write_out(out, table)
    written = write_report(out, REFERENCES)
    page, problems = open_page(browser, out)
    check_self_contained(page, problems, out)
    check_counts(page, run)
    assert "ok" not in run["counts"]["rows_by_status"]
    assert written.quality["transcript"] == {"rows": 0, "wer": None, "cer": None, "by_language": {}}
    assert figure(page, "quality:transcript:rows") == "0"
    charts = dict(drawn(page))
    if what == "no rows":
        assert "No rows yet" in page.inner_text("body")
    else:
        assert charts["rows by status"] >= 1 and charts["rows by error reason"] >= 3
    page.close()


def test_a_100k_row_out(browser, tmp_path):
    out = tmp_path / "out"
    started = time.perf_counter()
    run = write_out(out, annotations(100_000, seed=13, logprob=True))
    built = time.perf_counter()
    written = write_report(out, REFERENCES)
    print(f"\n100k rows: synthetic OUT {built - started:.1f} s; report {written.seconds:.2f} s, "
          f"{written.page_bytes / 1024:.0f} KB")
    page, problems = open_page(browser, out)
    check_self_contained(page, problems, out)
    check_counts(page, run)
    assert written.page_bytes < 400_000  # sampled: the page does not grow with the rows
    assert page.locator("#sample ~ table tbody tr").count() >= 50
    page.close()
