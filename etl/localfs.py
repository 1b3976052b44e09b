"""Local files as hostile input: only regular files are read, symlinks are checked, and the
temporary files a killed writer leaves behind are swept.

Opening uses O_NONBLOCK so that a FIFO (or a device) never blocks, then checks with fstat
that what was opened is a regular file; under a confinement root the resolved path is
checked and opened with O_NOFOLLOW, so a symlink swapped in meanwhile is not followed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from aistack.etl.errors import InputProblem

_KINDS = {
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFDIR: "directory",
}


def inside(path: str, root: str) -> bool:
    """Whether the (already resolved) `path` is `root` or lies under it."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _problem(path: str, exc: OSError) -> InputProblem:
    if exc.errno == errno.ELOOP:
        return InputProblem("symlink_loop", "symlink loop: too many levels of symbolic links")
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return InputProblem("dangling_symlink", f"symlink to {os.readlink(path)!r}, which does not exist")
    if exc.errno == errno.ENOENT:
        return InputProblem("unreadable", "the file disappeared while the run read its directory")
    return InputProblem("unreadable", f"cannot read: {exc.strerror or exc}")


def check_confined(path: str, root: str | None) -> str:
    """The path to open: `path` itself, or its resolved form if it lies inside `root`."""
    if root is None:
        return path
    real = os.path.realpath(path)
    if not inside(real, root):
        raise InputProblem("outside_input_root", f"resolves to a file outside the input root {root}")
    return real


def _require_regular(st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "special file")
        raise InputProblem("not_a_regular_file", f"a {kind}, not a regular file")


def regular_file_size(path: str, confine_root: str | None = None) -> tuple[int, tuple[int, int]]:
    """(size, (device, inode)) of the regular file `path` leads to; InputProblem otherwise."""
    target = check_confined(path, confine_root)
    try:
        st = os.stat(target)
    except OSError as exc:
        raise _problem(path, exc) from exc
    _require_regular(st)
    return st.st_size, (st.st_dev, st.st_ino)


def open_regular(path: str, confine_root: str | None = None) -> BinaryIO:
    """Open a regular file for reading without ever blocking on a FIFO or following a late symlink."""
    target = check_confined(path, confine_root)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if confine_root is not None:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(target, flags)
    except OSError as exc:
        raise _problem(path, exc) from exc
    try:
        _require_regular(os.fstat(fd))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# Temporary files: `.<name>.<host>.<pid>.<random>.aistack-tmp` beside the target.
_TEMP_SUFFIX = ".aistack-tmp"
_HOST = hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()
_TEMP = re.compile(
    r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{8})\.(?P<pid>\d+)\.[0-9a-f]{8}" + re.escape(_TEMP_SUFFIX) + "$"
)
# what mkstemp(prefix=".part-...") left before this naming: `.part-00000-RUN.parquet.XXXXXXXX`
_LEGACY_TEMP = re.compile(r"^\.(part-\d{5}-[0-9T]+-[0-9a-f]{8}\.parquet|_manifest\.json)\.[a-z0-9_]{8}$")
STALE_SECONDS = 24 * 3600  # a temp file of another host (or an unknown writer) this old is abandoned
LEGACY_STALE_SECONDS = 3600


def create_temp(path: Path) -> tuple[int, Path]:
    """A new temporary file beside `path`, created with mode 0666 minus the umask (as any file)."""
    while True:
        tmp = path.parent / f".{path.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}{_TEMP_SUFFIX}"
        try:
            return os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666
            ), tmp
        except FileExistsError:
            continue


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _stale(name: str, mtime: float, now: float) -> bool:
    m = _TEMP.match(name)
    if m:
        if m["host"] == _HOST and int(m["pid"]) != os.getpid():
            return not _pid_alive(int(m["pid"])) or now - mtime > STALE_SECONDS
        return m["host"] != _HOST and now - mtime > STALE_SECONDS
    return bool(_LEGACY_TEMP.match(name)) and now - mtime > LEGACY_STALE_SECONDS


def sweep_stale_temp_files(root: Path) -> list[Path]:
    """Delete aistack's temporary files under `root` whose writer is gone; returns what was removed.

    Only names aistack creates are touched, and only when their process is dead (same host)
    or they are older than a day (another host, e.g. a shared volume).
    """
    removed: list[Path] = []
    now = time.time()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if not name.startswith("."):
                continue
            path = Path(dirpath) / name
            with contextlib.suppress(FileNotFoundError):
                st = path.lstat()
                if stat.S_ISREG(st.st_mode) and _stale(name, st.st_mtime, now):
                    path.unlink()
                    removed.append(path)
    return removed


def walk_entries(base: Path) -> Iterator[tuple[Path, InputProblem | None]]:
    """Every non-hidden entry under `base` that could be an input file, in a stable order.

    Directories are descended; a symlink to a directory is not followed (it is reported),
    and a directory that cannot be listed is reported instead of aborting the walk.
    """
    errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(base, onerror=errors.append):
        yield from (_unlisted(exc, dirpath) for exc in errors)
        errors.clear()
        entries: list[tuple[str, InputProblem | None]] = [
            (n, None) for n in filenames if not n.startswith(".")
        ]
        keep = []
        for d in dirnames:
            if d.startswith("."):
                continue
            if os.path.islink(os.path.join(dirpath, d)):
                entries.append(
                    (d, InputProblem("not_a_regular_file", "a symlink to a directory (not followed)"))
                )
            else:
                keep.append(d)
        dirnames[:] = sorted(keep)
        for name, problem in sorted(entries, key=lambda e: e[0]):
            yield Path(dirpath) / name, problem
    yield from (_unlisted(exc, base) for exc in errors)  # the base itself could not be listed


def _unlisted(exc: OSError, where: str | Path) -> tuple[Path, InputProblem]:
    return Path(exc.filename or where), InputProblem("unreadable", f"cannot list directory: {exc.strerror}")
