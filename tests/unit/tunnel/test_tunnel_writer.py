"""The batch writer keeps order across inline and threaded writes, and survives failures."""

import threading

from gateway_pkg.tunnel.writer import BatchWriter


def test_order_is_kept_across_inline_and_queued_batches():
    written = []
    gate = threading.Event()

    def write(item):
        if item == "slow":
            gate.wait(5)
        written.append(item)

    writer = BatchWriter("test-writer", write)
    writer.submit(["a", "b", "slow"])  # 3 items: queued to the worker, which blocks
    writer.submit(["c"])  # small, but the worker is busy: must queue behind, not overtake
    gate.set()
    writer.close()
    assert written == ["a", "b", "slow", "c"]


def test_small_batch_is_written_inline_when_idle():
    threads = []
    writer = BatchWriter("test-writer", lambda item: threads.append(threading.current_thread().name))
    writer.submit(["x"])
    writer.close()
    assert threads == [threading.current_thread().name]


def test_a_failing_write_does_not_stop_the_worker():
    written = []

    def write(item):
        if item == 2:
            raise OSError("boom")
        written.append(item)

    writer = BatchWriter("test-writer", write)
    writer.submit([1, 2, 3, 4])
    writer.close()
    assert written == [1, 3, 4]


def test_prepare_turns_each_batch_into_the_writes_in_order():
    written = []
    writer = BatchWriter("test-writer", written.append, lambda batch: ["+".join(batch)])
    writer.submit(["a", "b", "c"])
    writer.submit(["d"])
    writer.close()
    assert written == ["a+b+c", "d"]


def test_a_failing_prepare_drops_that_batch_only():
    written = []

    def prepare(batch):
        if "bad" in batch:
            raise ValueError("bug")
        return batch

    writer = BatchWriter("test-writer", written.append, prepare)
    writer.submit(["x", "bad", "y"])
    writer.submit(["z"])
    writer.close()
    assert written == ["z"]


def test_unthreaded_writes_every_batch_on_the_callers_thread():
    threads = []
    writer = BatchWriter("test-writer", lambda item: threads.append(threading.current_thread().name), threaded=False)
    writer.submit(list(range(50)))
    writer.close()
    assert threads == [threading.current_thread().name] * 50
    assert "test-writer" not in [t.name for t in threading.enumerate()]
