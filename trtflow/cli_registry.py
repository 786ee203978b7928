"""`trtflow promote` and `trtflow history`: the model registry from the command line."""

from __future__ import annotations
