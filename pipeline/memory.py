"""Memory a process hands back to the OS between batches: Arrow's pool and the C heap.

Both processes of a run (the pipeline and its consumer process) allocate and free a micro-batch's worth of
buffers per batch. Arrow's jemalloc pool returns freed memory when asked (`release_unused`); glibc serves
large NumPy arrays from its heap once freed ones have raised its mmap threshold, and keeps freed heap pages
unless trimmed. docs/performance.md has the figures.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable

import pyarrow as pa


def use_jemalloc() -> None:
    """Arrow's jemalloc pool, unless ARROW_DEFAULT_MEMORY_POOL says otherwise: it returns freed batch memory
    to the OS between batches, which keeps a long run's peak memory lowest (see docs/performance.md)."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    with contextlib.suppress(NotImplementedError):
        pa.set_memory_pool(pa.jemalloc_memory_pool())


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
    return trim


_MALLOC_TRIM = _glibc_malloc_trim()


def release_memory() -> None:
    """Memory freed since the last call, back to the OS: Arrow's pool, then the C heap (glibc)."""
    pa.default_memory_pool().release_unused()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
