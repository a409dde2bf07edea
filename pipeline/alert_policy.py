"""The alert policy as data: per condition the raise and clear levels (hysteresis), consecutive windows, the
repeat interval and the severity; falls' confidence and quiet period; each sensor's silence. The numbers live
in `schemas/alert_policy.json` (or the file the `alert_policy` setting names); `load_policy` checks them and
turns every fault into one line (ConfigError). What they mean: pipeline.alerts."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from pipeline.contract import output_schemas
from pipeline.errors import ConfigError

ALERT_CONDITIONS: tuple[str, ...] = (
    "hypoglycaemia",
    "hyperglycaemia",
    "cardiac",
    "respiratory",
    "fall",
    "deterioration",
    "predicted_low_glucose",
    "sensor_silent",
    # observed, not predicted: a window's own value in NEWS2's red band or at CGM level-1 hypoglycaemia
    "heart_rate_high",
    "heart_rate_low",
    "respiration_high",
    "respiration_low",
    "glucose_low",
)
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
SILENT_STREAMS: tuple[str, ...] = ("glucose", "heart_rate", "respiration")


@dataclass(frozen=True)
class WindowRule:
    condition: str
    column: str  # the risk_scores (prediction) or windows (observation) column read per window
    above: bool  # True: raise at value >= raise_at; False: raise at value < raise_at
    raise_at: float
    clear_at: float
    windows: int  # consecutive windows at the raise level before raising
    repeat_ms: int
    severity: str
    evidence: tuple[str, str, str] | None = None  # (column of risk_scores or windows, label, unit) quoted in reasons


@dataclass(frozen=True)
class FallRule:
    min_confidence: float
    repeat_ms: int
    clear_after_ms: int
    severity: str


@dataclass(frozen=True)
class SilenceRule:
    after_ms: dict[str, int]  # stream -> silence that raises
    repeat_ms: int
    severity: str
    # A stream that reports less often (charted vitals, spot checks, 5-min averages) is silent only after this
    # many of its usual intervals between readings (the median of the patient's last five), where longer.
    cadence_factor: float = 3.0


@dataclass(frozen=True)
class AlertPolicy:
    version: str
    rules: tuple[WindowRule, ...]
    fall: FallRule | None
    silence: SilenceRule | None
    # Repeats of one alert before it goes quiet (open until acknowledged or resolved; a snooze's end starts a
    # new count): an alert nobody answers, of a patient whose data stopped or far behind another patient's
    # event time (a replay of date-shifted records), does not repeat without end.
    max_repeats: int = 12


DEFAULT_POLICY = "alert_policy.json"


def load_policy(path: Path | None = None) -> AlertPolicy:
    """The policy file (default: the shipped `schemas/alert_policy.json`), checked; ConfigError in one line."""
    where = str(path) if path is not None else f"schemas/{DEFAULT_POLICY}"
    try:
        text = path.read_text() if path is not None else resources.files("schemas").joinpath(DEFAULT_POLICY).read_text()
        doc = json.loads(text)
    except OSError as exc:
        raise ConfigError(f"alert policy {where}: cannot read it ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise ConfigError(f"alert policy {where}: not valid JSON ({exc})") from exc
    try:
        return parse_policy(doc)
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"alert policy {where}: {exc}") from exc


@cache
def default_policy() -> AlertPolicy:
    return load_policy()


def parse_policy(doc: Any) -> AlertPolicy:
    """A policy from its JSON document; ValueError naming the first fault."""
    if not isinstance(doc, dict) or not isinstance(doc.get("conditions"), dict):
        raise ValueError("expected an object with 'version' and 'conditions'")
    version = doc.get("version")
    if not isinstance(version, str) or not version:
        raise ValueError("'version' must be a non-empty string")
    conditions: dict[str, Any] = doc["conditions"]
    unknown = set(conditions) - set(ALERT_CONDITIONS)
    if unknown:
        raise ValueError(f"unknown condition(s) {', '.join(sorted(unknown))}; known: {', '.join(ALERT_CONDITIONS)}")
    rules, fall, silence = [], None, None
    for name, spec in conditions.items():
        if not isinstance(spec, dict):
            raise ValueError(f"{name}: expected an object")
        repeat_ms = _minutes(spec, "repeat_minutes", name)
        severity = spec.get("severity")
        if severity not in SEVERITIES:
            raise ValueError(f"{name}: severity must be one of {', '.join(SEVERITIES)}, not {severity!r}")
        if name == "fall":
            conf = _number(spec, "min_confidence", name)
            if not 0 <= conf <= 1:
                raise ValueError(f"fall: min_confidence {conf} must be within 0-1")
            fall = FallRule(conf, repeat_ms, _minutes(spec, "clear_after_minutes", name), severity)
        elif name == "sensor_silent":
            after = spec.get("after_minutes")
            if not isinstance(after, dict) or not after or set(after) - set(SILENT_STREAMS):
                raise ValueError(
                    f"sensor_silent: after_minutes must map some of {', '.join(SILENT_STREAMS)} to minutes"
                )
            factor = spec.get("cadence_factor", SilenceRule.cadence_factor)
            if isinstance(factor, bool) or not isinstance(factor, int | float) or not 1 <= factor <= 100:
                raise ValueError(f"sensor_silent: cadence_factor must be a number within 1-100, not {factor!r}")
            silence = SilenceRule({s: _minutes(after, s, name) for s in after}, repeat_ms, severity, float(factor))
        else:
            rules.append(_window_rule(name, spec, repeat_ms, severity))
    max_repeats = doc.get("max_repeats", AlertPolicy.max_repeats)
    if not isinstance(max_repeats, int) or isinstance(max_repeats, bool) or max_repeats < 0:
        raise ValueError(f"'max_repeats' must be a whole number >= 0, not {max_repeats!r}")
    return AlertPolicy(version, tuple(rules), fall, silence, max_repeats)


def _window_rule(name: str, spec: dict[str, Any], repeat_ms: int, severity: str) -> WindowRule:
    columns = {c["name"] for t in ("risk_scores", "windows") for c in output_schemas()[t]}
    column = spec.get("column")
    if not isinstance(column, str) or column not in columns:
        raise ValueError(f"{name}: column {column!r} is not a risk_scores or windows column")
    direction = spec.get("direction", "above")
    if direction not in ("above", "below"):
        raise ValueError(f"{name}: direction must be 'above' or 'below', not {direction!r}")
    raise_at, clear_at = _number(spec, "raise", name), _number(spec, "clear", name)
    above = direction == "above"
    if above and clear_at > raise_at:
        raise ValueError(f"{name}: clear threshold {clear_at:g} is above its raise threshold {raise_at:g}")
    if not above and clear_at < raise_at:
        raise ValueError(
            f"{name}: clear threshold {clear_at:g} is below its raise threshold {raise_at:g} (direction below)"
        )
    windows = spec.get("windows", 1)
    if not isinstance(windows, int) or isinstance(windows, bool) or windows < 1:
        raise ValueError(f"{name}: windows must be an integer >= 1, not {windows!r}")
    evidence = None
    if "evidence" in spec:
        ev = spec["evidence"]
        if not isinstance(ev, dict) or not all(isinstance(ev.get(k), str) for k in ("column", "label", "unit")):
            raise ValueError(f"{name}: evidence needs string column, label and unit")
        evidence = (ev["column"], ev["label"], ev["unit"])
    return WindowRule(name, column, above, raise_at, clear_at, windows, repeat_ms, severity, evidence)


def _number(spec: dict[str, Any], key: str, name: str) -> float:
    v = spec.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"{name}: {key} must be a number, not {v!r}")
    return float(v)


def _minutes(spec: dict[str, Any], key: str, name: str) -> int:
    v = _number(spec, key, name)
    if v <= 0:
        raise ValueError(f"{name}: {key} must be > 0, not {v:g}")
    return int(v * 60_000)
