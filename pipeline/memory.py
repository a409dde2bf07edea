"""Memory a process hands back to the OS between batches.

Both processes of a run (the pipeline and its consumer process) allocate and free a micro-batch's worth of
Arrow buffers per batch; Arrow's jemalloc pool returns freed memory when asked (`release_unused`), which
its default pool (mimalloc) does less. docs/performance.md has the figures.
"""

from __future__ import annotations

import contextlib
import os

import pyarrow as pa


def use_jemalloc() -> None:
    """Arrow's jemalloc pool, unless ARROW_DEFAULT_MEMORY_POOL says otherwise: it returns freed batch memory
    to the OS between batches, which keeps a long run's peak memory lowest (see docs/performance.md)."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    with contextlib.suppress(NotImplementedError):
        pa.set_memory_pool(pa.jemalloc_memory_pool())


def release_memory() -> None:
    """Arrow memory freed since the last call, back to the OS. (Trimming glibc's heap as well, with
    malloc_trim, was measured at 50,000 patients: no lower peak, more CPU; docs/performance.md.)"""
    pa.default_memory_pool().release_unused()
