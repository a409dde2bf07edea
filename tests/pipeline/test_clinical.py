"""The clinical thresholds' one home: NEWS2's bands and what is derived from them, and the shipped alert
policy's observed conditions held to the same numbers."""

from __future__ import annotations

import numpy as np

from pipeline.alert_policy import default_policy
from pipeline.clinical import (
    GLUCOSE_LOW,
    HEART_RATE_RED,
    NEWS2_PULSE,
    NEWS2_RESPIRATION,
    RESPIRATION_RED,
    news2_points,
    normal_band,
)


def test_news2_bands_give_the_published_red_and_normal_rates() -> None:
    assert HEART_RATE_RED == (40, 131) and RESPIRATION_RED == (8, 25)
    assert normal_band(NEWS2_PULSE) == (51, 90) and normal_band(NEWS2_RESPIRATION) == (12, 20)


def test_news2_points_score_whole_rates_and_nothing_for_no_reading() -> None:
    hr = np.array([40, 41, 50, 51, 90, 91, 110, 111, 130, 131, 130.4, 130.6, 110.5, np.nan])
    assert news2_points(hr, NEWS2_PULSE).tolist() == [3, 1, 1, 0, 0, 1, 1, 2, 2, 3, 2, 3, 1, 0]
    rr = np.array([8, 9, 11, 12, 20, 21, 24, 25, 24.4, 24.6, np.nan])
    assert news2_points(rr, NEWS2_RESPIRATION).tolist() == [3, 1, 1, 0, 0, 2, 2, 3, 2, 3, 0]


def test_the_shipped_alert_policy_raises_at_the_clinical_thresholds() -> None:
    raise_at = {rule.condition: rule.raise_at for rule in default_policy().rules}
    assert raise_at["heart_rate_high"] == HEART_RATE_RED[1]  # at or above
    assert raise_at["heart_rate_low"] == HEART_RATE_RED[0] + 1  # below: at or below 40
    assert raise_at["respiration_high"] == RESPIRATION_RED[1]
    assert raise_at["respiration_low"] == RESPIRATION_RED[0] + 1
    assert raise_at["glucose_low"] == raise_at["predicted_low_glucose"] == GLUCOSE_LOW
