"""The wire contract and the expectation suites, read from the `schemas` package (the single source of truth)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import pyarrow as pa

STREAMS: tuple[str, ...] = ("glucose", "heart_rate", "respiration", "fall")

_JSON_TO_ARROW = {"string": pa.string(), "number": pa.float64(), "integer": pa.int64(), "boolean": pa.bool_()}


@dataclass(frozen=True)
class StreamContract:
    """What one stream's messages look like, derived from its JSON Schema."""

    stream: str
    value_field: str
    fields: dict[str, str]  # property -> JSON type ("ts" is "timestamp": a string or an integer)
    required: tuple[str, ...]
    alternatives: dict[str, float] = field(default_factory=dict)  # other unit field -> factor to value_field
    reporting_range: tuple[float, float] | None = None
    example: dict[str, Any] = field(default_factory=dict)

    def wire_schema(self, ts_type: pa.DataType) -> pa.Schema:
        """Arrow schema the bulk JSON reader parses with; `ts` as `ts_type` (string or int64)."""
        cols = [
            pa.field(name, ts_type if kind == "timestamp" else _JSON_TO_ARROW[kind])
            for name, kind in self.fields.items()
        ]
        return pa.schema(cols)


def _read_json(*parts: str) -> Any:
    return json.loads(resources.files("schemas").joinpath(*parts).read_text(encoding="utf-8"))


@cache
def stream_contract(stream: str) -> StreamContract:
    if stream not in STREAMS:
        raise KeyError(f"unknown stream {stream!r}; expected one of {', '.join(STREAMS)}")
    doc = _read_json("streams", f"{stream}.json")
    ext = doc["x-vitalstream"]
    fields: dict[str, str] = {}
    for name, prop in doc["properties"].items():
        fields[name] = "timestamp" if "oneOf" in prop else prop["type"]
    rng = ext.get("reporting_range")
    return StreamContract(
        stream=stream,
        value_field=ext["value_field"],
        fields=fields,
        required=tuple(doc["required"]),
        alternatives=dict(ext.get("alternatives", {})),
        reporting_range=(float(rng[0]), float(rng[1])) if rng else None,
        example=doc["examples"][0],
    )


@cache
def suite_json(name: str) -> dict[str, Any]:
    """An expectation suite as Great Expectations serialises it (`schemas/expectations/<name>.json`)."""
    doc: dict[str, Any] = _read_json("expectations", f"{name}.json")
    return doc


def readings_suite_name(stream: str) -> str:
    return f"{stream}_readings"


@cache
def output_schemas() -> dict[str, Any]:
    """Column names, Arrow types and descriptions of the lake's datasets."""
    doc: dict[str, Any] = _read_json("outputs.json")
    return doc
