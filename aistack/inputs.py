"""Where a task may read its input from, checked when it is submitted.

`include` never leaves its dataset (no `..` segment, no absolute path, and, where the files are
on this machine, not through a symlink either), in the CLI as in the gateway. The gateway also
reads `file://` input only under the roots its operator allowed (`--input-root`, default: the
bundled datasets) and, when given a bucket list (`--input-bucket`), `s3://` input only from
those buckets. Reading the files is the ETL layer's job (which confines symlinks met while
walking); this is the refusal up front, with a line that names the field."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from aistack.etl.storage import split_pattern


class InputRefused(ValueError):
    """An input a task may not read: `policy` is True when only this gateway's allow-list
    refuses it (403), False when it is wrong anywhere (422)."""

    def __init__(self, field: str, message: str, policy: bool) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.policy = field, policy


def _resolved(path: Path, resolve: bool) -> Path:
    """The path with `.` and symlinks (when `resolve`) worked out, on this machine's disk."""
    return Path(os.path.realpath(path)) if resolve else Path(os.path.normpath(path))


def check_include(include: str | None, root: Path | None = None, resolve: bool = True) -> None:
    """`include` is a glob inside its dataset: relative, no `..` segment; with `root` (a local
    dataset) and `resolve`, its fixed part must not lead out of `root` through a symlink."""
    if not include:
        return
    field = "spec.input.include"
    if include.startswith("/"):
        raise InputRefused(field, f"{include!r} is an absolute path; give a glob inside the dataset", False)
    if ".." in include.split("/"):
        raise InputRefused(field, f"{include!r} has a '..' segment; it must stay inside the dataset", False)
    if "\0" in include:
        raise InputRefused(field, "contains a NUL character", False)
    if root is not None and resolve:
        fixed, _ = split_pattern(include)
        base = _resolved(root, True)
        if fixed not in ("", ".") and not _resolved(root / fixed, True).is_relative_to(base):
            raise InputRefused(field, f"{include!r} leads out of the dataset through a symlink", False)


@dataclass(frozen=True)
class InputPolicy:
    roots: tuple[Path, ...]  # file:// input must be under one of these
    buckets: tuple[str, ...] = ()  # s3:// input only from these buckets; empty: any bucket
    datasets: Path | None = None  # where `dataset:` names are looked up (local mode)
    resolve: bool = True  # local mode: the files are on this machine, so symlinks are resolved

    @classmethod
    def allowing(
        cls, roots: tuple[Path, ...], buckets: tuple[str, ...], datasets: Path, resolve: bool
    ) -> InputPolicy:
        """The policy of a gateway; no roots given means the bundled datasets and nothing else.
        Local roots must exist here; in cluster mode they are paths on the workflow pods' disks."""
        for root in roots:
            if resolve and not root.is_dir():
                raise ValueError(f"--input-root {root}: not a directory")
            if not root.is_absolute() and not resolve:
                raise ValueError(
                    f"--input-root {root}: give an absolute path (it is read in the workflow pods)"
                )
        chosen = roots or (datasets,)
        return cls(tuple(_resolved(r.absolute(), resolve) for r in chosen), buckets, datasets, resolve)

    def check(self, task_input: dict[str, Any] | None) -> None:
        """Raise InputRefused unless this gateway may read `spec.input` (a dict, as submitted)."""
        if not task_input:
            return  # inputText: nothing to read
        include, uri, dataset = task_input.get("include"), task_input.get("uri"), task_input.get("dataset")
        if dataset:
            root = self.datasets / dataset if self.datasets else None
            check_include(include, root if root is not None and root.is_dir() else None, self.resolve)
        if not uri:
            return
        parsed = urlparse(uri)
        if parsed.scheme == "s3":
            if self.buckets and parsed.netloc not in self.buckets:
                allowed = ", ".join(self.buckets)
                raise InputRefused("spec.input.uri", f"bucket {parsed.netloc!r} is not one this gateway reads "
                                   f"(--input-bucket: {allowed})", True)  # fmt: skip
            check_include(include, None, self.resolve)
            return
        self._check_file(uri, parsed.netloc, unquote(parsed.path), include)

    def _check_file(self, uri: str, host: str, path: str, include: str | None) -> None:
        field = "spec.input.uri"
        if host not in ("", "localhost"):
            raise InputRefused(field, f"{uri!r} names a host; use file:///absolute/path", False)
        if "\0" in path:
            raise InputRefused(field, "contains a NUL character", False)
        if ".." in path.split("/"):
            raise InputRefused(field, f"{uri!r} has a '..' segment", False)
        fixed, glob = split_pattern(path)
        where = _resolved(Path(fixed if fixed.startswith("/") else "/"), self.resolve)
        if not any(where.is_relative_to(root) for root in self.roots):
            allowed = ", ".join(str(r) for r in self.roots)
            raise InputRefused(field, f"{uri} is outside this gateway's input roots ({allowed}); "
                               "its operator can allow more with --input-root", True)  # fmt: skip
        check_include(include, where if not glob else None, self.resolve)


def check_own_input(task_input: dict[str, Any] | None, datasets: Path) -> None:
    """`aistack run`: the user may read any path of their own, but `include` never leaves the
    dataset or directory it is relative to."""
    if not task_input or not task_input.get("include"):
        return
    root: Path | None = None
    if task_input.get("dataset"):
        root = datasets / task_input["dataset"]
    elif str(task_input.get("uri", "")).startswith("file://"):
        path = unquote(urlparse(task_input["uri"]).path)
        root = None if split_pattern(path)[1] else Path(path)
    check_include(task_input["include"], root if root is not None and root.is_dir() else None)
