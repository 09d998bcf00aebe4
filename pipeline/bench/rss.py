"""`python -m pipeline.bench.rss FILE ARGS...`: run `python -m pipeline ARGS` in this process and
write its own peak resident memory (bytes; getrusage of this process only, not of the Ray processes
it starts) to FILE at exit, whatever the exit status."""

from __future__ import annotations

import resource
import sys


def main() -> int:
    target, arguments = sys.argv[1], sys.argv[2:]
    from pipeline.cli import main as pipeline_main

    try:
        code = pipeline_main(arguments)
    finally:
        with open(target, "w") as f:
            f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
    return code


if __name__ == "__main__":
    sys.exit(main())
