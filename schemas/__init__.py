"""Data, not code: the wire contract (JSON Schema per stream), the expectation suites, the output schemas.

Read through `pipeline.contract`; this package exists so that the files travel inside the wheel.
"""
