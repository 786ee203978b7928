# polygraphy/logger/logger.py: the Logger class and the global G_LOGGER
from contextlib import AbstractContextManager

class Logger:
    WARNING: int
    ERROR: int
    CRITICAL: int
    def verbosity(self, severity: int = ...) -> AbstractContextManager[None]: ...

G_LOGGER: Logger
