"""VitalStream's stages and edges: plain functions over Arrow tables, in the order data passes through them.

`contract` (the wire contract, from schemas/) -> `decode` (bytes -> Arrow) -> `validate` (expectation
suites -> `quarantine`) -> `readings` (canonical readings) -> `window` (dedupe, watermark, tumbling
event-time windows) -> `features` (per-window, per-stream aggregates) -> `model_contract` (what the model
reads). The edges: `batch` (RawBatch, what Kafka hands over), `kafka_settings`, `kafka_io`, `kafka_publish`
and `consumer_process` (Kafka), `sink` (Parquet), `privacy`; `config` and `errors` serve all. Nothing here
imports a higher layer (models, runtime, flows, cli).
"""

__version__ = "0.1.0"
