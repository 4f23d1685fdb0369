"""Preference data: read HH-RLHF / TRL / hub rows into one format, check them, split them.

The one format (`PreferencePair`, stored as JSON lines by `prepare`):
    {"prompt_id": str, "prompt": [{"role": "user"|"assistant"|"system", "content": str}, ...],
     "chosen": str, "rejected": str}
`prompt` is the dialogue up to the last assistant turn; `chosen`/`rejected` are final responses.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from neat.errors import DataError
from neat.input_files import DEFAULT_MAX_BYTES, GZIP_ERRORS, check_regular_file, open_text
from neat.io import atomic_path

SKIP_REASONS = (
    "invalid_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "identical",
    "no_assistant_turn",
    "roles_out_of_order",
    "empty_response",
    "prompt_mismatch",
    "duplicate",
    "invalid_unicode",
)
# Rows skipped for their size rather than their content; counted the same way as SKIP_REASONS.
LIMIT_REASONS = ("too_long",)
DEFAULT_MAX_ROW_CHARS = 200_000  # a row with more text than this is skipped as too_long (params: data.max_row_chars)
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


class RowError(Exception):
    """A row that cannot be used; `reason` is one of SKIP_REASONS or LIMIT_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in SKIP_REASONS or reason in LIMIT_REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class PreferencePair:
    prompt_id: str
    prompt: list[dict]
    chosen: str
    rejected: str | None  # None: a benign prompt with a helpful answer only (neat.benign)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class ReadResult:
    source: str
    pairs: list[PreferencePair]
    rows_read: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    examples: dict = field(default_factory=dict)  # reason -> first row number (1-based) that had it

    @property
    def rows_kept(self) -> int:
        return len(self.pairs)


# ---------------------------------------------------------------- dialogue parsing


def prompt_id_of(messages: list[dict]) -> str:
    canon = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:16]


