"""Training labels: does an adverse event start within the horizon after a window ends?"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.model_contract import CONDITIONS, HEADS
from pipeline.readings import shared_codes


def window_labels(windows: pa.Table, events: pa.Table, horizon_minutes: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Per window: [N, heads] float32 labels (head "any" and one per condition) and an `ongoing` mask.

    A label is 1 when an event of that patient (and condition) has its onset in (window_end, window_end + H].
    `ongoing` marks windows during an event (onset <= window_end < end): excluded from training and
    evaluation, since a score there would reward detecting, not predicting.
    """
    n = len(windows)
    labels = np.zeros((n, len(HEADS)), dtype=np.float32)
    ongoing = np.zeros(n, dtype=bool)
    if n == 0 or len(events) == 0:
        return labels, ongoing
    w_code, e_code = shared_codes(windows.column("patient_id"), events.column("patient_id"))
    end = windows.column("window_end").cast(pa.int64()).to_numpy()
    onset = events.column("onset").cast(pa.int64()).to_numpy()
    ev_end = events.column("end").cast(pa.int64()).to_numpy()
    cond = np.asarray(events.column("condition").to_pylist(), dtype=object)
    h = horizon_minutes * 60_000
    span = int(max(end.max(), ev_end.max()) + h + 1)
    for head, mask in [("any", np.ones(len(onset), bool))] + [(c, cond == c) for c in CONDITIONS]:
        if not mask.any():
            continue
        key = np.sort(e_code[mask] * span + onset[mask])
        lo = np.searchsorted(key, w_code * span + end, side="right")  # onset > window_end
        hi = np.searchsorted(key, w_code * span + end + h, side="right")  # onset <= window_end + H
        labels[:, HEADS.index(head)] = hi > lo
    # ongoing: some event of the patient with onset < window_end <= its end. Events sorted by (patient, onset);
    # a running maximum of their ends per patient (offset by patient so that it restarts with each) gives,
    # for each window, the latest end among the events that began before it.
    order = np.lexsort((onset, e_code))
    key = e_code[order] * span + onset[order]
    running = np.maximum.accumulate(e_code[order] * span + ev_end[order])
    idx = np.searchsorted(key, w_code * span + end, side="left") - 1  # last event with onset < window_end
    found = idx >= 0
    same = np.zeros(n, dtype=bool)
    same[found] = e_code[order][idx[found]] == w_code[found]
    latest_end = np.where(same, running[np.maximum(idx, 0)] - w_code * span, np.iinfo(np.int64).min)
    ongoing = same & (end <= latest_end)
    return labels, ongoing
