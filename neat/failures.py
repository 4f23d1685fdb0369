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


# ---------------------------------------------------------------- the outcome, for whoever started `neat`

OUTCOME_ENV = "NEAT_OUTCOME_FILE"  # set by an orchestrator (the Prefect flows) that runs `neat` through DVC


def write_outcome(command: str, exit_code: int, error: BaseException | None = None, line: str = "") -> None:
    """Record how `neat <command>` ended in the file $NEAT_OUTCOME_FILE names (if set): its exit code and
    the exception's type, so an orchestrator that runs it under `dvc repro` classifies a failure by them,
    not by reading DVC's output. A failure recorded by one process of a multi-process launch is not
    overwritten by another's success."""
    import json
    import os
    from pathlib import Path

    target = os.environ.get(OUTCOME_ENV)
    if not target:
        return
    path = Path(target)
    if exit_code == 0 and path.exists():
        try:
            if json.loads(path.read_text(encoding="utf-8")).get("exit_code") != 0:
                return
        except (OSError, ValueError):
            pass
    record = {"command": command, "exit_code": exit_code, "error": type(error).__name__ if error else None,
              "message": line}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record), encoding="utf-8")
    os.replace(tmp, path)


def read_outcome(path) -> dict | None:
    """The record `write_outcome` left at `path`, or None when no `neat` command ran (or it was killed)."""
    import json
    from pathlib import Path

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_bad_input(exit_code: int | None = None, error: BaseException | None = None) -> bool:
    """Whether a failure is the input's fault (retrying cannot help): exit 2, or an exception `describe`
    classifies so."""
    if error is not None:
        exit_code = describe(error, "")[0]
    return exit_code == BAD_INPUT_EXIT
