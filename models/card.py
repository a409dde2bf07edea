"""The model card: a Markdown page of a trained checkpoint's data, targets, test figures beside the
baselines with their intervals, alerting, calibration, forecasts and promotion verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.evaluate import BASELINES, REAL_BASELINES
from models.lstm import Checkpoint
from models.outcomes import SCORES
from pipeline.model_contract import HEADS, RECENT_HOURS, WINDOW_FEATURES


def _ci(r: dict[str, Any], key: str) -> str:
    lo, hi = r[f"{key}_ci"]
    return f"{r[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def _lead(a: dict[str, Any]) -> str:
    lo, hi = a.get("median_lead_ci", [float("nan"), float("nan")])
    return f"{a['median_lead_minutes']:.1f} [{lo:.1f}, {hi:.1f}]"


def model_card(
    ckpt: Checkpoint, path: Path, promotion: dict[str, Any] | None = None, lodo: dict[str, Any] | None = None
) -> None:
    """Write the card; `lodo` (or `lodo.json` beside the card) adds the leave-one-dataset-out results."""
    m, t = ckpt.metrics, ckpt.training
    d, c = t["data"], t["config"]
    pics = path.stem.replace("model_card", "")  # "" or ".candidate": pictures are named alike
    lines = [
        f"# Risk LSTM `{ckpt.version}`",
        "",
        f"Trained by `vitalstream train` (flow `vitalstream-train`, `models/train.py`) in {t['seconds']} s with "
        f"`--patients {c['patients']} --hours {c['hours']} --epochs {c['epochs']} --seed {c['seed']}"
        + "".join(f" --real {r}" for r in c.get("real", ()))
        + (f" --holdout {c['holdout']}" if c.get("holdout") else "")
        + "`."
        + (
            f" Figures re-evaluated on {t['re_evaluated']} by `vitalstream evaluate` (the same weights, "
            "calibration and test patients; the evaluation code of that day)."
            if t.get("re_evaluated")
            else ""
        ),
        f"Data: {d['source']}: {d['simulated_patients']} patients x {d['hours_per_patient']} h, profiles "
        + ", ".join(f"{k} {v}" for k, v in d["profiles"].items())
        + "; events "
        + ", ".join(f"{k} {v}" for k, v in d["events"].items())
        + f". Split by patient: {d['patients']['train']} train / {d['patients']['val']} validation / "
        f"{d['patients']['test']} test (simulated and real, each cohort split by patient). Simulated training and "
        "validation patients get a drawn sensor configuration "
        + ", ".join(f"{k} {v}" for k, v in d.get("augmentation", {}).get("configurations", {}).items())
        + f" ({d.get('augmentation', {}).get('pre_aggregated', 0)} with heart and respiration rate pre-aggregated "
        "to one value per window); labels come from the readings they keep. Windows during an ongoing event "
        f"({d['windows_during_events_excluded']}) "
        "are left out of training and evaluation: scoring them would reward detection, not prediction.",
        f"Model: {ckpt.config.layers}-layer LSTM x {ckpt.config.hidden} hidden over {ckpt.config.window_count} "
        f"windows of 5 min, {len(ckpt.feature_names)} inputs each"
        + (
            f" (the window's own {len(WINDOW_FEATURES)} and the patient's last {RECENT_HOURS} h out of range)"
            if len(ckpt.feature_names) > len(WINDOW_FEATURES)
            else " (the window's own)"
        )
        + f"; horizon {ckpt.config.horizon_minutes} min; overall risk from the "
        f"{'condition heads, 1 - prod(1 - p)' if ckpt.any_source == 'conditions' else 'any-event head'} "
        f"(validation AUROC: head {m['validation_any_auroc'].get('head', float('nan')):.3f}, "
        f"from conditions {m['validation_any_auroc'].get('conditions', float('nan')):.3f}); isotonic calibration"
        + (
            f"; judged and trained from their own stream alone: {', '.join(ckpt.config.own_stream_heads)}."
            if ckpt.config.own_stream_heads
            else "."
        ),
    ]
    lines += real_section(m, d, lodo if lodo is not None else read_lodo(path), pics)
    lines += outcome_section(_read_outcomes(path, ckpt.version))
    lines += [
        "# Simulated patients (sim/simulate.py; the first model issue's targets)",
        "",
        f"Test set: {m['test_windows']} windows of {m['test_patients']} held-out simulated patients with every "
        f"stream ({m['test_patient_days']:.1f} patient-days). Each head is judged on the windows that assess it "
        f"(a fall detector sends only detections, so `p_fall` is assessed only near one). Intervals: 95 % "
        f"percentile bootstrap over patients ({c['bootstrap']} resamples).",
        "",
        "## Targets (simulation)",
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
        lines += procedure_table(promotion.get("procedure"))
    lines += [
        f"![loss curves](loss_curve{pics}.png) ![calibration](calibration{pics}.png) ![ROC](roc{pics}.png)",
        "",
    ]
    path.write_text("\n".join(lines))


def _event_free(r: dict[str, Any]) -> str:
    calm = r.get("event_free_days")
    if calm is None:
        return ""
    return (
        f" Event-free days (no event under way or beginning within the hour after, any patient;"
        f" {calm['patient_days']:.1f} patient-days, {calm['windows']} windows): {100 * calm['high_share']:.1f} % of"
        f" windows `high`, {calm['alerts_per_patient_day']:.2f} alerts per patient-day."
    )


TARGET_NAMES = {
    "hypoglycaemia_auroc": "hypoglycaemia AUROC >= best baseline + 0.05",
    "any_auroc": "any-event AUROC >= best baseline + 0.05",
    "no_event_high_share": "patients without events: share of `high` windows <= 0.05",
    "no_event_alerts_per_day": "patients without events: alerts (risk >= high, one per hour) per patient-day <= 1",
    "event_free_high_share": "event-free days of any patient: share of `high` windows <= 0.05",
    "event_free_alerts_per_day": (
        "event-free days of any patient: alerts (risk >= high, one per hour) per patient-day <= 1"
    ),
    "ece": "expected calibration error <= 0.05",
}


def procedure_table(procedure: dict[str, Any] | None) -> list[str]:
    """The procedure rule's runs (`models.promotion.compare_procedures`): per held-out cohort and seed, the
    AUROC of each judged target for both procedures."""
    if not procedure:
        return []
    from models.promotion import JUDGED_HEADS

    lines = [
        "The training procedure changed ("
        + ", ".join(f"`{k}` {old} -> {new}" for k, (old, new) in procedure["changes"].items())
        + "), so it was judged leave one dataset out against the shipped checkpoint's procedure, same seeds "
        "(AUROC, candidate / shipped; a head is judged where the cohort has enough events):",
        "",
        "| held-out cohort | seed | " + " | ".join(JUDGED_HEADS) + " |",
        "|---|---|" + "---|" * len(JUDGED_HEADS),
    ]
    for name, by_seed in procedure["runs"].items():
        for seed, r in by_seed.items():
            cells = []
            for h in JUDGED_HEADS:
                a, b = r["candidate"]["heads"].get(h, {}), r["active"]["heads"].get(h, {})
                judged = "" if a.get("enough_events") else " (not judged)"
                cells.append(f"{a.get('auroc', float('nan')):.3f} / {b.get('auroc', float('nan')):.3f}{judged}")
            lines.append(f"| {name} | {seed} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def read_lodo(card: Path) -> dict[str, Any] | None:
    """The leave-one-dataset-out results (`vitalstream lodo`) beside the shipped card; none for a candidate's."""
    path = card.with_name("lodo.json")
    return json.loads(path.read_text()) if path.exists() and card.stem == "model_card" else None


