"""A model factory for tests: the real MindSpore model, whose engine stalls once between two turns
of a conversation, so that a test can kill a run there (the earlier answer done, the follow-up not
yet asked) and check what resuming gives.

"Once" is kept on disk: the first stall leaves a marker in `folder` (the test waits for it), and a
resumed run (a new process) finds it and does not stall. Lives in the package so Ray workers can
import it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StallBetweenTurns:
    folder: str
    key_prefix: str  # the clip (segment key) whose first follow-up stalls
    seconds: float = 600.0

    def __call__(self, spec):
        from pipeline.model.engine import MindSporeModel

        model = MindSporeModel(spec.plan, spec.compile_cache_root, spec.cpu_threads)
        generator = model.generator
        rule = generator.admit
        marker = Path(self.folder) / "between-turns.stalled"

        def admit(job, task):
            if job.key.startswith(self.key_prefix):
                try:
                    marker.touch(exist_ok=False)
                except FileExistsError:
                    pass
                else:
                    time.sleep(self.seconds)  # the engine thread: nothing else runs on this worker
            return rule(job, task) if rule is not None else None

        generator.admit = admit
        return model
