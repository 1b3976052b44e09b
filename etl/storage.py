"""Storage URIs: `file://` (or a plain path) and `s3://bucket/prefix`.

S3 goes through boto3 with its standard retry mode; the endpoint can be overridden with
the standard AWS variables (`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`), so any
S3-compatible store works. Writes are whole objects: a reader sees an object completely or
not at all, which is what the dataset manifest (parquet_io.py) builds on.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Protocol
from urllib.parse import unquote, urlparse

from aistack.etl.errors import EtlError, InputProblem, StorageError
from aistack.etl.localfs import (
    create_temp,
    open_regular,
    regular_file_size,
    sweep_stale_temp_files,
    walk_entries,
)
from aistack.etl.ranged import RangedReader


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str  # path relative to the storage root, '/'-separated
    size: int
    problem: InputProblem | None = None  # listed, but not readable as a regular file (why)
    identity: tuple[int, int] | None = None  # (device, inode) of a local file: one file, one document
    symlink: bool = False  # a local entry that is a symlink (to `identity`)


class Storage(Protocol):
    uri: str

    def child(self, key: str) -> str: ...
    def list(self, prefix: str = "") -> list[StoredObject]: ...
    def exists(self, key: str) -> bool: ...
    def read_bytes(self, key: str) -> bytes: ...
    def open_input(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]: ...
    def open_ranged(
        self, key: str, size: int | None = None
    ) -> contextlib.AbstractContextManager[BinaryIO]: ...
    def local_copy(self, key: str) -> contextlib.AbstractContextManager[Path]: ...
    def writer(self, key: str) -> contextlib.AbstractContextManager[IO[bytes]]: ...
    def write_bytes(self, key: str, data: bytes) -> None: ...
    def delete(self, key: str) -> None: ...
    def sweep_temp_files(self, prefix: str = "") -> int: ...


class LocalStorage:
    """A directory. `confine_root` (a resolved path): every file read must resolve inside it."""

    def __init__(self, root: Path, confine_root: str | None = None) -> None:
        self.root = root
        self.confine_root = confine_root
        self._resolved = Path(os.path.realpath(root))  # never raises, even on a symlink loop
        self.uri = self._resolved.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def child(self, key: str) -> str:
        # the entry as listed (a symlink stays the symlink's path); only the root is resolved
        return (self._resolved / key if key else self._resolved).as_uri()

    def _entry(self, path: Path) -> StoredObject:
        key = path.relative_to(self.root).as_posix() if path != self.root else ""
        try:
            size, identity = regular_file_size(str(path), self.confine_root)
        except InputProblem as problem:
            return StoredObject(key, 0, problem)
        return StoredObject(key, size, identity=identity, symlink=path.is_symlink())

    def list(self, prefix: str = "") -> list[StoredObject]:
        """Every entry under `prefix`: regular files with their size, anything else with its problem."""
        base = self._path(prefix)
        if not base.is_dir():
            return [self._entry(base)] if os.path.lexists(base) else []
        return [
            StoredObject(p.relative_to(self.root).as_posix(), 0, problem) if problem else self._entry(p)
            for p, problem in walk_entries(base)
        ]

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def read_bytes(self, key: str) -> bytes:
        try:
            with open_regular(str(self._path(key)), self.confine_root) as fh:
                return fh.read()
        except (OSError, InputProblem) as exc:
            message = getattr(exc, "strerror", None) or str(exc)
            raise StorageError(f"cannot read {self.child(key)}: {message}") from exc

    @contextlib.contextmanager
    def open_input(self, key: str) -> Iterator[BinaryIO]:
        """A regular file opened for reading; InputProblem if it is anything else or unreadable."""
        with open_regular(str(self._path(key)), self.confine_root) as fh:
            yield fh

    def open_ranged(self, key: str, size: int | None = None) -> contextlib.AbstractContextManager[BinaryIO]:
        """A local file is already seekable: the file itself, opened by `open_input`."""
        return self.open_input(key)

    @contextlib.contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        yield self._path(key)

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[IO[bytes]]:
        """Write to a temporary file beside the target and rename it into place on success."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = create_temp(path)
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def write_bytes(self, key: str, data: bytes) -> None:
        with self.writer(key) as fh:
            fh.write(data)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def sweep_temp_files(self, prefix: str = "") -> int:
        """Remove temporary files that killed writers left under `prefix`; returns how many."""
        base = self._path(prefix)
        return len(sweep_stale_temp_files(base)) if base.is_dir() else 0


@functools.cache
def s3_client():  # type: ignore[no-untyped-def]
    """One boto3 S3 client per process (clients are thread-safe); standard retries."""
    import boto3
    from botocore.config import Config

    attempts = int(os.environ.get("AWS_MAX_ATTEMPTS", "5"))
    return boto3.client("s3", config=Config(retries={"mode": "standard", "max_attempts": attempts}))


