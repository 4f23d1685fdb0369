"""What the extra prompt mixes (`neat.benign`, `neat.harmful`) share: their rows, and the base policy's answers."""

from __future__ import annotations

from pathlib import Path

from neat.data import RowError, iter_json_rows
from neat.encoding import fit_turns
from neat.errors import DataError
from neat.generation import Generation, generate
from neat.input_files import check_regular_file


def read_text_rows(path: str | Path, fields: tuple[str, ...], *, what: str, param: str) -> list[dict[str, str]]:
    """The rows of a JSONL file whose `fields` are all non-empty text, stripped, in file order; a row
    repeating an earlier row's first field is dropped. A bad row stops with one line naming file and row."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: {what} file not found ({param})")
    check_regular_file(path, f"{what} file")
    expected = "{" + ", ".join(f'"{f}": "<non-empty text>"' for f in fields) + "}"
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for number, row in iter_json_rows(path):
        if isinstance(row, RowError):
            raise DataError(f"{path}: row {number}: {row}")
        values = [row.get(f) if isinstance(row, dict) else None for f in fields]
        if not all(isinstance(v, str) and v.strip() for v in values):
            raise DataError(f"{path}: row {number}: expected {expected}")
        clean = {f: v.strip() for f, v in zip(fields, values)}
        if clean[fields[0]] not in seen:
            seen.add(clean[fields[0]])
            rows.append(clean)
    return rows


def greedy_answers(model, tokenizer, prompts: list[str], *, max_new_tokens: int, max_prompt_tokens: int,
                   batch_size: int, seed: int) -> tuple[list[list[dict]], list[Generation]]:
    """Each prompt as a one-turn dialogue, and the policy's greedy, unsteered answer to it."""
    messages = [[{"role": "user", "content": p}] for p in prompts]
    texts = [fit_turns(tokenizer, m, max_prompt_tokens)[0] for m in messages]
    outputs = generate(model, tokenizer, texts, max_new_tokens=max_new_tokens, temperature=0.0,
                       batch_size=batch_size, seed=seed) if texts else []
    return messages, [gens[0] for gens in outputs]
