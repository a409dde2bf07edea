"""The runtime: `engine` (one micro-batch through every stage, pure), `loop` (the batch protocol: poll,
process, dead letters, Parquet, checkpoint, commit), `checkpoint` (the engine's state on disk) and `wiring`
(settings to real Kafka, lake and model). Runs without Prefect; `flows/` wraps it. `prefect_api` starts
Prefect's local server for the commands that run flows, without importing Prefect."""