def parse_hh_dialogue(text: str) -> list[dict]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' → [{"role": "user", ...}, {"role": "assistant", ...}]."""
    if not isinstance(text, str):
        raise RowError("wrong_type", f"dialogue must be a string, got {type(text).__name__}")
    if not text.startswith("\n\n"):
        text = "\n\n" + text.lstrip("\n")
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise RowError("roles_out_of_order", "text before the first Human/Assistant turn")
    messages = [
        {"role": _HH_ROLE[role], "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2])
    ]
    return messages


def split_dialogue(messages: list[dict]) -> tuple[list[dict], str]:
    """Split a full dialogue into (prompt messages, final assistant response), checking its shape."""
    if not messages or messages[-1]["role"] != "assistant":
        if any(m["role"] == "assistant" for m in messages):
            raise RowError("roles_out_of_order", "dialogue does not end with an assistant turn")
        raise RowError("no_assistant_turn")
    roles = [m["role"] for m in messages if m["role"] != "system"]
    if any(m["role"] == "system" for m in messages[1:]) or roles[0] != "user" or any(
        a == b for a, b in zip(roles, roles[1:])
    ):
        raise RowError("roles_out_of_order", "turns must alternate user/assistant, starting with user")
    response = messages[-1]["content"]
    if not response.strip():
        raise RowError("empty_response")
    return messages[:-1], response


def _check_messages(value: Any, name: str) -> list[dict]:
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        raise RowError("wrong_type", f"'{name}' must be a string or a list of {{role, content}} messages")
    bad = [m["role"] for m in value if m["role"] not in ("system", "user", "assistant")]
    if bad:
        raise RowError("roles_out_of_order", f"unknown role '{bad[0]}' in '{name}'")
    return [{"role": m["role"], "content": m["content"].strip()} for m in value]


def pair_from_hh(row: dict) -> PreferencePair:
    for key in ("chosen", "rejected"):
        if key not in row:
            raise RowError("missing_field", f"no '{key}'")
        if not isinstance(row[key], str):
            raise RowError("wrong_type", f"'{key}' must be a string")
    if row["chosen"] == row["rejected"]:
        raise RowError("identical")
    prompt_c, chosen = split_dialogue(parse_hh_dialogue(row["chosen"]))
    prompt_r, rejected = split_dialogue(parse_hh_dialogue(row["rejected"]))
    if prompt_c != prompt_r:
        raise RowError("prompt_mismatch", "chosen and rejected dialogues differ before the last assistant turn")
    if chosen == rejected:
        raise RowError("identical")
    return PreferencePair(prompt_id_of(prompt_c), prompt_c, chosen, rejected)


def _response_of(value: Any, name: str) -> tuple[list[dict], str]:
    """A TRL response: a string, or messages whose last one is the assistant's response."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError("empty_response", f"'{name}' is empty")
        return [], value.strip()
    messages = _check_messages(value, name)
    if not messages or messages[-1]["role"] != "assistant":
        raise RowError("no_assistant_turn", f"'{name}' has no final assistant message")
    if not messages[-1]["content"]:
        raise RowError("empty_response", f"'{name}' is empty")
    return messages[:-1], messages[-1]["content"]


def pair_from_trl(row: dict) -> PreferencePair:
    """TRL preference rows: explicit prompt (string or messages) or implicit prompt in the responses."""
    for key in ("chosen", "rejected"):
        if key not in row:
            raise RowError("missing_field", f"no '{key}'")
    pre_c, chosen = _response_of(row["chosen"], "chosen")
    pre_r, rejected = _response_of(row["rejected"], "rejected")
    if pre_c != pre_r:
        raise RowError("prompt_mismatch", "chosen and rejected carry different conversation prefixes")
    prompt_value = row.get("prompt")
    if prompt_value is None:
        if not pre_c:
            raise RowError("missing_field", "no 'prompt' and the responses carry no conversation")
        prompt = pre_c
    elif isinstance(prompt_value, str):
        if not prompt_value.strip():
            raise RowError("missing_field", "'prompt' is empty")
        prompt = [{"role": "user", "content": prompt_value.strip()}] + pre_c
    else:
        prompt = _check_messages(prompt_value, "prompt") + pre_c
    if not prompt or prompt[-1]["role"] != "user":
        raise RowError("roles_out_of_order", "the prompt must end with a user turn")
    split_dialogue(prompt + [{"role": "assistant", "content": chosen}])  # shape check
    if chosen == rejected:
        raise RowError("identical")
    return PreferencePair(prompt_id_of(prompt), prompt, chosen, rejected)


def detect_format(row: dict) -> str:
    """TRL rows carry a prompt or message lists; string pairs without a prompt are HH dialogues."""
    if "prompt" in row or isinstance(row.get("chosen"), list) or isinstance(row.get("rejected"), list):
        return "trl"
    return "hh"


def to_pair(row: Any, fmt: str = "auto") -> PreferencePair:
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"got {type(row).__name__}")
    if fmt == "auto":
        fmt = detect_format(row)
    return pair_from_hh(row) if fmt == "hh" else pair_from_trl(row)


# ---------------------------------------------------------------- reading files


def _row_chars(pair: "PreferencePair") -> int:
    return len(pair.chosen) + len(pair.rejected) + sum(len(m["content"]) for m in pair.prompt)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_text(pair: "PreferencePair") -> None:
    """Text must be writable as UTF-8: a JSON escape like "\\ud800" without its pair is a lone surrogate."""
    texts = [pair.chosen, pair.rejected, *(m["content"] for m in pair.prompt)]
    if any(_SURROGATE.search(t) for t in texts):
        raise RowError("invalid_unicode", "lone UTF-16 surrogate in the text")


def _parse_row(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        return RowError("invalid_json", exc.msg)
    except ValueError as exc:  # an integer of thousands of digits
        return RowError("invalid_json", str(exc)[:100])
    except RecursionError:
        return RowError("invalid_json", "nested too deeply")


def _lines(fh, max_line_chars: int | None) -> Iterator[tuple[int, str | None]]:
    """(line number, line) from a text stream, holding at most `max_line_chars` of one line in memory;
    a longer line comes back as (number, None) once consumed."""
    chunk = (max_line_chars + 1) if max_line_chars is not None else -1
    number = 0
    while True:
        line = fh.readline(chunk)
        if not line:
            return
        number += 1
        if line.endswith("\n") or max_line_chars is None or len(line) <= max_line_chars:
            yield number, line
            continue
        while line and not line.endswith("\n"):  # skip the rest of the over-long line, chunk by chunk
            line = fh.readline(1 << 20)
        yield number, None


def iter_json_rows(path: Path, max_line_chars: int | None = None,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[tuple[int, Any]]:
    """Yield (1-based row number, parsed row or the RowError) from JSON lines or a JSON array file.

    The file is streamed (gzip decompressed as it is read, capped in size); a JSON line longer than
    `max_line_chars` is neither held whole nor parsed: it comes back as a `too_long` RowError.
    """
    number = 0
    try:
        with open_text(path, max_bytes=max_bytes) as fh:
            head = fh.read(1 << 16)
            if head.lstrip().startswith("["):
                text = head + fh.read()
                try:
                    rows = json.loads(text)
                except json.JSONDecodeError as exc:
                    # "[1, 2]\n{...}\n": JSON lines whose first row is an array, not a JSON array file
                    if exc.msg != "Extra data":
                        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
                except RecursionError:
                    raise DataError(f"{path}: not valid JSON (nested too deeply)") from None
                except ValueError as exc:
                    raise DataError(f"{path}: not valid JSON ({str(exc)[:100]})") from None
                else:
                    yield from enumerate(rows if isinstance(rows, list) else [rows], start=1)
                    return
                stream: Any = io.StringIO(text)
            else:
                stream = _Rejoined(head, fh)
            for number, line in _lines(stream, max_line_chars):
                if line is None:
                    yield number, RowError("too_long", f"more than {max_line_chars} characters")
                elif line.strip():
                    yield number, _parse_row(line)
    except GZIP_ERRORS as exc:
        raise DataError(f"{path}: corrupt or truncated gzip file ({exc})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text (near line {number + 1})") from None


class _Rejoined:
    """`head` (already read) followed by the rest of `fh`, read line by line with readline(limit)."""

    def __init__(self, head: str, fh):
        self.head, self.fh = io.StringIO(head), fh

    def readline(self, limit: int = -1) -> str:
        line = self.head.readline(limit)
        if line.endswith("\n") or (limit >= 0 and len(line) >= limit):
            return line
        more = self.fh.readline(-1 if limit < 0 else limit - len(line))
        return line + more


def _iter_hub_rows(dataset_id: str, split: str, revision: str | None = None) -> Iterator[tuple[int, Any]]:
    try:
        import datasets

        ds = datasets.load_dataset(dataset_id, split=split, revision=revision)
    except Exception as exc:  # the hub raises many types; all mean "can't get it"
        raise DataError(
            f"hub:{dataset_id}: cannot load split '{split}'{f' at revision {revision}' if revision else ''} "
            "from the Hugging Face hub "
            f"({type(exc).__name__}); download it where the hub is reachable and pass the local file"
        ) from None
    yield from enumerate(ds, start=1)


def read_preferences(source: str | Path, fmt: str = "auto", hub_split: str = "train",
                     max_row_chars: int = DEFAULT_MAX_ROW_CHARS, hub_revision: str | None = None) -> ReadResult:
    """Read every row of `source`, keep the usable ones, count the rest by reason.

    A row with more than `max_row_chars` characters of text (prompt turns plus both responses; for
    JSON lines, the raw line, checked before parsing) is skipped as `too_long`: no model context
    holds it, and tokenizing a 50 MB row would stall every later stage.
    """
    source_s = str(source)
    if source_s.startswith("hub:"):
        rows: Iterable[tuple[int, Any]] = _iter_hub_rows(source_s[4:], hub_split, hub_revision)
    else:
        path = Path(source_s)
        check_regular_file(path)
        # JSON escapes can make a raw line longer than its text: allow a margin before parsing
        rows = iter_json_rows(path, max_line_chars=4 * max_row_chars + 1024)
    result = ReadResult(source=source_s, pairs=[])
    seen: set[tuple[str, str, str]] = set()
    for number, row in rows:
        result.rows_read += 1
        try:
            if isinstance(row, RowError):
                raise row
            pair = to_pair(row, fmt)
            _check_text(pair)
            if _row_chars(pair) > max_row_chars:
                raise RowError("too_long", f"{_row_chars(pair)} characters")
            key = (pair.prompt_id, pair.chosen, pair.rejected)
            if key in seen:
                raise RowError("duplicate")
            seen.add(key)
            result.pairs.append(pair)
        except RowError as err:
            result.skipped[err.reason] += 1
            result.examples.setdefault(err.reason, number)
    if result.rows_read == 0:
        raise DataError(f"{source_s}: no rows (empty file)")
    if not result.pairs:
        if result.skipped.get("invalid_json") == result.rows_read:
            raise DataError(f"{source_s}: not JSON lines (no row parses as JSON)")
        top = ", ".join(f"{k}={v}" for k, v in result.skipped.most_common(3))
        raise DataError(f"{source_s}: no usable row among {result.rows_read} ({top})")
    return result


# ---------------------------------------------------------------- splitting and storage


def split_of(prompt_id: str, eval_fraction: float, judge_fraction: float, salt: str) -> str:
    """'train', 'eval' or 'judge', by a hash of the prompt: stable across runs and machines."""
    digest = hashlib.sha256(f"{salt}\x00{prompt_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < eval_fraction:
        return "eval"
    if u < eval_fraction + judge_fraction:
        return "judge"
    return "train"


def split_pairs(pairs: list[PreferencePair], eval_fraction: float, judge_fraction: float = 0.0,
                salt: str = "neat") -> dict[str, list[PreferencePair]]:
    out: dict[str, list[PreferencePair]] = {"train": [], "eval": [], "judge": []}
    for pair in pairs:
        out[split_of(pair.prompt_id, eval_fraction, judge_fraction, salt)].append(pair)
    return out


def write_pairs(path: str | Path, pairs: Iterable[PreferencePair]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for pair in pairs:
            fh.write(json.dumps(pair.to_json(), ensure_ascii=False) + "\n")


def read_pairs(path: str | Path) -> list[PreferencePair]:
    """Read a file written by `write_pairs` (the one format)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise DataError(f"{path}: prepared data not found (run `neat prepare` first)")
    check_regular_file(path, "prepared data file")
    pairs = []
    for number, row in iter_json_rows(path):
        try:
            if isinstance(row, RowError):
                raise row
            pairs.append(PreferencePair(**row))
        except (TypeError, RowError) as exc:
            raise DataError(f"{path}: row {number}: not a prepared preference pair ({exc})") from None
    return pairs


# ---------------------------------------------------------------- inspection


def percentiles(values: list[int], qs=(50, 90, 99)) -> dict[str, float]:
    """p50/p90/p99 (numpy's linear interpolation, rounded to 0.1) and the max of `values`."""
    import numpy as np

    if not len(values):
        return {f"p{q}": 0.0 for q in qs} | {"max": 0}
    points = np.percentile(np.asarray(values, dtype=float), list(qs))
    return {f"p{q}": round(float(v), 1) for q, v in zip(qs, points)} | {"max": int(max(values))}


def inspect_preferences(result: ReadResult) -> dict:
    stats: dict[str, Any] = {
        "source": result.source,
        "rows_read": result.rows_read,
        "rows_kept": result.rows_kept,
        "kept_fraction": round(result.rows_kept / result.rows_read, 4),
        "skipped": dict(sorted(result.skipped.items())),
        "unique_prompts": len({p.prompt_id for p in result.pairs}),
    }
    return stats


def format_inspection(stats: dict) -> str:
    lines = [
        f"source:      {stats['source']}",
        f"rows read:   {stats['rows_read']}",
        f"rows kept:   {stats['rows_kept']} ({100 * stats['kept_fraction']:.1f} %), "
        f"{stats['unique_prompts']} unique prompts",
        "skipped:     " + (", ".join(f"{k}={v}" for k, v in stats["skipped"].items()) or "none"),
    ]
    for key in ("prompt_tokens", "chosen_tokens", "rejected_tokens"):
        if key in stats:
            pct = stats[key]
            lines.append(f"{key + ':':<17}" + "  ".join(f"{k} {v:g}" for k, v in pct.items()))
    return "\n".join(lines)
