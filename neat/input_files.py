"""Opening input files safely: regular files only, bounded reads, one clear line for every refusal.

A FIFO would block forever, `/dev/zero` never ends, a directory or a symlink loop is not "not found",
and a gzip bomb expands to gigabytes: each is refused here with a `DataError` naming the file.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import stat
import zlib
from pathlib import Path

from neat.errors import DataError

# a gzip file whose text grows beyond this many times its compressed size (and beyond BOMB_FLOOR bytes) is
# refused as a decompression bomb: text compresses ~3-10x, a bomb of zeros ~1000x
BOMB_RATIO = 200
BOMB_FLOOR = 64 << 20
DEFAULT_MAX_BYTES = 8 << 30  # decompressed bytes read from one data file, at most


def check_regular_file(path: str | os.PathLike, what: str = "data file") -> os.stat_result:
    """The stat of `path` if it is a regular file we may read; else a DataError that says what it is."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise DataError(f"{path}: {what} is a broken symbolic link") from None
        raise DataError(f"{path}: {what} not found") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataError(f"{path}: {what} is a symbolic link loop (too many levels of symbolic links)") from None
        raise DataError(f"{path}: cannot access the {what} ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{path}: is a directory, expected a {what}")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise DataError(f"{path}: {what} is {kind}, not a regular file; refusing to read it")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: permission denied: cannot read the {what}")
    return st


class _Capped(io.RawIOBase):
    """A binary stream that refuses to yield more than `limit` bytes (a gzip bomb stops here)."""

    def __init__(self, inner, path: Path, limit: int, reason: str):
        self.inner, self.path, self.limit, self.reason, self.count = inner, path, limit, reason, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.inner.read(len(buffer))
        self.count += len(data)
        if self.count > self.limit:
            raise DataError(f"{self.path}: {self.reason}")
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.inner.close()
        super().close()


def open_text(path: str | os.PathLike, what: str = "data file", max_bytes: int = DEFAULT_MAX_BYTES) -> io.TextIOBase:
    """A UTF-8 text stream over a regular file, gzip-decompressed when it starts with the gzip magic,
    that never yields more than `max_bytes` (nor, for gzip, more than BOMB_RATIO x the file's size)."""
    path = Path(path)
    st = check_regular_file(path, what)
    try:
        raw = open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    if raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        bomb = max(BOMB_FLOOR, BOMB_RATIO * st.st_size)
        limit, reason = min(max_bytes, bomb), (
            f"gzip expands beyond {min(max_bytes, bomb) >> 20} MB ({BOMB_RATIO}x its size or the size limit): "
            "refusing a decompression bomb" if bomb <= max_bytes else
            f"decompressed text exceeds the size limit of {max_bytes >> 20} MB")
        inner = gzip.GzipFile(fileobj=raw, mode="rb")
    else:
        raw.seek(0)
        limit, reason, inner = max_bytes, f"file exceeds the size limit of {max_bytes >> 20} MB", raw
    return io.TextIOWrapper(io.BufferedReader(_Capped(inner, path, limit, reason), 1 << 16), encoding="utf-8-sig")


GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)
