"""Calibration and evaluation data, streamed in batches of model-input dicts."""

from trtflow.datasets.stream import Batch, DataStream, open_data, tile_batch

__all__ = ["Batch", "DataStream", "open_data", "tile_batch"]
