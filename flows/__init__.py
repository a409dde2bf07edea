"""Prefect 3 flows: thin compositions of the plain functions in `pipeline/` and `models/`."""
