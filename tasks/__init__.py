"""Prefect tasks: thin wrappers around `trtflow.pipeline` steps."""
