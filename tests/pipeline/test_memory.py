"""Memory handed back between batches (pipeline.memory): Arrow's pool choice and the C heap trim."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from pipeline import memory


def _backend(env: dict[str, str]) -> str:
    code = "import pyarrow as pa\nfrom pipeline.memory import use_jemalloc\nuse_jemalloc()\nprint(pa.default_memory_pool().backend_name)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_jemalloc_is_chosen_unless_the_environment_names_a_pool() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    assert _backend(env) == "jemalloc"
    assert _backend({**env, "ARROW_DEFAULT_MEMORY_POOL": "system"}) == "system"


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_release_memory_trims_the_c_heap_on_glibc() -> None:
    assert memory._MALLOC_TRIM is not None
    # Blocks below glibc's mmap threshold come from the heap; freed, they stay in the process until trimmed.
    blocks = [np.ones(16_000, dtype=np.float64) for _ in range(1_600)]  # 125 KiB each, about 200 MiB
    del blocks[:-1]
    before = _rss_mib()
    memory.release_memory()
    assert _rss_mib() < before


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
