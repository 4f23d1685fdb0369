"""What the CLI says when a command fails: one line and an exit code for any exception.

* exit 2 — bad input: a `NeatError`, or an exception of a kind that input causes (an unreadable or
  unwritable path, text that is not valid Unicode, a value that does not parse, data nested too deeply
  or too large to hold);
* exit 3 — an internal error (a bug): the line says so and points at `--debug` for the traceback.
"""

from __future__ import annotations

import errno

from neat.errors import NeatError, cap

BAD_INPUT_EXIT = 2
INTERNAL_ERROR_EXIT = 3

_OS_WORDS = {
    errno.ENOSPC: "no space left on the device (disk full)",
    errno.EFBIG: "file too large for the device or the file-size limit (disk full)",
    errno.EDQUOT: "disk quota exceeded (disk full)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "is a directory, expected a file",
    errno.ENOTDIR: "a part of the path is a file, expected a directory",
    errno.ELOOP: "symbolic link loop (too many levels of symbolic links)",
    errno.ENOENT: "not found",
    errno.EROFS: "read-only file system",
    errno.ENAMETOOLONG: "file name too long",
}


def _os_line(exc: OSError, where: str) -> str:
    words = _OS_WORDS.get(exc.errno or -1) or (exc.strerror or type(exc).__name__).lower()
    name = exc.filename if exc.filename is not None else where
    return f"{name}: {words}"


def describe(exc: BaseException, where: str) -> tuple[int, str]:
    """(exit code, one line) for `exc`, raised while running the command described by `where`."""
    if isinstance(exc, NeatError):
        return BAD_INPUT_EXIT, cap(str(exc))
    if isinstance(exc, OSError):
        return BAD_INPUT_EXIT, cap(_os_line(exc, where))
    if isinstance(exc, UnicodeError):
        detail = getattr(exc, "reason", "") or str(exc)
        if "surrogate" in detail or "surrogate" in str(exc):
            detail = "text contains a lone UTF-16 surrogate, which is not valid Unicode"
        return BAD_INPUT_EXIT, cap(f"{where}: invalid text ({type(exc).__name__}: {detail})")
    if isinstance(exc, RecursionError):
        return BAD_INPUT_EXIT, cap(f"{where}: input nested too deeply to process (RecursionError)")
    if isinstance(exc, MemoryError):
        return BAD_INPUT_EXIT, cap(f"{where}: input too large to hold in memory (MemoryError)")
    if isinstance(exc, ValueError):
        return BAD_INPUT_EXIT, cap(f"{where}: invalid value ({type(exc).__name__}: {exc})", 300)
    try:
        import yaml

        if isinstance(exc, yaml.YAMLError):
            return BAD_INPUT_EXIT, cap(f"{where}: not valid YAML ({exc})", 300)
    except ImportError:  # pragma: no cover - yaml is a dependency
        pass
    return INTERNAL_ERROR_EXIT, cap(f"{where}: internal error ({type(exc).__name__}: {exc}); "
                                    "rerun with --debug for the traceback and report it", 400)
