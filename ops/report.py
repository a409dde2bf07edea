"""One patient's report: the four streams aligned in time, risk and per-condition probabilities with the alerts'
lifecycle (raised, repeated, acknowledged, resolved), high-risk episodes, anomalies and the gaps where a sensor
was silent, as a PNG and a self-contained HTML page.

Everything comes from the lake (`windows/`, `risk_scores/`, `quarantine/`, `alerts/`), read through DuckDB with the
patient and time range pushed down, so a report costs the same on a lake of one patient or of thousands.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ops.query import connect
from pipeline.errors import VitalStreamError
from pipeline.model_contract import CONDITIONS, RiskLevels

# (stream, column stem, label, clinical reference lines with their source) for the three numeric streams.
STREAM_PANELS = (
    (
        "glucose",
        "glucose_mg_dl",
        "glucose (mg/dL)",
        {54: "level 2 hypo", 70: "range", 180: "range", 250: "level 2 hyper"},
    ),
    ("heart_rate", "heart_rate_bpm", "heart rate (bpm)", {40: "NEWS2 red", 131: "NEWS2 red"}),
    ("respiration", "respiration_rate_per_min", "respiration (/min)", {8: "NEWS2 red", 25: "NEWS2 red"}),
)

_SILENT = "#d9d9d9"
_ALERT_COLUMNS = ["alert_id", "condition", "stream", "state", "sequence", "event_time", "reason", "acked_by"]
_ALERT_MARKS = {"raised": ("^", "C3"), "repeated": (".", "C1"), "acknowledged": ("D", "C0"), "resolved": ("v", "C2")}


@dataclass
class PatientData:
    patient_id: str
    windows: pd.DataFrame  # on a full window grid: a missing window is a row of NaN / False
    scores: pd.DataFrame  # on the same grid
    quarantine: pd.DataFrame  # the patient's quarantined messages in the range
    window: timedelta
    start: pd.Timestamp
    end: pd.Timestamp
    alerts: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=_ALERT_COLUMNS))  # events in range


def load_patient(lake: Path, patient_id: str, hours: float) -> PatientData:
    """The patient's last `hours` of windows and scores (ending at their last window, starting no earlier
    than their first) and their quarantined messages in that range."""
    con = connect(lake)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "windows" not in tables:
            raise VitalStreamError(f"no windows in lake {lake} (run the scoring flow first)")
        last = con.execute("SELECT max(window_end) FROM windows WHERE patient_id = ?", [patient_id]).fetchone()
        if last is None or last[0] is None:
            raise VitalStreamError(f"patient {patient_id} has no windows in lake {lake}")
        end = pd.Timestamp(last[0]).tz_convert("UTC")
        start = end - pd.Timedelta(hours=hours)
        span = [patient_id, start.to_pydatetime(), end.to_pydatetime()]
        windows = con.execute(
            "SELECT * EXCLUDE (date) FROM windows WHERE patient_id = ? AND window_start >= ? AND window_end <= ? "
            "ORDER BY window_start",
            span,
        ).df()
        scores = (
            con.execute(
                "SELECT * EXCLUDE (date) FROM risk_scores WHERE patient_id = ? AND window_start >= ? "
                "AND window_end <= ? ORDER BY window_start",
                span,
            ).df()
            if "risk_scores" in tables
            else pd.DataFrame(columns=["window_start", "risk_score", "risk_level"])
        )
        quarantine = (
            con.execute(
                "SELECT reason, stream, kafka_timestamp, detail FROM quarantine WHERE patient_id = ? "
                "AND kafka_timestamp >= ? AND kafka_timestamp <= ? ORDER BY kafka_timestamp",
                span,
            ).df()
            if "quarantine" in tables
            else pd.DataFrame(columns=["reason", "stream", "kafka_timestamp", "detail"])
        )
        alerts = (
            con.execute(
                f"SELECT {', '.join(_ALERT_COLUMNS)} FROM alerts WHERE patient_id = ? AND event_time >= ? "
                "AND event_time <= ? ORDER BY event_time, sequence",
                span,
            ).df()
            if "alerts" in tables
            else pd.DataFrame(columns=_ALERT_COLUMNS)
        )
    finally:
        con.close()
    alerts["event_time"] = pd.to_datetime(alerts["event_time"], utc=True)
    window = (windows["window_end"].iloc[0] - windows["window_start"].iloc[0]).to_pytimedelta()
    # Before the patient's first window is before monitoring began, not a silent sensor: start there.
    start = max(start, pd.Timestamp(windows["window_start"].min()).tz_convert("UTC"))
    grid = pd.date_range(start, end - window, freq=window, tz="UTC", name="window_start")
    # Windows are epoch-aligned, so the grid lands on them; a window the patient never produced is a gap.
    windows = windows.assign(window_start=pd.to_datetime(windows["window_start"], utc=True)).set_index("window_start")
    scores = scores.assign(window_start=pd.to_datetime(scores["window_start"], utc=True)).set_index("window_start")
    windows = windows[~windows.index.duplicated()].reindex(grid)
    scores = scores[~scores.index.duplicated()].reindex(grid)
    for stream, *_ in STREAM_PANELS:
        windows[f"{stream}_present"] = windows[f"{stream}_present"].astype("boolean").fillna(False).astype(bool)
    quarantine["kafka_timestamp"] = pd.to_datetime(quarantine["kafka_timestamp"], utc=True)
    return PatientData(patient_id, windows, scores, quarantine, window, start, end, alerts)


def gaps(data: PatientData) -> list[tuple[str, pd.Timestamp, pd.Timestamp]]:
    """(stream, from, to) for every run of windows in which a numeric stream sent nothing. Fall detectors
    report events only, so their silence is not a gap."""
    out = []
    for stream, *_ in STREAM_PANELS:
        if not data.windows[f"{stream}_present"].any():
            continue  # no such sensor in the range: not a gap (the page says which streams are absent)
        silent = ~data.windows[f"{stream}_present"].to_numpy()
        edges = np.flatnonzero(np.diff(np.concatenate([[0], silent.astype(np.int8), [0]])))
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            out.append((stream, data.windows.index[a], data.windows.index[b - 1] + data.window))
    return out


def high_risk_episodes(data: PatientData, levels: RiskLevels) -> pd.DataFrame:
    """A high-risk episode starts when the risk score reaches the high cut-off and ends when it falls below it
    (what the report shades). Not an alert: alerts to people are a separate stream with their own lifecycle."""
    score = data.scores["risk_score"]
    high = (score >= levels.high).fillna(False).to_numpy()
    edges = np.flatnonzero(np.diff(np.concatenate([[0], high.astype(np.int8), [0]])))
    rows = []
    for a, b in zip(edges[::2], edges[1::2], strict=True):
        part = data.scores.iloc[a:b]
        probs = part[[f"p_{c}" for c in CONDITIONS]].max()
        rows.append(
            {
                "from": data.scores.index[a],
                "to": data.scores.index[b - 1] + data.window,
                "peak_risk": float(part["risk_score"].max()),
                "likeliest": str(probs.idxmax()).removeprefix("p_"),
            }
        )
    return pd.DataFrame(rows, columns=["from", "to", "peak_risk", "likeliest"])


def plot(data: PatientData, levels: RiskLevels, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and workers
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    w = data.windows
    mid = w.index + data.window / 2  # a window's values are drawn at its centre
    fig, axes = plt.subplots(6, 1, figsize=(13, 14), sharex=True, height_ratios=[3, 3, 3, 1.2, 2.5, 2.5])
    quarantined = data.quarantine
    for ax, (stream, stem, label, refs) in zip(axes[:3], STREAM_PANELS, strict=True):
        ax.set_ylabel(label)
        if not w[f"{stream}_present"].any():  # no such sensor (e.g. no CGM): say so rather than shade it all
            ax.text(0.5, 0.5, "no readings from this sensor in the range", transform=ax.transAxes, ha="center")
            ax.set_yticks([])
            continue
        _shade_silence(ax, w.index, ~w[f"{stream}_present"].to_numpy(), data.window)
        ax.fill_between(mid, w[f"{stem}_min"], w[f"{stem}_max"], color="C0", alpha=0.25, lw=0, label="window min-max")
        ax.plot(mid, w[f"{stem}_mean"], color="C0", lw=1.4, label="window mean")
        for y, name in refs.items():
            ax.axhline(y, color="C3" if "red" in name or "level 2" in name else "C2", lw=0.8, ls="--")
            ax.text(1.002, y, f"{y} {name}", transform=ax.get_yaxis_transform(), fontsize=7, va="center")
        bad = quarantined[quarantined["stream"] == stream]
        if len(bad):  # at the bottom edge: a quarantined message has no trustworthy value to plot
            ax.plot(bad["kafka_timestamp"], np.full(len(bad), 0.04), "x", color="C1", ms=6,
                    transform=ax.get_xaxis_transform(), label="quarantined message")  # fmt: skip
        flagged = w["dq_failure"].notna() & w[f"{stream}_present"]
        if flagged.any():
            ax.plot(mid[flagged.to_numpy()], w.loc[flagged, f"{stem}_mean"], "o", mfc="none", color="C1", ms=8,
                    label="window fails suite")  # fmt: skip
        ax.legend(loc="upper left", fontsize=7, ncols=4, framealpha=0.8)
    ax = axes[3]
    falls = w["fall_count"].fillna(0).to_numpy()
    ax.bar(mid, falls, width=data.window * 0.9, color="C4")
    ax.set_ylabel("falls")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_ylim(0, max(1.0, float(falls.max()) + 0.5))
    ax = axes[4]
    s = data.scores
    _shade_silence(ax, s.index, s["risk_score"].isna().to_numpy(), data.window)
    ax.plot(mid, s["risk_score"], color="k", lw=1.5, label="risk score")
    ax.axhline(levels.medium, color="C1", lw=0.8, ls="--", label=f"medium {levels.medium:g}")
    ax.axhline(levels.high, color="C3", lw=0.8, ls="--", label=f"high {levels.high:g}")
    for row in high_risk_episodes(data, levels).itertuples():
        for a in axes:
            a.axvspan(row._1, row.to, color="C3", alpha=0.08, lw=0)  # itertuples renames "from" to _1
    _mark_alerts(ax, data.alerts)
    ax.set_ylim(0, 1)
    ax.set_ylabel("risk")
    ax.legend(loc="upper left", fontsize=7, ncols=4)
    ax = axes[5]
    for i, c in enumerate(CONDITIONS):
        ax.plot(mid, s[f"p_{c}"], lw=1.1, color=f"C{i}", label=c)
    ax.set_ylim(0, 1)
    ax.set_ylabel("P(event in horizon)")
    ax.legend(loc="upper left", fontsize=7, ncols=5)
    axes[-1].xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz="UTC"))
    axes[-1].set_xlabel("UTC (grey: sensor silent / no score; red band: risk at or above the high cut-off)")
    axes[-1].set_xlim(data.start, data.end)
    fig.suptitle(f"{data.patient_id}: {data.start:%Y-%m-%d %H:%M} to {data.end:%Y-%m-%d %H:%M} UTC", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _mark_alerts(ax: Any, alerts: pd.DataFrame) -> None:
    """Alert events on the risk timeline: one row per condition (named at the right), one marker per state."""
    if not len(alerts):
        return
    pairs = zip(alerts["condition"], alerts["stream"], strict=True)
    key = [f"{c}:{s}" if isinstance(s, str) else c for c, s in pairs]
    rows = {name: 0.93 - 0.08 * i for i, name in enumerate(sorted(set(key)))}
    y = np.array([rows[k] for k in key])
    for state, (marker, color) in _ALERT_MARKS.items():
        sel = (alerts["state"] == state).to_numpy()
        if sel.any():
            ax.plot(alerts["event_time"][sel], y[sel], marker, color=color, ms=6, ls="none", label=f"alert {state}")
    for name, at in rows.items():
        ax.text(1.002, at, name, transform=ax.get_yaxis_transform(), fontsize=7, va="center")


def alert_lifecycles(alerts: pd.DataFrame) -> list[list[str]]:
    """One row per alert: condition, raised, repeats, acknowledged (by, when), resolved, the raise's reason."""
    rows = []
    for _, events in alerts.groupby("alert_id", sort=False):
        first = events.iloc[0]
        by_state = {s: events[events["state"] == s] for s in _ALERT_MARKS}
        acked = by_state["acknowledged"]
        name = f"{first['condition']} ({first['stream']})" if isinstance(first["stream"], str) else first["condition"]
        raised = by_state["raised"]
        rows.append(
            [
                name,
                f"{raised['event_time'].iloc[0]:%m-%d %H:%M}" if len(raised) else "before the range",
                str(len(by_state["repeated"])),
                f"{acked['acked_by'].iloc[-1]} at {acked['event_time'].iloc[-1]:%m-%d %H:%M}" if len(acked) else "-",
                f"{by_state['resolved']['event_time'].iloc[0]:%m-%d %H:%M}" if len(by_state["resolved"]) else "open",
                str(raised["reason"].iloc[0] if len(raised) else first["reason"]),
            ]
        )
    return rows


