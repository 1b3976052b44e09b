"""Storage locations given on the command line: a plain path is accepted wherever a URI is."""

from __future__ import annotations

import re
from pathlib import Path

from aistack.crds.models import STORAGE_URI


def storage_uri(value: str, option: str = "--out") -> str:
    """`value` as the URI the CRD accepts: a plain path becomes its absolute file:// URI (as
    `aistack etl --out` reads it); a URI must be file:///absolute/path or s3://bucket/prefix."""
    if "://" not in value:
        value = Path(value).expanduser().resolve().as_uri()
    if not re.match(STORAGE_URI, value):
        raise ValueError(
            f"{option}: {value!r} is not a path, a file:///absolute/path or an s3://bucket/prefix URI"
        )
    return value
