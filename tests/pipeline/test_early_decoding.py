"""While the model workers load, the driver decodes their first batches, but never on more CPUs
than the workers leave: decode tasks are placed by the node at once and actors through the GCS, so
decode tasks submitted all together took every CPU first, and the model worker waited for one to
free and for a new process instead of taking one of the processes Ray starts ahead."""

import ray

from pipeline.items import Batch, Item
from pipeline.run import runner


class _Pool:
    """A pool whose workers never become ready (the driver's start-up phase, frozen)."""

    def __init__(self, spec, count, use_npu, prefetch, start_timeout_s):
        self.slots, self.spec_ref, self.submitted = 1 + prefetch, None, []
        pool = self

        class Prepare:
            @staticmethod
            def remote(spec_ref, batch):
                pool.submitted.append(batch)
                return object(), object()

        self.prepare = Prepare()


def _batches(n):
    return [Batch((Item(i, f"id{i}", f"/a/{i}.wav", 0, 1, 0.0, 1.0),)) for i in range(n)]


def test_first_batches_decode_on_the_cpus_the_workers_leave(ray_cluster, monkeypatch):
    monkeypatch.setattr(runner, "WorkerPool", _Pool)
    cpus = int(ray.cluster_resources()["CPU"])
    workers, prefetch = 1, 3
    execution = runner.Execution(_batches(10), None, workers, False, prefetch, 2, lambda *a: None,
                                 runner.RunPolicy())
    assert len(execution.pool.submitted) == cpus - workers < workers * (1 + prefetch)
    for flight in execution.early:  # they finish: more are decoded, up to what the workers will hold
        flight.prepared_at = 1.0
    execution.top_up_early()
    assert len(execution.pool.submitted) == workers * (1 + prefetch)
