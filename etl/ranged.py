"""A seekable, read-only file over one S3 object that fetches byte ranges on demand.

pyarrow's ParquetFile reads a footer and then only the column chunks it needs, and the JSONL
range reader reads one span of a file: over this file each is a few GETs with a `Range`
header instead of a download of the object. Small reads are served from a read-ahead buffer
that doubles while reads move forward (a scan of lines, or of one column's chunks, makes few
requests) and falls back to its minimum after a jump elsewhere (a reader that jumps between
column chunks over-reads little); a read at least as large as the buffer is fetched exactly. Every GET after the first carries
`If-Match` with the object's ETag: an object replaced while it is read is an error, never a
mix of two versions. boto3's standard retries cover each request; a body cut off mid-stream
is fetched again, up to AWS_MAX_ATTEMPTS times.
"""

from __future__ import annotations

import io
import os
from typing import Any

from aistack.etl.errors import StorageError

MIN_READ_AHEAD = 64 * 1024
# A sequential scan grows to GETs of 8 MiB, the range size AWS suggests for byte-range fetches:
# each GET costs a round trip, so a scan of 1 MiB GETs took 2x longer than a download on a
# local S3 server (benchmarks/partitions.py). `limit_read_ahead` keeps a range reader from
# fetching far past the end of its range.
MAX_READ_AHEAD = 8 * 1024 * 1024


def _attempts() -> int:
    return max(1, int(os.environ.get("AWS_MAX_ATTEMPTS", "5")))


class RangedReader(io.RawIOBase):
    """`read`, `readline`, `seek` and `tell` over s3://bucket/key, one ranged GET at a time."""

    mode = "rb"

    def __init__(self, client: Any, bucket: str, key: str, uri: str, size: int | None = None) -> None:
        super().__init__()
        self._client, self._bucket, self._key, self.name = client, bucket, key, uri
        self._etag: str | None = None
        if size is None:  # no listing to take it from: ask once
            try:
                head = client.head_object(Bucket=bucket, Key=key)
            except Exception as exc:
                raise StorageError(f"cannot stat {uri}: {exc}") from exc
            size, self._etag = int(head["ContentLength"]), head["ETag"]
        self._size = size
        self._pos = 0
        self._buf = b""
        self._buf_start = 0
        self._ahead = MIN_READ_AHEAD
        self._next_fetch = -(1 << 62)  # where the previous fetch ended (none yet)
        self._ahead_limit = size  # read-ahead stops here (explicit reads past it are still served)
        self._crossed = False  # whether a read went past the limit
        self.requests = 0

    def limit_read_ahead(self, end: int | None) -> None:
        """Read ahead no further than `end` (None: the end of the object): a reader of a byte
        range says where its range ends; what it reads past that comes in small fetches."""
        self._ahead_limit = self._size if end is None else end
        self._crossed = False

    def prefetch(self, start: int, end: int) -> None:
        """Fetch [start, end) in one GET into the buffer: reads inside it make no request (a
        reader that knows the ranges it is about to read, e.g. a window of column chunks)."""
        end = min(end, self._size)
        if start >= end or (self._buf_start <= start and end <= self._buf_start + len(self._buf)):
            return
        self._buf_start, self._buf = start, self._fetch(start, end - start)

    # -- the io protocol ------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence!r}")
        if pos < 0:
            raise OSError(f"negative seek position {pos} in {self.name}")
        self._pos = pos
        return pos

    def read(self, size: int | None = -1) -> bytes:
        end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        pieces: list[bytes] = []
        while self._pos < end:
            piece = self._buffered(end - self._pos)
            if not piece:
                break
            pieces.append(piece)
            self._pos += len(piece)
        return b"".join(pieces)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        limit = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        pieces: list[bytes] = []
        while self._pos < limit:
            self._buffered(0)  # make sure the buffer holds the byte at the position
            off = self._pos - self._buf_start
            stop = min(len(self._buf), off + limit - self._pos)
            newline = self._buf.find(b"\n", off, stop)
            piece = self._buf[off : (newline + 1 if newline >= 0 else stop)]
            if not piece:
                break
            pieces.append(piece)
            self._pos += len(piece)
            if newline >= 0:
                break
        return b"".join(pieces)

    # -- fetching -------------------------------------------------------------------------
    def _buffered(self, want: int) -> bytes:
        """Up to `want` bytes at the position (from the buffer, else fetched); `want=0` fills only."""
        off = self._pos - self._buf_start
        if not 0 <= off < len(self._buf):
            if want >= self._ahead:  # a large read: fetched exactly, the buffer is left alone
                return self._fetch(self._pos, want)
            if self._pos < self._ahead_limit:
                ahead = min(self._ahead, max(self._ahead_limit - self._pos, MIN_READ_AHEAD))
            else:  # past the limit (a line that crosses a range's end): grow again from the minimum
                if not self._crossed:
                    self._crossed, self._ahead = True, MIN_READ_AHEAD
                ahead = self._ahead
            self._buf_start = self._pos
            self._buf = self._fetch(self._pos, min(max(ahead, want), self._size - self._pos))
            off = 0
        return self._buf[off : off + want]

    def _fetch(self, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        # a fetch from where the last one ended, or a little past it (a column chunk after the
        # one a reader skipped), is a scan: the read-ahead grows; a jump resets it
        sequential = 0 <= start - self._next_fetch <= self._ahead
        self._ahead = min(self._ahead * 2, MAX_READ_AHEAD) if sequential else MIN_READ_AHEAD
        data = self._get(start, length)
        self._next_fetch = start + len(data)
        return data

    def _get(self, start: int, length: int) -> bytes:
        from botocore.exceptions import ClientError

        last = start + length - 1
        request: dict[str, Any] = {"Bucket": self._bucket, "Key": self._key, "Range": f"bytes={start}-{last}"}
        if self._etag is not None:
            request["IfMatch"] = self._etag
        problem: Exception | None = None
        for _ in range(_attempts()):
            self.requests += 1
            try:  # boto3 has retried the request itself by the time it raises
                response = self._client.get_object(**request)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("PreconditionFailed", "412"):
                    raise StorageError(
                        f"{self.name} changed while it was read (it is no longer ETag {self._etag})"
                    ) from exc
                raise StorageError(f"cannot read {self.name} bytes {start}-{last}: {exc}") from exc
            except Exception as exc:
                raise StorageError(f"cannot read {self.name} bytes {start}-{last}: {exc}") from exc
            try:
                data = response["Body"].read()
            except Exception as exc:  # a body cut off mid-stream: not retried by boto3, so here
                problem = exc
                continue
            if self._etag is None:
                self._etag = response["ETag"]
                total = int(str(response.get("ContentRange", "")).rpartition("/")[2] or -1)
                if total != self._size:
                    raise StorageError(
                        f"{self.name} changed since it was listed: {total} bytes, listed as {self._size}"
                    )
            if len(data) == length:
                return data
            problem = OSError(f"{len(data)} of {length} bytes")
        raise StorageError(f"cannot read {self.name} bytes {start}-{last}: {problem}") from problem