def _shade_silence(ax: Any, starts: pd.DatetimeIndex, silent: np.ndarray, window: timedelta) -> None:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], silent.astype(np.int8), [0]])))
    for a, b in zip(edges[::2], edges[1::2], strict=True):
        ax.axvspan(starts[a], starts[b - 1] + window, color=_SILENT, alpha=0.6, lw=0)


def write_report(
    lake: Path, patient_id: str, hours: float = 24.0, out_dir: Path | None = None, levels: RiskLevels | None = None
) -> tuple[Path, Path]:
    """Write `<out_dir>/<patient>.png` and `<patient>.html` (the PNG embedded); returns both paths."""
    levels = levels or RiskLevels()
    data = load_patient(lake, patient_id, hours)
    out_dir = out_dir or lake / "_reports"
    out_dir.mkdir(parents=True, exist_ok=True)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in patient_id)
    png, page = out_dir / f"{safe}.png", out_dir / f"{safe}.html"
    plot(data, levels, png)
    page.write_text(_html(data, levels, png))
    return page, png


def _html(data: PatientData, levels: RiskLevels, png: Path) -> str:
    s = data.scores.dropna(subset=["risk_score"])
    last = s.iloc[-1] if len(s) else None
    headline = (
        f"latest risk {last['risk_score']:.3f} ({last['risk_level']}) for the window ending "
        f"{s.index[-1] + data.window:%Y-%m-%d %H:%M} UTC, model {html.escape(str(last['model_version']))}"
        if last is not None
        else "no risk scores in this range"
    )
    w = data.windows
    present = {stream: float(w[f"{stream}_present"].mean()) for stream, *_ in STREAM_PANELS}
    episode_rows = [
        [f"{r['from']:%m-%d %H:%M}", f"{r['to']:%m-%d %H:%M}", f"{r['peak_risk']:.3f}", r["likeliest"]]
        for r in high_risk_episodes(data, levels).to_dict("records")
    ]
    gap_rows = [
        [stream, f"{a:%m-%d %H:%M}", f"{b:%m-%d %H:%M}", f"{(b - a).total_seconds() / 60:.0f}"]
        for stream, a, b in gaps(data)
    ]
    q = data.quarantine
    anomaly_rows = [
        [reason, stream, str(n)] for (reason, stream), n in q.groupby(["reason", "stream"]).size().items()
    ] + [[f"window fails suite: {k}", "windows", str(n)] for k, n in w["dq_failure"].dropna().value_counts().items()]
    image = base64.b64encode(png.read_bytes()).decode()
    completeness = ", ".join(f"{k} {v:.0%}" for k, v in present.items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(data.patient_id)} - VitalStream</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;margin:.5em 0 1.5em}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}} th{{background:#f3f3f3}} img{{max-width:100%}}</style>
</head><body>
<h1>Patient {html.escape(data.patient_id)}</h1>
<p>{data.start:%Y-%m-%d %H:%M} to {data.end:%Y-%m-%d %H:%M} UTC ({len(w)} windows of
{data.window.total_seconds() / 60:g} min). {headline}.<br>
Windows with data per stream: {completeness}. Risk cut-offs: medium {levels.medium:g}, high {levels.high:g}.
Not a diagnosis: a screening score for review by a clinician.</p>
<img src="data:image/png;base64,{image}" alt="streams, risk and probabilities over time">
<h2>High-risk episodes (risk at or above {levels.high:g})</h2>
{_table(["from", "to", "peak risk", "likeliest condition"], episode_rows)}
<h2>Alerts (raised, repeated, acknowledged, resolved)</h2>
{_table(["alert", "raised", "repeats", "acknowledged", "resolved", "reason"], alert_lifecycles(data.alerts))}
<h2>Anomalies</h2>{_table(["reason", "stream", "count"], anomaly_rows)}
<h2>Gaps (a sensor sent nothing)</h2>{_table(["stream", "from", "to", "minutes"], gap_rows)}
</body></html>
"""


def _table(header: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
