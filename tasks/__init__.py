"""Prefect tasks: thin wrappers around the steps of `trtflow.plan`."""
