"""Is a tracking server there? One HTTP probe, so a dead server fails a run in seconds."""

from __future__ import annotations

import urllib.error
import urllib.request


def unreachable(uri: str, timeout: float = 5.0) -> str | None:
    """Why an HTTP server (an MLflow tracking server) at `uri` does not answer `/health`,
    or None when it answers at all."""
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # it answered, if not with 200
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))
    return None
