"""One exception type per kind of user mistake.

Every error names the offending file, field or tensor and what was expected;
the CLI prints the message as one paragraph and exits non-zero.
"""

from __future__ import annotations


class TrtflowError(Exception):
    """Base of every error trtflow raises on purpose (bad input, failed check)."""

    exit_code = 2
    transient = False  # True: a service did not answer; it may pass, so schedulers retry


class UnreachableError(TrtflowError):
    """A server trtflow talks to (MLflow tracking, an S3 endpoint) did not answer, even
    after retries. Not the input's fault: unattended runs retry it with a backoff."""

    transient = True


class ParamsError(TrtflowError):
    """A params file is missing, malformed, or has an unknown/wrong-typed field."""


class ModelError(TrtflowError):
    """A model source cannot be loaded: missing, corrupt, unsafe or mismatched."""


class DataError(TrtflowError):
    """A calibration/evaluation data source does not match the model's inputs."""


class DataCastWarning(UserWarning):
    """Data of another dtype than the model input was cast (every value kept)."""


class DamagedArtifactWarning(UserWarning):
    """A stored artifact failed its digest check on a cache hit: set aside and rebuilt."""


class ParityError(TrtflowError):
    """A converted graph's outputs differ from the reference beyond tolerance."""


class CalibrationError(TrtflowError):
    """Calibration could not produce valid scales (bad histograms, bad cache)."""


class BuildError(TrtflowError):
    """An engine could not be built for the requested target."""


class GateError(TrtflowError):
    """An engine failed a validation gate (accuracy drop, speed-up)."""

    exit_code = 3


class StoreError(TrtflowError):
    """The artifact store is unusable (read-only, corrupt entry)."""


class RegistryError(TrtflowError):
    """The model registry refused an operation (unknown model/version, no such alias)."""


class TrackingError(UnreachableError):
    """The MLflow tracking server cannot be reached."""


class S3UnreachableError(StoreError, UnreachableError):
    """The S3 endpoint engines are published to (or fetched from) does not answer."""
