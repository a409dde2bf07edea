"""Fill the generated regions of the docs from the code and schemas that hold the facts.

    python docs/generate.py          # rewrite every region that is out of date (`make docs`)
    python docs/generate.py --check  # change nothing; exit 1 naming each stale file (tests/system/test_docs.py)

A region is everything between `<!-- BEGIN GENERATED: <name> -->` and `<!-- END GENERATED: <name> -->`.
Edit the source, never the region: the settings table comes from `pipeline.config` (`Settings` and
`SETTING_DOCS`), the column tables from `schemas/outputs.json`, the wire examples from `schemas/streams/`,
the live-topic examples from the message schemas. Whole files too: `prefect.yaml` comes from the deployment
list in `flows/serve.py`; `schemas/risk_message.json` and `schemas/alert_message.json` (the contracts of the
live topics) from the `risk_scores` and `alerts` columns of `schemas/outputs.json`, each with an example
message made by the code that publishes it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's modules, also when run as `python docs/generate.py`


_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")


def _cell(text: str) -> str:
    """Text for a table cell: pipes escaped; outside code spans, a `<` that could open an HTML tag (`<stream>`)
    is written `&lt;` so that Markdown shows it instead of dropping it."""
    parts = text.replace("|", "\\|").replace("\n", " ").split("`")
    parts[::2] = [_TAG_START.sub("&lt;", p) for p in parts[::2]]
    return "`".join(parts)


def _default(value: Any) -> str:
    if value is None:
        return "*none*"
    if value in ("", {}):
        return "*empty*"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"  # as in the TOML file
    return f"`{value}`"


def settings_table() -> str:
    """Every field of `Settings`: name, default, environment variable, one-line doc."""
    from pipeline.config import Settings, documented

    rows = ["| setting | default | environment variable | meaning |", "|---|---|---|---|"]
    for row in documented(Settings()):
        env = f"`{row['env']}`"
        if isinstance(row["default"], dict):  # a table of options: one variable per key, not one for the table
            env = f"one per key, `VITALSTREAM_<KEY>`; TOML `[vitalstream.{row['name']}]`"
        rows.append(f"| `{row['name']}` | {_default(row['default'])} | {env} | {_cell(row['doc'])} |")
    return "\n".join(rows) + "\n"


def column_tables() -> str:
    """One table per dataset of the lake, in the order of `schemas/outputs.json`."""
    from pipeline.contract import output_schemas

    parts = []
    for dataset, columns in output_schemas().items():
        rows = [f"### `{dataset}/`", "", "| column | type | meaning |", "|---|---|---|"]
        rows += [f"| `{c['name']}` | {_cell(c['type'])} | {_cell(c['description'])} |" for c in columns]
        parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


def wire_examples() -> str:
    """The example message of each stream's JSON Schema, one per line."""
    from pipeline.contract import STREAMS, stream_contract

    lines = [json.dumps(stream_contract(s).example, ensure_ascii=False) for s in STREAMS]
    return "```json\n" + "\n".join(lines) + "\n```\n"


_JSON_TYPES: dict[str, dict[str, Any]] = {
    "string": {"type": ["string", "null"]},
    "double": {"type": ["number", "null"]},
    "int32": {"type": ["integer", "null"]},
    "int64": {"type": ["integer", "null"]},
    "bool": {"type": ["boolean", "null"]},
    "timestamp[ms, UTC]": {"type": ["string", "null"], "format": "date-time"},
}
_MESSAGES = {"risk_message.json": ("risk_scores", "risk"), "alert_message.json": ("alerts", "alerts")}
_ENUMS: dict[str, tuple[str, ...]] = {}
_NOT_NULL = {
    "risk_scores": {"patient_id", "window_start", "window_end", "model_version", "scored_at"},
    "alerts": {"alert_id", "patient_id", "condition", "state", "sequence", "severity", "event_time", "emitted_at"}
    | {"reason", "policy_version"},
}


