"""Great Expectations Data Docs for the lake: each suite, each kept validation run, and its failures.

Every scoring run writes a sample per suite, which Great Expectations validates afterwards, keeping GE's
validation result JSON under `lake/_quality/<suite>/<sample id>.json` (see ops.quality). This module
loads those kept results into a file-backed GE project at `lake/_quality/gx/` and builds GE's own static site at
`lake/_quality/data_docs/index.html`, plus `offline.html` beside it (GE's index needs JavaScript from
public CDNs; that page needs nothing). The suites stay JSON in `schemas/expectations/`: the project's copy
is rewritten from them on every build, so the site always shows the suites the code runs. The site is
rebuilt from scratch each time (validations store and pages), so it is a pure function of the kept
results: deleting old results under `_quality/` removes them from the site at the next build.
"""

from __future__ import annotations

import html
import json
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

SITE_NAME = "local_site"


@dataclass(frozen=True)
class DataDocsSite:
    index: Path
    suites: int
    validations: int
    failed: int  # validations in which some expectation had unexpected rows


def suite_names() -> list[str]:
    """The suites in schemas/expectations/ (one per stream's readings, and windows)."""
    folder = resources.files("schemas").joinpath("expectations")
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def kept_results(lake: Path, suite: str, runs: int | None = None) -> list[Path]:
    """The suite's kept validation results, oldest first; the newest `runs` of them when given."""
    results = sorted((lake / "_quality" / suite).glob("*.json"))  # run ids start with a UTC timestamp
    return results[-runs:] if runs else results


def site_index(lake: Path) -> Path:
    return lake / "_quality" / "data_docs" / "index.html"


def build_data_docs(lake: Path, runs: int | None = None) -> DataDocsSite:
    """(Re)build the Data Docs site from the kept validation results; `runs`: newest runs per suite shown."""
    import great_expectations as gx
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResultSchema
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    from pipeline.contract import suite_json

    context = _context(lake)
    schema = ExpectationSuiteValidationResultSchema()
    validations = failed = 0
    suites = suite_names()
    for suite in suites:
        context.suites.add_or_update(gx.ExpectationSuite(**{k: v for k, v in suite_json(suite).items() if k != "id"}))
        for path in kept_results(lake, suite, runs):
            doc = json.loads(path.read_text())
            result = schema.load(doc)
            run = RunIdentifier(run_name=path.stem, run_time=_run_time(path))
            # One sample per suite and run: the batch identifier names it as such on the site.
            key = ValidationResultIdentifier(ExpectationSuiteIdentifier(suite), run, "run_sample")
            context.validation_results_store.set(key, result)
            validations += 1
            failed += not doc.get("success", False)
    context.build_data_docs(site_names=[SITE_NAME])
    write_offline_index(lake, runs)
    return DataDocsSite(site_index(lake), len(suites), validations, failed)


def _run_time(path: Path) -> datetime:
    """Run ids start with the run's UTC start (20261125T083541Z-...); otherwise the file's time."""
    try:
        return datetime.strptime(path.stem[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)


def _context(lake: Path) -> Any:
    """A file-backed GE project under lake/_quality/gx, emptied of earlier validations and pages."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no network calls from clinical infrastructure
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    quality = lake / "_quality"
    quality.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(quality / "gx" / "uncommitted" / "validations", ignore_errors=True)
    shutil.rmtree(quality / "data_docs", ignore_errors=True)
    context = gx.get_context(mode="file", project_root_dir=str(quality))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.variables.data_docs_sites = {
        SITE_NAME: {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,  # the site is for the people who read results, not GE tutorials
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": "../data_docs/"},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    }
    context.variables.save()
    return gx.get_context(mode="file", project_root_dir=str(quality))  # reloaded with the site config


def write_offline_index(lake: Path, runs: int | None = None) -> Path:
    """A static page beside GE's index: GE's index draws its tables with JavaScript from public CDNs, which
    browsers on hospital networks without internet cannot load; this page needs nothing but the files."""
    docs = site_index(lake).parent
    sections = []
    for suite in suite_names():
        rows = []
        for path in reversed(kept_results(lake, suite, runs)):
            doc = json.loads(path.read_text())
            failed = [
                f"{r['expectation_config']['type']}:{r['expectation_config']['kwargs'].get('column', '')} "
                f"({r['result'].get('unexpected_count', '?')})"
                for r in doc["results"]
                if not r["success"]
            ]
            page = next((docs / "validations" / suite / path.stem).glob("*/*.html"), None)
            run = html.escape(path.stem)
            link = f'<a href="{page.relative_to(docs).as_posix()}">{run}</a>' if page else run
            verdict = "passed" if doc.get("success") else "<b>failed</b>"
            rows.append(f"<tr><td>{link}</td><td>{verdict}</td><td>{html.escape('; '.join(failed))}</td></tr>")
        body = "".join(rows) or '<tr><td colspan="3">no runs kept</td></tr>'
        sections.append(
            f'<h2><a href="expectations/{suite}.html">{suite}</a></h2>'
            f"<table><tr><th>run</th><th>verdict</th><th>failed expectations (unexpected rows)</th></tr>{body}</table>"
        )
    out = docs / "offline.html"
    out.write_text(
        '<!doctype html><html><head><meta charset="utf-8"><title>VitalStream data quality</title><style>'
        "body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} td,th{border:1px solid #ccc;"
        "padding:3px 8px;font-size:13px}</style></head><body><h1>Data quality: every suite, every kept run</h1>"
        + "".join(sections)
        + "</body></html>\n"
    )
    return out
