"""Pseudonymous patient ids: a keyed hash (HMAC-SHA256) of the id, so that no raw id reaches the lake.

The same id and key always give the same pseudonym (joins across datasets and runs keep working); without
the key nobody can recompute one from a guessed id, as they could with a plain hash of a short id space.
The key comes from the environment (`VITALSTREAM_PSEUDONYM_KEY`), never from a settings file or the logs.
Hashing works on the distinct values of a column (patients per batch, not readings), so it costs little.
"""

from __future__ import annotations

import hashlib
import hmac
import os

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import ConfigError

KEY_ENV = "VITALSTREAM_PSEUDONYM_KEY"
MIN_KEY_BYTES = 16
PREFIX = "ps-"  # pseudonyms are recognisable as such: "ps-" and 24 hex digits (96 bits)


def key_from_env(env: dict[str, str] | None = None) -> bytes:
    raw = (os.environ if env is None else env).get(KEY_ENV, "")
    if len(raw.encode()) < MIN_KEY_BYTES:
        raise ConfigError(
            f"pseudonymise is on but {KEY_ENV} is {'unset' if not raw else 'too short'}: "
            f"set it to a secret of at least {MIN_KEY_BYTES} bytes (e.g. `openssl rand -hex 32`)"
        )
    return raw.encode()


def pseudonym(value: str, key: bytes) -> str:
    return PREFIX + hmac.new(key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:24]


def pseudonymise(column: pa.Array | pa.ChunkedArray, key: bytes) -> pa.Array:
    """Each string replaced by its pseudonym; nulls stay null."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if len(column) == 0:
        return pa.array([], pa.string())
    encoded = pc.dictionary_encode(column.cast(pa.string()))
    mapped = pa.array([pseudonym(v, key) for v in encoded.dictionary.to_pylist()], pa.string())
    return mapped.take(encoded.indices)


def pseudonymise_columns(table: pa.Table, columns: tuple[str, ...], key: bytes) -> pa.Table:
    for name in columns:
        i = table.schema.get_field_index(name)
        if i >= 0:
            table = table.set_column(i, name, pseudonymise(table.column(name), key))
    return table
