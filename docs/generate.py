"""Fill the generated regions of the docs from the code and schemas that hold the facts.

    python docs/generate.py          # rewrite every region that is out of date (`make docs`)
    python docs/generate.py --check  # change nothing; exit 1 naming each stale file (tests/system/test_docs.py)

A region is everything between `<!-- BEGIN GENERATED: <name> -->` and `<!-- END GENERATED: <name> -->`.
Edit the source, never the region: the settings table comes from `pipeline.config` (`Settings` and
`SETTING_DOCS`), the column tables from `schemas/outputs.json`, the wire examples from `schemas/streams/`.
Whole files too: `prefect.yaml` comes from the deployment list in `flows/serve.py`.
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


# file (relative to the repository root) -> region name -> what fills it
REGIONS: dict[str, dict[str, Callable[[], str]]] = {
    "README.md": {"wire-examples": wire_examples},
    "docs/operations.md": {"settings": settings_table},
    "docs/analysts.md": {"columns": column_tables},
}


def prefect_yaml() -> str:
    from flows.serve import prefect_yaml as render_prefect_yaml

    return render_prefect_yaml()


# whole files (relative to the repository root) -> what they hold
FILES: dict[str, Callable[[], str]] = {"prefect.yaml": prefect_yaml}

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
