"""The published clinical thresholds, in one home. The event labels (`sim.simulate.detect_events`, on
simulated and real readings alike), the clinical baselines (`models.evaluate`: partial NEWS2, CGM levels),
the model's recent course (`model_contract.RECENT_RANGES`) and the shipped alert policy's observed conditions
(`schemas/alert_policy.json`, which a test holds to these numbers) all read them from here.

- CGM glucose levels in mg/dL, from the international consensus on time in ranges (Battelino et al.,
  Diabetes Care 2019): level-2 hypoglycaemia below 54, level 1 below 70; level-1 hyperglycaemia above 180,
  level 2 above 250.
- NEWS2 (Royal College of Physicians, 2017) points for pulse and respiration rate, which NEWS2 scores in whole
  beats or breaths per minute: each band's upper bound and its points, the last band open. Its red band
  (3 points) is also the cardiac and respiratory event threshold.
"""

from __future__ import annotations

import math

import numpy as np

GLUCOSE_VERY_LOW = 54.0  # mg/dL: level-2 hypoglycaemia below it
GLUCOSE_LOW = 70.0  # mg/dL: level-1 hypoglycaemia below it
GLUCOSE_HIGH = 180.0  # mg/dL: level-1 hyperglycaemia above it
GLUCOSE_VERY_HIGH = 250.0  # mg/dL: level-2 hyperglycaemia above it

Bands = tuple[tuple[float, int], ...]  # (upper bound, inclusive; points), the last bound infinite
NEWS2_PULSE: Bands = ((40, 3), (50, 1), (90, 0), (110, 1), (130, 2), (math.inf, 3))
NEWS2_RESPIRATION: Bands = ((8, 3), (11, 1), (20, 0), (24, 2), (math.inf, 3))


def red_band(bands: Bands) -> tuple[float, float]:
    """(low, high): a rate at or below low, or at or above high, scores NEWS2's 3 points."""
    return float(bands[0][0]), float(bands[-2][0] + 1)


def normal_band(bands: Bands) -> tuple[float, float]:
    """(low, high): the whole rates that score 0 points."""
    i = next(i for i, (_, points) in enumerate(bands) if points == 0)
    return float(bands[i - 1][0] + 1), float(bands[i][0])


HEART_RATE_RED = red_band(NEWS2_PULSE)  # (40, 131) per min: the cardiac event threshold
RESPIRATION_RED = red_band(NEWS2_RESPIRATION)  # (8, 25) per min: the respiratory event threshold


def news2_points(values: np.ndarray, bands: Bands) -> np.ndarray:
    """NEWS2 points of each rate, rounded to a whole number first as NEWS2 counts them; NaN scores 0."""
    whole = np.rint(values)
    with np.errstate(invalid="ignore"):
        points = np.select([whole <= bound for bound, _ in bands], [p for _, p in bands], 0)
    return np.where(np.isnan(values), 0, points)
