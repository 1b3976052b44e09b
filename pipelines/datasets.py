"""Where the bundled datasets are found, for `input.dataset`.

The datasets are package data: a wheel installs them as `aistack/datasets/` beside this package,
an editable install reads the checkout's `datasets/` (the same relative place). AISTACK_DATASETS
names another directory of datasets instead (one sub-directory per dataset).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "AISTACK_DATASETS"
PACKAGED = Path(__file__).resolve().parent.parent / "datasets"


def datasets_dir() -> Path:
    """AISTACK_DATASETS if set, else the datasets installed with aistack."""
    return Path(os.environ[ENV]) if os.environ.get(ENV) else PACKAGED


def dataset_path(name: str, root: Path | None = None) -> Path:
    """The directory of a bundled dataset; a ValueError says where it was looked for and how to point elsewhere."""
    root = root if root is not None else datasets_dir()
    where = (
        f"{ENV}={root}"
        if os.environ.get(ENV)
        else f"{root} (installed with aistack; set {ENV} to use another directory)"
    )
    if not root.is_dir():
        raise ValueError(f"input.dataset {name!r}: there is no datasets directory at {where}")
    path = root / name
    if not path.is_dir():
        bundled = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
        raise ValueError(
            f"input.dataset {name!r} is not in {where}; datasets there: {', '.join(bundled) or 'none'}"
        )
    return path
