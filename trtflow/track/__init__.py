"""Tracking and publishing: MLflow runs (and, later, the registry and S3)."""
