"""Training labels: does an adverse event start within the horizon after a window ends?"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.model_contract import CONDITIONS, HEADS


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
    ids = pa.concat_arrays(
        [windows.column("patient_id").combine_chunks(), events.column("patient_id").combine_chunks()]
    )
    codes = np.asarray(pc.dictionary_encode(ids).indices, dtype=np.int64)
    w_code, e_code = codes[:n], codes[n:]
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
    # ongoing: some event with onset <= window_end < end
    order = np.lexsort((onset, e_code))
    for i in order:  # events are few; windows are handled as arrays
        ongoing |= (w_code == e_code[i]) & (end > onset[i]) & (end <= ev_end[i])
    return labels, ongoing
