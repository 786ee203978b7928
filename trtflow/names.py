"""Names that become paths: one rule for every name a user gives, one join that refuses escapes.

A model, target or experiment name ends up in file paths (the store's locks, the
report), MLflow names (experiments, registered models `<model>-<target>`, artifact
folders) and S3 keys. So each is checked once, when params are loaded, against one rule:

    1 to 64 characters: letters, digits, '.', '_' and '-', starting with a letter or digit

That keeps `/` and `..` segments, leading dashes (read as a CLI option), whitespace,
control characters and names longer than a file name may be out of every place a
name goes. Every path built from such a name still goes through `inside()`, which
refuses a result outside its base directory (defence in depth: the rule is lexical).
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

from trtflow.errors import ParamsError

MAX_NAME_CHARS = 64
RULE = ("1 to 64 characters: letters, digits, '.', '_' and '-', starting with a letter or "
        "digit")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def name_problem(value: str) -> str | None:
    """Why `value` is not a valid name, or None."""
    if _NAME.fullmatch(value):
        return None
    if not value:
        return "it is empty"
    if len(value) > MAX_NAME_CHARS:
        return f"it has {len(value):,} characters"
    bad = sorted({c for c in value if not (c.isascii() and (c.isalnum() or c in "._-"))})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        return f"it contains {shown}"
    return f"it starts with {value[0]!r}"


def check_name(value: str, field: str) -> str:
    """`value` if it follows the rule, else a ParamsError naming `field`."""
    problem = name_problem(value)
    if problem is not None:
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise ParamsError(f"{field}: {shown!r} is not a valid name ({problem}); a name "
                          f"becomes part of paths, MLflow names and S3 keys, so it must be "
                          f"{RULE}")
    return value


def _validated(value: str) -> str:
    problem = name_problem(value)
    if problem is not None:  # pydantic turns this into "field 'model.name': ..."
        raise ValueError(f"not a valid name ({problem}); a name becomes part of paths, "
                         f"MLflow names and S3 keys, so it must be {RULE}")
    return value


# A params field holding a name: `name: Name = Field(...)`.
Name = Annotated[str, AfterValidator(_validated)]


def registered_name(model: str, target: str) -> str:
    """The MLflow registered model of one target's engines: `<model>-<target>`."""
    return f"{model}-{target}"


def inside(base: Path, *parts: str) -> Path:
    """`base / parts...`, refused (ParamsError) when the result would leave `base`."""
    root = Path(os.path.normpath(Path(base).absolute()))
    full = Path(os.path.normpath(root.joinpath(*parts)))
    if full != root and root not in full.parents:
        joined = "/".join(parts)
        raise ParamsError(f"the path {joined!r} would leave {root}; names that become paths "
                          f"must be {RULE}")
    return full


# S3's bucket naming rules (AWS "General purpose bucket naming rules"), checked when params
# load so a bad name fails before any stage runs, not at upload.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
BUCKET_RULE = ("3 to 63 characters: lower-case letters, digits, '.' and '-', starting and "
               "ending with a letter or digit, no '..', not an IP address")


def bucket_problem(value: str) -> str | None:
    """Why `value` is not a valid S3 bucket name, or None."""
    if not _BUCKET.fullmatch(value):
        if not 3 <= len(value) <= 63:
            return f"it has {len(value)} characters"
        odd = sorted({c for c in value if not (c.islower() or c.isdigit() or c in ".-")})
        if odd:
            return "it contains " + ", ".join(repr(c) for c in odd[:5])
        return f"it starts or ends with {value[0] if not value[0].isalnum() else value[-1]!r}"
    if ".." in value or ".-" in value or "-." in value:
        return "it has '..' or a '.' next to a '-'"
    try:
        ipaddress.IPv4Address(value)
        return "it is an IP address"
    except ValueError:
        pass
    if value.startswith(("xn--", "sthree-")) or value.endswith(("-s3alias", "--ol-s3")):
        return "it uses a prefix or suffix S3 reserves"
    return None


def _validated_bucket(value: str) -> str:
    problem = bucket_problem(value)
    if problem is not None:
        raise ValueError(f"not a valid S3 bucket name ({problem}); S3 needs {BUCKET_RULE}")
    return value


def _validated_prefix(value: str) -> str:
    for part in value.split("/"):
        problem = name_problem(part)
        if problem is not None:
            raise ValueError(f"each '/'-separated part of an S3 prefix must be a valid name: "
                             f"{part!r} is not ({problem}); {RULE}")
    return value


# `publish.bucket` and `publish.prefix` in params.
BucketName = Annotated[str, AfterValidator(_validated_bucket)]
KeyPrefix = Annotated[str, AfterValidator(_validated_prefix)]
