"""The live run's Prometheus endpoint: what one committed batch adds, scraped over HTTP."""

from __future__ import annotations

import socket
import time
import urllib.request

import pyarrow as pa

from ops.metrics import LiveMetrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}


def test_a_batch_shows_up_in_the_scrape() -> None:
    port = free_port()
    lags = iter([{"vitals.glucose:0": 7}, RuntimeError("broker gone")])

    def lag(offsets: dict[str, int]) -> dict[str, int]:
        got = next(lags)
        if isinstance(got, Exception):
            raise got
        return got

    m = LiveMetrics(port, lag=lag, lag_every_s=0.0)
    try:
        quarantine = pa.table({"topic": ["vitals.glucose", "vitals.glucose"], "reason": ["late", "invalid_json"]})
        watermark = int(time.time() * 1000) - 90_000
        alerts = {"fall:raised": 1, "cardiac:resolved": 2}
        m.observe({"vitals.glucose": 10, "vitals.fall": 1}, quarantine, 4, alerts, watermark, 0.3, {})
        m.observe({"vitals.glucose": 5}, quarantine.slice(0, 0), 0, {}, watermark, 0.2, {})  # lag call fails: kept
        got = scrape(port)
    finally:
        m.close()
    assert got['vitalstream_consumed_messages_total{topic="vitals.glucose"}'] == 15
    assert got['vitalstream_quarantined_messages_total{reason="late",topic="vitals.glucose"}'] == 1
    assert got['vitalstream_alert_events_total{condition="cardiac",state="resolved"}'] == 2
    assert got["vitalstream_windows_scored_total"] == 4
    assert got['vitalstream_consumer_lag_messages{partition="vitals.glucose:0"}'] == 7
    assert 89 <= got["vitalstream_watermark_delay_seconds"] <= 120
    assert got["vitalstream_batch_seconds_count"] == 2
