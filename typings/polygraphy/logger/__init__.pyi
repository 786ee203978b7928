# polygraphy/logger/__init__.py re-exports G_LOGGER from logger.py
from polygraphy.logger.logger import G_LOGGER as G_LOGGER