def _read_outcomes(card: Path, version: str) -> dict[str, Any] | None:
    """`outcomes.json` beside the card (`vitalstream outcomes`), when it judged this very checkpoint."""
    path = card.with_name("outcomes.json")
    if not path.exists() or card.stem != "model_card":
        return None
    result: dict[str, Any] = json.loads(path.read_text())
    return result if result.get("model_version") == version else None


def outcome_section(r: dict[str, Any] | None) -> list[str]:
    """In-hospital death on patients the checkpoint never saw (models/outcomes.py), when it has been run."""
    if r is None:
        return []
    s, a, na = r["selection"], r["assessable"], r["not_assessable"]
    lines = [
        f"## In-hospital death, {r['cohort']} (patients the checkpoint never saw)",
        "",
        f"`{r['command']}`: {r['seconds']:.0f} s. Rules (`models/outcomes.py`, fixed before the first result): "
        f"the {s['seen_by_checkpoint']} stays training drew are left out, {s['drawn']} of the other "
        f"{s['eligible']} drawn (seed {r['config']['seed']}); {s['no_outcome']} stays without a recorded outcome "
        f"are left out. Each patient's score over the windows that end within {r['config']['hours']:g} h of "
        "their first reading and have a risk. The risk ranks events within 60 minutes; death is not what it was "
        "trained for.",
        "",
        f"{r['patients']} patients, {r['deaths']} deaths ({100 * r['death_rate']:.1f} %); not assessable (no "
        f"risk in the horizon) {na['patients']} ({100 * na['share']:.1f} %, {na['deaths']} deaths); judged: "
        f"{a['patients']} ({a['deaths']} deaths).",
        "",
        "| score | AUROC (95 % CI) | AUPRC (95 % CI) |",
        "|---|---|---|",
    ]
    lines += [
        f"| {label} | {_ci(r['scores'][k], 'auroc')} | {_ci(r['scores'][k], 'auprc')} |" for k, label in SCORES.items()
    ]
    gains = "; ".join(
        f"{pair}: {r['scores'][pair.split(' - ')[0]]['auroc'] - r['scores'][pair.split(' - ')[1]]['auroc']:+.3f} "
        f"[{lo:+.3f}, {hi:+.3f}]"
        for pair, (lo, hi) in r["gains"].items()
    )
    return [*lines, "", f"Paired AUROC gains: {gains}.", ""]