class S3Storage:
    def __init__(self, bucket: str, prefix: str) -> None:
        if not bucket:
            raise EtlError("s3 URI has no bucket: expected s3://BUCKET/PREFIX")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}".strip("/") if self.prefix else key

    def child(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _fail(self, action: str, key: str, exc: Exception) -> StorageError:
        return StorageError(f"cannot {action} {self.child(key)}: {exc}")

    def list(self, prefix: str = "") -> list[StoredObject]:
        full = self._key(prefix)
        found: list[StoredObject] = []
        try:
            pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
            for page in pages:
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(self.prefix) :].lstrip("/") if self.prefix else obj["Key"]
                    # a prefix matches whole path segments only, as a directory would
                    if full and obj["Key"] != full and not obj["Key"].startswith(full.rstrip("/") + "/"):
                        continue
                    found.append(StoredObject(rel, int(obj["Size"])))
        except Exception as exc:
            raise self._fail("list", prefix, exc) from exc
        return sorted(found, key=lambda o: o.key)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            s3_client().head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._fail("stat", key, exc) from exc
        except Exception as exc:
            raise self._fail("stat", key, exc) from exc

    def read_bytes(self, key: str) -> bytes:
        try:
            return s3_client().get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except Exception as exc:
            raise self._fail("read", key, exc) from exc

    @contextlib.contextmanager
    def open_input(self, key: str) -> Iterator[BinaryIO]:
        """The object, downloaded (with boto3's retries) to a local file; unreadable after them."""
        with contextlib.ExitStack() as stack:
            try:  # only the download is an input problem; what the reader raises stays its own
                path = stack.enter_context(self.local_copy(key))
            except StorageError as exc:
                raise InputProblem("unreadable", str(exc)) from exc
            with path.open("rb") as fh:
                yield fh

    @contextlib.contextmanager
    def open_ranged(self, key: str, size: int | None = None) -> Iterator[BinaryIO]:
        """The object as a seekable file that GETs only the byte ranges read (ranged.py).

        `size` is the object's size from a listing (else it is asked for with one HEAD); an
        object that is not that size when first read, or that changes while it is read, is a
        StorageError naming it.
        """
        reader = RangedReader(s3_client(), self.bucket, self._key(key), self.child(key), size)
        try:
            yield reader  # type: ignore[misc]
        finally:
            reader.close()

    @contextlib.contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="aistack-s3-") as tmp:
            path = Path(tmp) / Path(key).name
            try:
                s3_client().download_file(self.bucket, self._key(key), str(path))
            except Exception as exc:
                raise self._fail("download", key, exc) from exc
            yield path

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[IO[bytes]]:
        """Spool to a local file, then upload it (multipart above 8 MB) as one object."""
        with tempfile.TemporaryDirectory(prefix="aistack-s3-") as tmp:
            path = Path(tmp) / "part"
            with path.open("wb") as fh:
                yield fh
            try:
                s3_client().upload_file(str(path), self.bucket, self._key(key))
            except Exception as exc:
                raise self._fail("upload", key, exc) from exc

    def write_bytes(self, key: str, data: bytes) -> None:
        try:
            s3_client().put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as exc:
            raise self._fail("write", key, exc) from exc

    def delete(self, key: str) -> None:
        try:
            s3_client().delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise self._fail("delete", key, exc) from exc

    def sweep_temp_files(self, prefix: str = "") -> int:
        """Nothing to sweep: uploads are single objects or multipart uploads S3 completes atomically."""
        return 0


def open_storage(uri: str, confine_root: str | None = None) -> Storage:
    """Storage for `file://PATH`, a plain local path, or `s3://BUCKET/PREFIX`. A local one
    reads only files that resolve inside `confine_root` (see LocalStorage); S3 has no links."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return S3Storage(parsed.netloc, parsed.path)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise EtlError(f"file URI {uri!r} names a host; use file:///absolute/path")
        return LocalStorage(Path(unquote(parsed.path)), confine_root)
    if parsed.scheme in ("", "local") or (len(parsed.scheme) == 1 and os.name == "nt"):
        return LocalStorage(Path(uri), confine_root)
    raise EtlError(f"unsupported storage URI {uri!r}: use file://PATH, a local path, or s3://BUCKET/PREFIX")


def split_pattern(uri: str) -> tuple[str, str]:
    """Split a source like `datasets/*.md` or `s3://b/p/**/*.html` into (root URI, glob)."""
    parts = uri.split("/")
    for i, part in enumerate(parts):
        if any(ch in part for ch in "*?["):
            return "/".join(parts[:i]) or ".", "/".join(parts[i:])
    return uri, ""


def matches(key: str, pattern: str) -> bool:
    """Shell-style glob on '/'-separated keys: `*` stays within a segment, `**` spans any number."""
    if not pattern:
        return True

    def match(parts: list[str], pats: list[str]) -> bool:
        if not pats:
            return not parts
        if pats[0] == "**":
            return any(match(parts[i:], pats[1:]) for i in range(len(parts) + 1))
        return bool(parts) and fnmatch.fnmatchcase(parts[0], pats[0]) and match(parts[1:], pats[1:])

    return match(key.split("/"), pattern.split("/"))
