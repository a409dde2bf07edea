"""VitalStream: patient sensor streams from Kafka to event-time windows, quality checks and risk scores.

The stages, in the order data passes through them:
`decode` (bytes -> Arrow) -> `validate` (expectation suites -> quarantine) -> `window` (dedupe, watermark,
tumbling event-time windows) -> `features` (per-window, per-stream aggregates) -> `score` (LSTM) -> `sink`
(Parquet lake). `engine` composes them per micro-batch; Kafka, Parquet and the broker sit at the edges.
"""

__version__ = "0.1.0"
