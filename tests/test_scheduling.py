"""Retry policy: bounded attempts, halving until a poison item stands alone, nobody else lost."""

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.items import Batch, Item
from pipeline.reasons import Reason
from pipeline.run.retry import RetryPolicy


def items(n):
    return tuple(Item(i, f"id{i}", f"/a/{i}.wav", 0, 1, 0.0, 1.0) for i in range(n))


def test_retries_then_splits_then_isolates():
    policy = RetryPolicy(max_attempts=2)
    batch = Batch(items(2))
    # Beside other batches, a failure is no evidence against this one: retried alone, not counted.
    again, failed = policy.on_failure(batch, Reason.MODEL_ERROR, "boom", alone=False)
    assert again == [Batch(batch.items, attempt=0, alone=True)] and not failed
    again, failed = policy.on_failure(again[0], Reason.MODEL_ERROR, "boom")
    assert again == [Batch(batch.items, attempt=1, alone=True)] and not failed
    halves, failed = policy.on_failure(again[0], Reason.MODEL_ERROR, "boom")
    assert [h.items for h in halves] == [batch.items[:1], batch.items[1:]] and not failed
    assert all(h.attempt == 0 and h.alone for h in halves)
    retry, _ = policy.on_failure(halves[0], Reason.WORKER_LOST, "died")
    retry, _ = policy.on_failure(retry[0], Reason.WORKER_LOST, "died")  # a death: one try more
    gone, failed = policy.on_failure(retry[0], Reason.WORKER_LOST, "died")
    assert not gone and len(failed) == 1
    result = failed[0]
    assert (result.item, result.status, result.error) == (batch.items[0], "error", "worker_lost")
    assert "died" in result.error_detail


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 40), poison=st.data(), max_attempts=st.integers(1, 4))
def test_a_poison_item_costs_bounded_attempts_and_only_itself(size, poison, max_attempts):
    bad = poison.draw(st.integers(0, size - 1))
    policy = RetryPolicy(max_attempts)
    queue, done, failed, runs = [Batch(items(size))], [], [], 0
    while queue:
        batch = queue.pop()
        runs += 1
        if any(item.row == bad for item in batch.items):
            again, lost = policy.on_failure(batch, Reason.MODEL_ERROR, "poison")
            queue += again
            failed += lost
        else:
            done += batch.items
    assert [r.item.row for r in failed] == [bad]
    assert sorted(i.row for i in done) == [i for i in range(size) if i != bad]
    # Each halving level costs max_attempts runs of the batch holding the poison, plus one run of
    # each innocent half.
    assert runs <= (max_attempts + 1) * (size.bit_length() + 1)


def test_costly_failures_halve_at_once_and_transient_items_are_retried_then_kept():
    from pipeline.items import ItemResult

    policy = RetryPolicy(max_attempts=3, transient_attempts=2)
    halves, failed = policy.on_failure(Batch(items(4), alone=True), Reason.OUT_OF_MEMORY, "killed")
    assert [len(h.items) for h in halves] == [2, 2] and not failed
    halves, failed = policy.on_failure(Batch(items(4), alone=True), Reason.WORKER_LOST, "killed")
    assert [len(h.items) for h in halves] == [2, 2] and not failed
    flaky = ItemResult(items(1)[0], "error", error="read_error", error_detail="EIO")
    fine = ItemResult(items(2)[1], "ok")
    keep, again, delay = policy.on_results([flaky, fine])
    assert keep == [fine] and again.items == (flaky.item,) and delay > 0
    keep, again, _ = policy.on_results([flaky])  # the second try fails too: written, the next run retries it
    assert keep == [flaky] and again is None and policy.transient_retries == 1