def message_schema(name: str) -> str:
    """The JSON Schema of a live topic's messages: a lake row of its dataset as JSON (ISO-8601 times)."""
    from pipeline.alert_policy import ALERT_CONDITIONS, SEVERITIES
    from pipeline.alerts import STATES
    from pipeline.contract import output_schemas

    _ENUMS.update(condition=ALERT_CONDITIONS, state=STATES, severity=SEVERITIES)
    dataset, topic = _MESSAGES[name]
    columns = [c for c in output_schemas()[dataset] if c["name"] != "date"]
    props = {}
    for c in columns:
        kind: dict[str, Any] = dict(_JSON_TYPES[c["type"]])
        if c["name"] in _NOT_NULL[dataset] and isinstance(kind["type"], list):
            kind["type"] = kind["type"][0]
        if dataset == "alerts" and c["name"] in _ENUMS:
            kind["enum"] = list(_ENUMS[c["name"]])
        props[c["name"]] = {**kind, "description": c["description"]}
    doc = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://vitalstream.example/schemas/{name}",
        "title": f"<topic_prefix>{topic} message value (key: the patient id)",
        "description": f"Generated by docs/generate.py from the {dataset} columns of schemas/outputs.json.",
        "type": "object",
        "properties": props,
        "required": [c["name"] for c in columns],
        "additionalProperties": False,
        "examples": [_example(dataset)],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _example(dataset: str) -> dict[str, Any]:
    """An example message, made by the code that publishes it (pipeline.alerts.to_json_rows)."""
    from datetime import UTC, datetime

    import pyarrow as pa

    from pipeline.alert_policy import default_policy
    from pipeline.alerts import AlertState, evaluate, to_json_rows
    from pipeline.contract import output_schemas
    from pipeline.readings import PROVENANCE_SCHEMA

    end, now = 1795327500000, datetime(2026, 11, 22, 6, 7, 3, tzinfo=UTC)  # window end 06:05 UTC
    ts = pa.timestamp("ms", tz="UTC")
    if dataset == "alerts":  # two windows of a cardiac episode through the real lifecycle
        state, policy, out = AlertState(), default_policy(), []
        for k, (p, hr) in enumerate(((0.66, 131.0), (0.71, 138.0))):
            at = pa.array([end + k * 300_000], pa.int64()).cast(ts)
            scores = pa.table({"patient_id": ["P000042"], "window_end": at, "p_cardiac": [p]})
            windows = pa.table({"patient_id": ["P000042"], "heart_rate_bpm_mean": [hr]})
            later = now.replace(minute=12)  # scored after the second window closed
            out.append(evaluate(state, policy, scores, windows, PROVENANCE_SCHEMA.empty_table(), {}, None, later))
        row: dict[str, Any] = json.loads(to_json_rows(out[-1])[0])
        return row
    example: dict[str, Any] = {"patient_id": "P000042", "window_start": end - 300_000, "window_end": end}
    example |= {"risk_score": 0.62, "risk_level": "high", "p_hypoglycaemia": 0.03, "p_hyperglycaemia": 0.02}
    example |= {"p_cardiac": 0.58, "p_respiratory": 0.07, "p_fall": 0.01}
    for vital, (mean, half) in {"glucose_mg_dl": (104.0, 21.0), "heart_rate_bpm": (131.0, 14.0)}.items():
        example |= {
            f"{vital}_forecast": mean,
            f"{vital}_forecast_low": mean - half,
            f"{vital}_forecast_high": mean + half,
        }
    example |= {"respiration_rate_per_min_forecast": None, "respiration_rate_per_min_forecast_low": None}
    example |= {"respiration_rate_per_min_forecast_high": None, "anomalies": "heart_rate", "context_windows": 12}
    example |= {"model_version": "risk-lstm-2026-11-22", "scored_at": now}
    columns = [c for c in output_schemas()["risk_scores"] if c["name"] != "date"]
    types = {"timestamp[ms, UTC]": ts, "double": pa.float64(), "int32": pa.int32(), "string": pa.string()}
    table = pa.table(
        {c["name"]: pa.array([example.get(c["name"])], types.get(c["type"], pa.string())) for c in columns}
    )
    risk: dict[str, Any] = json.loads(to_json_rows(table)[0])
    return risk


def live_examples() -> str:
    """One example message per live topic, from the message schemas."""
    lines = [json.dumps(_example(dataset), ensure_ascii=False) for dataset, _ in _MESSAGES.values()]
    return "```json\n" + "\n".join(lines) + "\n```\n"


# file (relative to the repository root) -> region name -> what fills it
REGIONS: dict[str, dict[str, Callable[[], str]]] = {
    "README.md": {"wire-examples": wire_examples, "live-examples": live_examples},
    "docs/operations.md": {"settings": settings_table},
    "docs/analysts.md": {"columns": column_tables},
}


def prefect_yaml() -> str:
    from flows.serve import prefect_yaml as render_prefect_yaml

    return render_prefect_yaml()


# whole files (relative to the repository root) -> what they hold
FILES: dict[str, Callable[[], str]] = {
    "prefect.yaml": prefect_yaml,
    **{f"schemas/{name}": (lambda name=name: message_schema(name)) for name in _MESSAGES},  # type: ignore[misc]
}

_REGION = re.compile(
    r"(<!-- BEGIN GENERATED: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- END GENERATED: (?P=name) -->)", re.S
)
_MARKER = re.compile(r"<!-- (?:BEGIN|END) GENERATED: ([\w.-]+) -->")


def render(text: str, regions: dict[str, Callable[[], str]], where: str = "") -> str:
    """`text` with every region filled; a region missing, unknown or unclosed is an error."""
    found = {m.group("name") for m in _REGION.finditer(text)}
    markers = set(_MARKER.findall(text))
    problems = [f"no region {n!r}" for n in sorted(set(regions) - found)]
    problems += [f"unknown or unclosed region {n!r}" for n in sorted(markers - (found & set(regions)))]
    if problems:
        raise ValueError(f"{where}: {'; '.join(problems)}")
    return _REGION.sub(lambda m: m.group(1) + regions[m.group("name")]() + m.group(4), text)


def stale_files(root: Path = ROOT) -> list[str]:
    """The files (or their generated regions) that differ from what the sources give now."""
    stale = [name for name, regions in REGIONS.items() if _differs(root / name, regions, name)]
    return stale + [name for name, make in FILES.items() if _read(root / name, name) != make()]


def _differs(path: Path, regions: dict[str, Callable[[], str]], name: str) -> bool:
    text = _read(path, name)
    return render(text, regions, name) != text


def _read(path: Path, name: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{name}: cannot read it ({exc.strerror})") from exc


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a file is out of date")
    args = parser.parse_args(argv)
    try:
        stale = stale_files(root)
    except ValueError as exc:
        print(f"docs/generate.py: {exc}", file=sys.stderr)
        return 1
    if args.check:
        for name in stale:
            print(f"stale: {name} (run `python docs/generate.py` or `make docs`)", file=sys.stderr)
        return 1 if stale else 0
    for name in stale:
        path = root / name
        text = FILES[name]() if name in FILES else render(path.read_text(encoding="utf-8"), REGIONS[name], name)
        path.write_text(text, encoding="utf-8")
        print(f"rewrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
