"""The command's process exits as soon as main() returns (cli.run skips the interpreter's teardown),
with main()'s exit code, after atexit handlers and with its output flushed; while a thread the
normal exit would join is still alive, it takes the normal exit (teardown included), which waits
for that thread."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# `manifest validate` of a missing file: a UserError, exit 2, no Ray and no model.
SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
atexit.register(lambda: print("atexit ran"))
class Teardown:  # dropped only by the interpreter's teardown, which the fast exit skips
    def __del__(self):
        print("teardown ran")
kept = Teardown()
if len(sys.argv) > 2:
    def late_write(marker):
        time.sleep(0.5)
        marker.write_text("written")
    threading.Thread(target=late_write, args=(Path(sys.argv[2]),)).start()
sys.argv = ["pipeline", "manifest", "validate", sys.argv[1]]
print("buffered, not yet flushed", end="")
from pipeline.cli import run
run()
"""


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)


def test_exit_code_output_and_atexit_handlers(tmp_path):
    result = _run(tmp_path / "missing.parquet")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error:" in result.stderr
    assert result.stdout == "buffered, not yet flushedatexit ran\n"  # and no "teardown ran": skipped


def test_a_live_thread_is_waited_for(tmp_path):
    marker = tmp_path / "marker"
    result = _run(tmp_path / "missing.parquet", marker)
    assert result.returncode == 2, result.stderr[-2000:]
    assert marker.read_text() == "written"
    assert result.stdout.endswith("atexit ran\nteardown ran\n")  # the normal exit, teardown included
