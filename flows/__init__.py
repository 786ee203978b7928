"""Prefect flows; imported lazily by the CLI (importing Prefect costs seconds)."""
