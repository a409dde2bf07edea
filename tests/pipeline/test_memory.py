"""Memory handed back between batches (pipeline.memory): Arrow's pool choice."""

from __future__ import annotations

import os
import subprocess
import sys


def _backend(env: dict[str, str]) -> str:
    code = (
        "import pyarrow as pa\nfrom pipeline.memory import use_jemalloc\n"
        "use_jemalloc()\nprint(pa.default_memory_pool().backend_name)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_jemalloc_is_chosen_unless_the_environment_names_a_pool() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    assert _backend(env) == "jemalloc"
    assert _backend({**env, "ARROW_DEFAULT_MEMORY_POOL": "system"}) == "system"
