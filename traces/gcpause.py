"""Pause Python's cyclic garbage collector while a writer processes one batch.

Converting, redacting and storing a batch allocates tens of thousands of small objects (pydantic
models, their dicts, strings) that refcounting frees as soon as the batch is committed; none of
them form cycles. Left on, the collector walks them again and again while the batch is alive: in
the ingest bench that was about a third of the writer's CPU time. The pause lasts one batch
(milliseconds), is process-wide (the collector has no per-thread switch), nests across threads
(the collector comes back on when the last pause ends) and never turns on a collector that was
already off when the first pause began.
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import Iterator

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextmanager
def paused_gc() -> Iterator[None]:
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
