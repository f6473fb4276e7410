"""Hands batches of kernel writes to one worker thread.

Writing a packet to the TUN device runs the kernel's whole forwarding path (netfilter, NAT,
the egress interface) inside the `write` call: profiled at about 40 % of the gateway's time
under TCP load (bench/bench_tunnel.py --profile). The syscall releases the GIL, so a worker
thread lets that kernel work run on the other core while the event loop decrypts the next
batch. One worker per destination keeps packets in order.

A handoff costs a thread wake-up, which shows as latency on an idle tunnel (ping); so a
small batch is written inline when nothing is queued, which cannot reorder anything. With the
kernel offloads a batch becomes a few large writes, and the handoffs (and the GIL passing
between threads) cost more than the overlap gains: such a writer runs unthreaded.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

log = logging.getLogger("gateway_pkg.tunnel.writer")

Item = TypeVar("Item")
_STOP = object()
INLINE_MAX = 2


class BatchWriter(Generic[Item]):
    """`write` is called once per item of a batch, after `prepare` (if given) has turned the
    batch into the writes to make (e.g. coalesced into fewer, larger ones), on the same thread."""

    def __init__(self, name: str, write: Callable[[Any], None],
                 prepare: Callable[[list[Item]], Iterable[Any]] | None = None, *, threaded: bool = True) -> None:
        self._write = write
        self._prepare = prepare
        # Unthreaded, every batch is written by the caller: right when `prepare` makes few,
        # large writes (the kernel offloads), where a thread handoff per batch costs more
        # than the overlap gains (measured: docs/dataplane.md#kernel-offloads).
        self._queue: queue.SimpleQueue[list[Item] | object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0  # batches queued or being written by the worker
        self._name = name
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def submit(self, batch: list[Item]) -> None:
        """Write a batch: inline if small and the worker is idle, else queue it (the caller
        gives up the list). Only one thread may submit."""
        if self._thread is None:
            self._write_all(batch)
            return
        with self._lock:
            inline = self._pending == 0 and len(batch) <= INLINE_MAX
            if not inline:
                self._pending += 1
        if inline:
            self._write_all(batch)
        else:
            self._queue.put(batch)

    def _write_all(self, batch: list[Item]) -> None:
        write = self._write
        items: Iterable[Any] = batch
        if self._prepare is not None:
            try:
                items = self._prepare(batch)
            except Exception:  # a bug must not stop the writer; the batch cannot be written as is
                log.exception("Preparing a batch failed in %s; %d packet(s) dropped", self._name,
                              len(batch))
                return
        for item in items:
            try:
                write(item)
            except Exception:  # the writer must outlive one bad packet
                log.exception("Write failed in %s", self._name)

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is _STOP:
                return
            assert isinstance(batch, list)
            self._write_all(batch)
            with self._lock:
                self._pending -= 1

    def close(self, timeout: float = 2.0) -> None:
        """Finish what is queued, then stop the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