def _verdict(r: dict[str, Any]) -> str:
    if not r.get("judged", True):
        return "not judged (too few events)" if "why" not in r else f"not judged ({r['why']})"
    return "yes" if r["met"] else "**no**"


def _targets_table(targets: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| target | model | required | met |", "|---|---|---|---|"]
    for key, r in targets.items():
        model = r.get("model", float("nan"))
        need = r.get("required", float("nan"))
        best = f" ({REAL_BASELINES.get(r['best_baseline'], r['best_baseline'])})" if "best_baseline" in r else ""
        lines.append(f"| {TARGET_NAMES[key]} | {model:.3f} | {need:.3f}{best} | {_verdict(r)} |")
    return lines


def _cohort_tables(name: str, r: dict[str, Any]) -> list[str]:
    lines = [
        f"{r['windows']} windows, {r['patients']} patients, {r['patient_days']:.1f} patient-days.",
        "",
        *_targets_table(r["targets"]),
        "",
        "| head | windows | positives (patients) | model AUROC | best baseline | gain (paired 95 % CI) |",
        "|---|---|---|---|---|---|",
    ]
    for head, h in r["heads"].items():
        b = h["best_baseline"]
        lo, hi = h["auroc_gain_ci"]
        lines.append(
            f"| {head} | {h['windows']} | {h['positives']} ({h['event_patients']}) | {_ci(h['model'], 'auroc')} | "
            f"{REAL_BASELINES.get(b, b)} {_ci(h[b], 'auroc')} | {h['model']['auroc'] - h[b]['auroc']:+.3f} "
            f"[{lo:+.3f}, {hi:+.3f}] |"
        )
    lines += ["", "| sensor configuration | windows | positives | overall AUROC | ECE |", "|---|---|---|---|---|"]
    for key, g in r["by_configuration"].items():
        lines.append(f"| {key or '-'} | {g['windows']} | {g['positives']} | {g['auroc']:.3f} | {g['ece']:.3f} |")
    q = r["no_event_patients"]
    lines += [
        "",
        f"Patients without any event ({q['patients']}, {q['windows']} windows): {100 * q['high_share']:.1f} % of "
        f"windows `high`, {q['alerts_per_patient_day']:.2f} alerts per patient-day; all patients: "
        f"{r['alerts_per_patient_day']:.2f} alerts per patient-day.{_event_free(r)} Calibration bins (predicted / "
        "observed / windows): "
        + "; ".join(f"{mp:.2f} / {rate:.2f} / {n}" for mp, rate, n in r["calibration"]["bins"])
        + ".",
        "",
    ]
    return lines


def real_section(m: dict[str, Any], d: dict[str, Any], lodo: dict[str, Any] | None, pics: str = "") -> list[str]:
    """Real recordings first: leave-one-dataset-out, then patient-level splits inside the training cohorts."""
    lines = [
        "",
        "# Real recordings",
        "",
        "Labels on real recordings come from the simulator's threshold definitions (`sim.simulate.detect_events`) "
        "applied to the readings each patient has; windows from the pipeline's own `window_features` "
        "(`models/cohorts.py`). Baselines see only readings before the window end: "
        + ", ".join(REAL_BASELINES.values())
        + ". A head is judged only on the windows that assess it, and a target only where the cohort has at "
        "least 20 positive windows from 5 patients.",
        "",
        f"![calibration on real recordings](calibration_real{pics}.png)",
        "",
    ]
    if lodo:
        lines += [
            "## Leave one dataset out (the cohort was in neither training nor validation)",
            "",
            f"`{lodo['command']}`: {lodo['seconds']:.0f} s in all. "
            + (f"Not evaluated: {', '.join(lodo['missing'])}." if lodo.get("missing") else ""),
            "",
        ]
        for name, r in lodo["cohorts"].items():
            lines += [f"### {name} held out", "", *_cohort_tables(name, r)]
    else:
        lines += ["No leave-one-dataset-out results beside this card (`vitalstream lodo` writes them).", ""]
    real = m.get("real", {})
    if real:
        lines += ["## Held-out patients of the training cohorts (patient-level split)", ""]
        for name, r in real.items():
            role = d.get("real", {}).get(name, {}).get("role", "")
            lines += [f"### {name} ({role})", "", *_cohort_tables(name, r)]
    else:
        lines += ["This checkpoint was trained on simulated patients only.", ""]
    return lines
