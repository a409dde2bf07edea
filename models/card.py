"""The model card: a Markdown page of a trained checkpoint's data, targets, test figures beside the
baselines with their intervals, alerting, calibration, forecasts and promotion verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.evaluate import BASELINES
from models.lstm import Checkpoint
from pipeline.model_contract import HEADS


def _ci(r: dict[str, Any], key: str) -> str:
    lo, hi = r[f"{key}_ci"]
    return f"{r[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def _lead(a: dict[str, Any]) -> str:
    lo, hi = a.get("median_lead_ci", [float("nan"), float("nan")])
    return f"{a['median_lead_minutes']:.1f} [{lo:.1f}, {hi:.1f}]"


def model_card(ckpt: Checkpoint, path: Path, promotion: dict[str, Any] | None = None) -> None:
    m, t = ckpt.metrics, ckpt.training
    d, c = t["data"], t["config"]
    pics = path.stem.replace("model_card", "")  # "" or ".candidate": pictures are named alike
    lines = [
        f"# Risk LSTM `{ckpt.version}`",
        "",
        f"Trained by `vitalstream train` (flow `vitalstream-train`, `models/train.py`) in {t['seconds']} s with "
        f"`--patients {c['patients']} --hours {c['hours']} --epochs {c['epochs']} --seed {c['seed']}`.",
        f"Data: {d['source']}: {d['simulated_patients']} patients x {d['hours_per_patient']} h, profiles "
        + ", ".join(f"{k} {v}" for k, v in d["profiles"].items())
        + "; events "
        + ", ".join(f"{k} {v}" for k, v in d["events"].items())
        + f". Split by patient: {d['patients']['train']} train / {d['patients']['val']} validation / "
        f"{d['patients']['test']} test. Windows during an ongoing event ({d['windows_during_events_excluded']}) "
        "are left out of training and evaluation: scoring them would reward detection, not prediction.",
        f"Model: {ckpt.config.layers}-layer LSTM x {ckpt.config.hidden} hidden over {ckpt.config.window_count} "
        f"windows of 5 min; horizon {ckpt.config.horizon_minutes} min; overall risk from the "
        f"{'condition heads, 1 - prod(1 - p)' if ckpt.any_source == 'conditions' else 'any-event head'} "
        f"(validation AUROC: head {m['validation_any_auroc'].get('head', float('nan')):.3f}, "
        f"from conditions {m['validation_any_auroc'].get('conditions', float('nan')):.3f}); isotonic calibration.",
        "",
        f"Test set: {m['test_windows']} windows of {m['test_patients']} held-out patients "
        f"({m['test_patient_days']:.1f} patient-days). Intervals: 95 % percentile bootstrap over patients "
        f"({c['bootstrap']} resamples).",
        "",
        "## Targets",
        "",
        "| target | model | required | met |",
        "|---|---|---|---|",
    ]
    names = {
        "auroc": "overall AUROC >= best baseline + 0.05",
        "auprc": "overall AUPRC >= 1.5 x best baseline",
        "sensitivity_at_budget": (
            f"sensitivity at <= {m['alert_budget_per_day']:g} alert/patient-day >= 1.5 x NEWS2 red rule"
        ),
        "median_lead_minutes": "median lead time first alert -> onset >= 20 min",
        "ece": "expected calibration error <= 0.05",
    }
    for key, r in m["targets"].items():
        lines.append(f"| {names[key]} | {r['model']:.3f} | {r['required']:.3f} | {'yes' if r['met'] else '**no**'} |")
    for metric in ("auroc", "auprc"):
        lines += [
            "",
            f"## {metric.upper()} per head (95 % CI)",
            "",
            "| head | positives | model | "
            + " | ".join(BASELINES.values())
            + (" | model - best baseline (paired) |" if metric == "auroc" else " |"),
            "|---|---|---|" + "---|" * len(BASELINES) + ("---|" if metric == "auroc" else ""),
        ]
        for h in HEADS:
            r = m["heads"][h]
            gain = r["model"]["auroc"] - r[r["best_baseline"]]["auroc"]
            lo, hi = r["auroc_gain_ci"]
            cells = [_ci(r["model"], metric), *(_ci(r[b], metric) for b in BASELINES)]
            if metric == "auroc":
                cells.append(f"{gain:+.3f} [{lo:+.3f}, {hi:+.3f}] vs {BASELINES[r['best_baseline']]}")
            lines.append(f"| {h} | {r['positives']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Alerting on the overall risk at <= {m['alert_budget_per_day']:g} alert per patient-day",
        "",
        "An alert is a window whose score reaches the threshold, at most one per patient per horizon (repeats "
        "suppressed). Sensitivity: events with an alert in the hour before onset, among events with a scored "
        "window in that hour; PPV: alerts followed by an onset within the hour; lead time: onset minus the first "
        "such alert (its interval: patients with a detected event resampled, threshold fixed). The NEWS2 red rule "
        "is a fixed rule, shown at its own alert rate.",
        "",
        "| scorer | threshold | alerts / patient-day | sensitivity | PPV | median lead, min [95 % CI] | events |",
        "|---|---|---|---|---|---|---|",
    ]
    label = {"model": "model", **BASELINES, "news2_red": "NEWS2 red rule (HR <= 40 or >= 131, RR <= 8 or >= 25)"}
    for name, a in m["alerts"].items():
        lines.append(
            f"| {label[name]} | {a['threshold']:.3g} | {a['alerts_per_patient_day']:.2f} | {a['sensitivity']:.3f} | "
            f"{a['ppv']:.3f} | {_lead(a)} | {a['detected']} / {a['events']} |"
        )
    cal = m["calibration"]
    lines += [
        "",
        "## Calibration (overall risk, test windows, 10 equal-width bins)",
        "",
        f"Expected calibration error {cal['ece']:.3f} after isotonic calibration on the validation patients "
        f"({cal['ece_uncalibrated']:.3f} without it: the heads are trained with class weights).",
        "",
        "| predicted | observed | windows |",
        "|---|---|---|",
        *(f"| {mp:.3f} | {rate:.3f} | {n} |" for mp, rate, n in cal["bins"]),
        "",
        "## Forecasts and anomalies",
        "",
        f"Each vital's next-window mean is forecast with a {100 * ckpt.forecast_coverage:g} % interval "
        "(Gaussian head, width set on the validation patients); an observed mean outside the interval "
        "forecast for its window is an anomaly. Test coverage: "
        + ", ".join(f"{k} {v['coverage']:.3f} ({v['windows']} windows)" for k, v in m["forecast"].items())
        + ".",
        "",
    ]
    pre = m.get("precursors")
    if pre:
        lines += [
            "## What the signal allows",
            "",
            "Precursors in the simulator (`sim/simulate.py`): glucose moves towards the episode level at "
            "1-3 mg/dL/min (the rate bands of CGM trend arrows, Dexcom user's manual); heart and respiration "
            "rate creep for 1-4 hours towards an abnormal level short of the NEWS2 red thresholds, then cross "
            "them in a 2-15 minute decompensation (abnormal vital signs 1-4 h before most in-hospital cardiac "
            "arrests, severely abnormal ones before few: Andersen et al., Resuscitation 2016); activity falls and "
            "low-confidence stumbles appear 0.5-3 hours before a fall. The fall prodrome's length, the creep's "
            "shape and the 25 % share with no precursor are modelling assumptions, not measured figures.",
            "",
            f"Of the {pre['events']} test events the alert figures count, {pre['no_precursor']} had no precursor in "
            "the simulation (injected with no warning, or caused by no injected episode); the median time from "
            "the start of an event's precursor (when it has covered a tenth of its excursion: before that it is "
            f"lost in the noise) to its threshold onset is {pre['median_precursor_minutes']:.1f} "
            f"min over all of them ({pre['median_precursor_minutes_when_present']:.1f} min where there is one), "
            f"and {100 * pre['share_with_precursor_over_20_minutes']:.0f} % give 20 min or more"
            + (
                " (uncapped, where there is one: quartiles {:.0f} / {:.0f} / {:.0f} min; the figures above are capped "
                "at the horizon).".format(*pre["precursor_minutes_quartiles_when_present"])
                if pre.get("precursor_minutes_quartiles_when_present")
                else "."
            )
            + " An alert that fired "
            "the moment each precursor began would have that median lead time; the model's comes from the events "
            f"it detects ({pre['model_detected']}).",
            "",
        ]
    if promotion is not None:
        lines += [
            "## Promotion",
            "",
            f"{'Promoted' if promotion['promoted'] else 'Not promoted'}: {promotion['reason']} "
            f"(shipped: {promotion['shipped']}).",
            "",
        ]
    lines += [
        f"![loss curves](loss_curve{pics}.png) ![calibration](calibration{pics}.png) ![ROC](roc{pics}.png)",
        "",
    ]
    path.write_text("\n".join(lines))
