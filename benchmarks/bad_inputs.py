"""The bad-input battery: malformed data files, params files and model references, through the real CLI.

Every case runs `neat <stage> ...` in-process (`neat.cli.main`) in a throw-away project whose
outputs already hold a previous run's files, then checks how it ended:

* an error case must exit 2 with exactly one `neat: error: ...` line that names the input and says
  what is wrong (`says`), print no traceback, leave every pre-existing output byte-identical and
  leave no temporary or partial file (`.*.tmp`, `.*.old-*`) anywhere under the outputs;
* a handled case (a bad row among good ones, a prompt longer than the model's context) must exit 0,
  with the bad input skipped or dropped and counted (`says` is then looked for in the summary).

    python benchmarks/bad_inputs.py            # run the battery, print the table
    python benchmarks/bad_inputs.py --json F   # also write the results as JSON

tests/test_bad_inputs.py runs the same `CASES` (one test per case id).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import re
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("NEAT_CACHE_DIR", str(ROOT / ".cache" / "neat"))

DEMO = ROOT / "data" / "demo" / "hh_demo.jsonl"
TINY = {  # tests/project.py's TINY, with a tiny reward model too (the battery never trains one)
    "policy.model": "builtin:tiny-random", "policy.device": "cpu", "data.max_train_prompts": 4,
    "reward.model": "builtin:tiny-random", "reward.max_pairs": 16, "reward.epochs": 1, "reward.max_length": 64,
    "reward.device": "cpu", "expand.k_pos": 1, "expand.k_neg": 1, "expand.max_new_tokens": 6,
    "train.rounds": 1, "train.batch_size": 2, "train.max_response_tokens": 24, "train.max_prompt_tokens": 96,
    "data.max_benign_prompts": 0,
    "data.max_harmful_prompts": 0,
}
TEMP_MARKERS = (".tmp", ".old-", ".neat-commit-")


# ---------------------------------------------------------------- the throw-away project


@dataclass
class Ctx:
    """One case's directory: `params` (a valid params file), `out` (with a previous run's outputs)."""

    dir: Path
    held: list = field(default_factory=list)  # open files (a held lock) closed once the case has run

    @property
    def params(self) -> Path:
        return self.dir / "params.yaml"

    @property
    def out(self) -> Path:
        return self.dir / "out"

    def file(self, name: str, data: bytes | str) -> Path:
        path = self.dir / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        return path

    def params_text(self, text: str | bytes) -> Path:
        path = self.dir / "bad-params.yaml"
        path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
        return path

    def edited_params(self, edit: Callable[[str], str]) -> Path:
        return self.params_text(edit(self.params.read_text(encoding="utf-8")))


def make_base(dest: Path) -> Path:
    """A valid tiny project: params.yaml with absolute paths and a previous run's outputs in out/."""
    from neat.cli import main
    from neat.workspace import set_params_in_file

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "params.yaml", dest / "params.yaml")
    set_params_in_file(dest / "params.yaml", TINY | {
        "paths.data": str(DEMO), "paths.safety_prompts": str(ROOT / "data/demo/safety_prompts.csv"),
        "paths.refusal_examples": str(ROOT / "data/demo/refusal_examples.jsonl"),
        "paths.benign_prompts": str(ROOT / "data/benign/prompts.jsonl"),
        "paths.harmful_requests": str(ROOT / "data/harmful_requests/refusals.jsonl"),
        "paths.out": str(dest / "out"), "paths.checkpoints": str(dest / "checkpoints"),
        "paths.cache": os.environ["NEAT_CACHE_DIR"],
    })
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for stage in ("prepare", "expand"):
            assert main([stage, "--params", str(dest / "params.yaml")]) == 0
    # stand-ins for the later stages' outputs of a previous run: a failed run must not touch them
    for rel, text in [("score/candidates.parquet", "previous score output"),
                      ("reward_model/config.json", "{\"previous\": true}"),
                      ("metrics/reward_model.json", "{\"previous\": true}")]:
        (dest / "out" / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / "out" / rel).write_text(text)
    return dest


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.name.startswith(".") and any(m in p.name for m in TEMP_MARKERS))


# ---------------------------------------------------------------- the cases


@dataclass
class Case:
    id: str
    group: str  # data | params | model
    what: str
    setup: Callable[[Ctx], list[str]]  # returns the CLI argv (the params file is added unless given)
    says: tuple[str, ...]  # substrings (case-insensitive) of the error line, or of the summary if exit 0
    exit: int = 2
    env: dict = field(default_factory=dict)
    fsize: int | None = None  # RLIMIT_FSIZE while the case runs: every write past it fails (EFBIG), as on a full disk
    never: tuple[str, ...] = ()  # substrings (case-insensitive) the error line must not hold: a wrong cause, a secret


def _demo_rows() -> list[dict]:
    from neat.io import read_jsonl

    return read_jsonl(DEMO)


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _data(name: str, data, stage: str = "prepare") -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        payload = data(ctx) if callable(data) else data
        return [stage, "-S", f"paths.data={ctx.file(name, payload)}"]
    return setup


def _truncated_gzip(ctx: Ctx) -> bytes:
    blob = gzip.compress(DEMO.read_bytes())
    return blob[: len(blob) // 2]


def _fifty_mb_row(with_good_rows: bool):
    def build(ctx: Ctx) -> bytes:
        big = {"chosen": "\n\nHuman: hi\n\nAssistant: " + "a" * (50 * 1024 * 1024), "rejected": "\n\nHuman: hi\n\nAssistant: no"}
        text = json.dumps(big) + "\n"
        return (text + (DEMO.read_text() if with_good_rows else "")).encode()
    return build


def _long_prompts(ctx: Ctx) -> str:
    """Prompts far longer than the model's context (tiny-random: 2048 positions), first in the file."""
    rows = []
    for i in range(12):
        question = f"Question {i}: " + " ".join(f"word{j}" for j in range(3000))
        rows.append({"chosen": f"\n\nHuman: {question}\n\nAssistant: Sure, here is help {i}.",
                     "rejected": f"\n\nHuman: {question}\n\nAssistant: No {i}."})
    return _jsonl(rows) + DEMO.read_text()


def _prepared(name: str, text: str, stage: str) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        (ctx.out / name).write_text(text)
        return [stage]
    return setup


def _train_lr(replacement: str) -> Callable[[str], str]:
    """An edit of params.yaml's `train.lr` line (whatever its value), e.g. `"  lrr: 1.0e-4"`."""
    def edit(text: str) -> str:
        head, train = text.split("\ntrain:\n", 1)
        train, n = re.subn(r"^  lr: [^\n]*$", lambda _: replacement, train, count=1, flags=re.M)
        assert n == 1, "params.yaml has no train.lr line"
        return head + "\ntrain:\n" + train
    return edit


def _params(text_or_edit) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        path = ctx.edited_params(text_or_edit) if callable(text_or_edit) else ctx.params_text(text_or_edit)
        return ["prepare", "--params", str(path)]
    return setup


def _set(*overrides: str, stage: str = "prepare") -> Callable[[Ctx], list[str]]:
    return lambda ctx: [stage, *[x for o in overrides for x in ("-S", o)]]


def _model(key: str, build: Callable[[Ctx], str], stage: str) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        extra = ["-S", "reward.train=false"] if key == "reward.model" and stage == "score" else []
        return [stage, "-S", f"{key}={build(ctx)}", *extra]
    return setup


def _harmful(build: Callable[[Ctx], object]) -> Callable[[Ctx], list[str]]:
    """`neat expand` with two harmful requests taken from the file `build` makes."""
    return lambda ctx: ["expand", "-S", f"paths.harmful_requests={build(ctx)}", "-S", "data.max_harmful_prompts=2"]


def _benign(build: Callable[[Ctx], object]) -> Callable[[Ctx], list[str]]:
    """`neat expand` with two benign prompts taken from the file `build` makes."""
    return lambda ctx: ["expand", "-S", f"paths.benign_prompts={build(ctx)}", "-S", "data.max_benign_prompts=2"]


def _model_dir(files: dict[str, bytes | str]) -> Callable[[Ctx], str]:
    def build(ctx: Ctx) -> str:
        d = ctx.dir / "inputs" / "model"
        d.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (d / name).write_bytes(data.encode() if isinstance(data, str) else data)
        return str(d)
    return build


def _truncated_checkpoint(ctx: Ctx) -> str:
    """A copy of the tiny-random checkpoint whose model.safetensors was cut in half (a half-written file)."""
    from neat.models import resolve_source

    src = Path(resolve_source("builtin:tiny-random", Path(os.environ["NEAT_CACHE_DIR"]), 0).location)
    d = ctx.dir / "inputs" / "half-written"
    shutil.copytree(src, d)
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return str(d)


LLAMA_CONFIG = json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
                           "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
                           "num_key_value_heads": 2, "vocab_size": 100})

CASES: list[Case] = [
    # ---- data files (`neat prepare`, paths.data) and the files later stages read
    Case("data-missing-file", "data", "paths.data does not exist",
         lambda ctx: ["prepare", "-S", f"paths.data={ctx.dir / 'nope.jsonl'}"], ("nope.jsonl", "not found")),
    Case("data-empty-file", "data", "0-byte file", _data("empty.jsonl", b""), ("empty.jsonl", "no rows")),
    Case("data-blank-lines", "data", "only blank lines", _data("blank.jsonl", "\n  \n\n"), ("blank.jsonl", "no rows")),
    Case("data-truncated-gzip", "data", "gzip cut in half", _data("cut.jsonl.gz", _truncated_gzip),
         ("cut.jsonl.gz", "truncated gzip")),
    Case("data-gzip-garbage", "data", "gzip magic, then garbage",
         _data("garbage.jsonl.gz", b"\x1f\x8b" + os.urandom(64)), ("garbage.jsonl.gz", "gzip")),
    Case("data-not-json", "data", "plain text lines", _data("text.jsonl", "hello\nworld\n"),
         ("text.jsonl", "not json")),
    Case("data-broken-json-array", "data", "a JSON array cut short",
         _data("cut.json", lambda ctx: json.dumps(_demo_rows()[:3])[:-40]), ("cut.json", "not valid json")),
    Case("data-utf16", "data", "UTF-16 encoded JSON lines",
         _data("utf16.jsonl", lambda ctx: DEMO.read_text().encode("utf-16")), ("utf16.jsonl", "not utf-8")),
    Case("data-latin1", "data", "Latin-1 bytes",
         _data("latin1.jsonl", lambda ctx: json.dumps({"chosen": "\n\nHuman: café\n\nAssistant: oui",
                                                      "rejected": "\n\nHuman: café\n\nAssistant: non"},
                                                     ensure_ascii=False).encode("latin-1")),
         ("latin1.jsonl", "not utf-8")),
    Case("data-binary", "data", "a PNG renamed .jsonl",
         _data("image.jsonl", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8), ("image.jsonl", "not utf-8")),
    Case("data-missing-fields", "data", "rows without chosen/rejected",
         _data("fields.jsonl", _jsonl([{"question": "q", "answer": "a"}] * 5)),
         ("fields.jsonl", "no usable row", "missing_field=5")),
    Case("data-wrong-types", "data", "chosen/rejected are numbers and lists",
         _data("types.jsonl", _jsonl([{"chosen": 1, "rejected": [1, 2]}, {"chosen": None, "rejected": "x"}])),
         ("types.jsonl", "wrong_type=2")),
    Case("data-not-objects", "data", "rows are arrays and strings",
         _data("arrays.jsonl", "[1, 2]\n\"text\"\n3\n"), ("arrays.jsonl", "not_an_object=3")),
    Case("data-json-array-of-scalars", "data", "a .json array of numbers",
         _data("scalars.json", "[1, 2, 3]"), ("scalars.json", "not_an_object=3")),
    Case("data-identical-responses", "data", "chosen == rejected in every row",
         _data("same.jsonl", _jsonl([{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: b"}])),
         ("same.jsonl", "identical=1")),
    Case("data-no-assistant-turn", "data", "HH rows without an Assistant turn",
         _data("noasst.jsonl", _jsonl([{"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: b"}])),
         ("noasst.jsonl", "no_assistant_turn")),
    Case("data-unknown-role", "data", "TRL messages with role 'robot'",
         _data("role.jsonl", _jsonl([{"prompt": [{"role": "robot", "content": "hi"}],
                                      "chosen": [{"role": "assistant", "content": "a"}],
                                      "rejected": [{"role": "assistant", "content": "b"}]}])),
         ("role.jsonl", "roles_out_of_order")),
    Case("data-directory", "data", "paths.data is a directory",
         lambda ctx: ["prepare", "-S", f"paths.data={ctx.dir}"], ("is a directory",)),
    Case("data-50mb-row-only", "data", "a single 50 MB row", _data("big.jsonl", _fifty_mb_row(False)),
         ("big.jsonl", "too_long=1")),
    Case("data-50mb-row-among-good", "data", "a 50 MB row among good rows: skipped and counted",
         _data("big-mixed.jsonl", _fifty_mb_row(True)), ('"too_long": 1',), exit=0),
    Case("data-prompt-longer-than-context", "data",
         "prompts of ~6000 tokens (context 2048): kept by prepare, dropped and counted by expand",
         lambda ctx: ["prepare+expand", "-S", f"paths.data={ctx.file('long.jsonl', _long_prompts(ctx))}"],
         ('"prompts_too_long": ',), exit=0),
    Case("data-hub-offline", "data", "hub:<id> while offline", _set("paths.data=hub:someorg/no-such-dataset"),
         ("hub:someorg/no-such-dataset", "cannot load")),
    Case("prepared-data-missing", "data", "expand before prepare",
         lambda ctx: (ctx.out.joinpath("data/train.jsonl").unlink(), ["expand"])[1],
         ("train.jsonl", "not found", "neat prepare")),
    Case("prepared-data-garbage", "data", "out/data/train.jsonl is not the prepared format",
         _prepared("data/train.jsonl", "{\"foo\": 1}\n", "expand"), ("train.jsonl", "row 1", "not a prepared")),
    Case("candidates-not-parquet", "data", "out/expand/candidates.parquet is not Parquet",
         _prepared("expand/candidates.parquet", "not parquet", "score"), ("candidates.parquet", "not a readable parquet")),
    # ---- params.yaml
    Case("params-missing-file", "params", "--params points nowhere",
         lambda ctx: ["prepare", "--params", str(ctx.dir / "missing.yaml")], ("missing.yaml", "not found")),
    Case("params-invalid-yaml", "params", "unclosed bracket", _params("seed: [0\ntrain: {lr: 1\n"),
         ("bad-params.yaml", "not valid yaml", "line")),
    Case("params-not-utf8", "params", "Latin-1 bytes in params.yaml",
         lambda ctx: ["prepare", "--params", str(ctx.params_text(
             ctx.params.read_bytes().replace(b"seed: 0", "seed: 0  # d\u00e9j\u00e0".encode("latin-1"))))],
         ("bad-params.yaml", "not valid yaml")),
    Case("params-top-level-list", "params", "a YAML list instead of sections", _params("- seed\n- train\n"),
         ("bad-params.yaml", "expected a mapping")),
    Case("params-unknown-key", "params", "train.lrr (typo)", _params(_train_lr("  lrr: 1.0e-4")),
         ("bad-params.yaml", "unknown key 'train.lrr'")),
    Case("params-unknown-section", "params", "a section the schema lacks", _params(lambda t: t + "\nfoo:\n  bar: 1\n"),
         ("unknown key 'foo'",)),
    Case("params-wrong-type", "params", "train.lr: fast", _params(_train_lr("  lr: fast")),
         ("train.lr", "valid number", "fast")),
    Case("params-out-of-range", "params", "train.lr: -1", _params(_train_lr("  lr: -1")),
         ("train.lr", "greater than 0")),
    Case("params-bad-enum", "params", "-S train.loss=ppo", _set("train.loss=ppo"), ("train.loss", "'rrhf', 'pro' or 'dpo'", "ppo")),
    Case("params-fractions", "params", "eval + judge fractions >= 1",
         _set("data.eval_fraction=0.6", "data.judge_fraction=0.5"), ("data", "must be below 1")),
    Case("params-override-syntax", "params", "-S without =", _set("train.lr"), ("train.lr", "expected key=value")),
    Case("params-override-into-scalar", "params", "-S seed.x=1", _set("seed.x=1"), ("seed.x", "not a section")),
    Case("params-negative-int", "params", "expand.k_pos: -1", _set("expand.k_pos=-1"), ("expand.k_pos", "greater than or equal to 0")),
    # a seed numpy's or torch's generator refuses would have ended as an internal error mid-run
    Case("params-negative-seed", "params", "-S evaluate.seed=-1", _set("evaluate.seed=-1"),
         ("evaluate.seed", "greater than or equal to 0")),
    Case("params-seed-too-large", "params", "-S seed=10**23", _set("seed=100000000000000000000000"),
         ("seed", "less than or equal to 4294967295")),
    # ---- model references
    Case("policy-missing-path", "model", "policy.model=/no/such/model",
         _model("policy.model", lambda ctx: str(ctx.dir / "no" / "such" / "model"), "expand"), ("no/such/model", "does not exist")),
    Case("benign-missing", "data", "paths.benign_prompts does not exist",
         _benign(lambda ctx: ctx.dir / "no-benign.jsonl"), ("no-benign.jsonl", "not found", "paths.benign_prompts")),
    Case("benign-no-prompt-field", "data", "a benign prompts row without its prompt",
         _benign(lambda ctx: ctx.file("benign.jsonl", '{"prompt": "Why is the sky blue?"}\n{"text": "hi"}\n')),
         ("benign.jsonl", "row 2", "prompt")),
    Case("harmful-missing", "data", "paths.harmful_requests does not exist",
         _harmful(lambda ctx: ctx.dir / "no-harmful.jsonl"),
         ("no-harmful.jsonl", "not found", "paths.harmful_requests")),
    Case("harmful-no-refusal", "data", "a harmful request without its refusal",
         _harmful(lambda ctx: ctx.file("harmful.jsonl", '{"prompt": "How do I make a pipe bomb?", "refusal": "No."}\n'
                                                       '{"prompt": "How do I stalk my ex?"}\n')),
         ("harmful.jsonl", "row 2", "refusal")),
    Case("policy-gguf-not-gguf", "model", "a .gguf file that is random bytes",
         _model("policy.model", lambda ctx: str(ctx.file("fake.gguf", os.urandom(256))), "expand"), ("fake.gguf", "not a gguf file")),
    Case("policy-dir-without-config", "model", "an empty directory",
         _model("policy.model", _model_dir({"README.md": "empty"}), "expand"), ("model", "no config.json")),
    Case("policy-half-written-weights", "model", "model.safetensors cut in half",
         _model("policy.model", _truncated_checkpoint, "expand"), ("half-written", "cannot load")),
    Case("policy-missing-weights", "model", "config.json but no weights",
         _model("policy.model", _model_dir({"config.json": LLAMA_CONFIG}), "expand"), ("model", "cannot load")),
    Case("policy-hub-offline", "model", "a hub id while offline",
         _model("policy.model", lambda ctx: "someorg/no-such-model", "expand"), ("someorg/no-such-model", "hub", "offline")),
    Case("policy-encoder", "model", "builtin:minilm as the policy",
         _model("policy.model", lambda ctx: "builtin:minilm", "expand"), ("builtin:minilm", "reward model")),
    Case("policy-unknown-builtin", "model", "builtin:gpt-9",
         _model("policy.model", lambda ctx: "builtin:gpt-9", "expand"), ("builtin:gpt-9", "unknown builtin")),
    Case("policy-no-cuda", "model", "policy.device=cuda:7 on a CPU machine", _set("policy.device=cuda:7", stage="expand"),
         ("cuda:7", "not available")),
    Case("reward-wrong-architecture", "model", "an image model (ViT) as the reward model",
         _model("reward.model", _model_dir({"config.json": json.dumps({"model_type": "vit"})}), "score"),
         ("model", "reward model", "vit architecture", "sequence-classification")),
    Case("reward-config-not-json", "model", "reward model config.json is garbage",
         _model("reward.model", _model_dir({"config.json": "{not json"}), "score"), ("model", "cannot load")),
    Case("reward-not-trained", "model", "score before train-rm (reward.train: true, no reward_model/)",
         lambda ctx: (shutil.rmtree(ctx.out / "reward_model"), ["score"])[1], ("reward_model", "not found")),
]


# ---------------------------------------------------------------- issue 12: hostile inputs of every kind


def _fifo(name: str) -> Callable[[Ctx], Path]:
    def build(ctx: Ctx) -> Path:
        path = ctx.dir / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        return path
    return build


def _loop(name: str) -> Callable[[Ctx], Path]:
    def build(ctx: Ctx) -> Path:
        d = ctx.dir / "inputs"
        d.mkdir(parents=True, exist_ok=True)
        (d / name).symlink_to(d / f"{name}.other")
        (d / f"{name}.other").symlink_to(d / name)
        return d / name
    return build


def _dangling(name: str) -> Callable[[Ctx], Path]:
    def build(ctx: Ctx) -> Path:
        d = ctx.dir / "inputs"
        d.mkdir(parents=True, exist_ok=True)
        (d / name).symlink_to(d / "gone")
        return d / name
    return build


def _path_data(build: Callable[[Ctx], Path], stage: str = "prepare") -> Callable[[Ctx], list[str]]:
    return lambda ctx: [stage, "-S", f"paths.data={build(ctx)}"]


def _gzip_bomb(ctx: Ctx) -> bytes:
    import zlib

    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
    block = b"\0" * (1 << 20)
    return comp.compress(b"".join([block] * 160)) + comp.flush()  # 160 MB of zeros, ~160 KB on disk


GOOD_ROW = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}


def _among_good(line: str) -> Callable[[Ctx], str]:
    return lambda ctx: line + "\n" + DEMO.read_text()


def _params_file(build: Callable[[Ctx], Path]) -> Callable[[Ctx], list[str]]:
    return lambda ctx: ["prepare", "--params", str(build(ctx))]


def _big_params(ctx: Ctx) -> Path:
    return ctx.params_text(ctx.params.read_text() + "\n# " + "x" * (2 << 20) + "\n")


ALIAS_BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [" + ", ".join([f"*{p}"] * 9) + "]\n" for p, n in zip("abcdefgh", "bcdefghi"))


def _evaluate_with(key: str | None, build: Callable[[Ctx], object] | None, *extra: str) -> Callable[[Ctx], list[str]]:
    """`neat evaluate` with a stand-in trained policy and eval reward model, and one input replaced."""
    def setup(ctx: Ctx) -> list[str]:
        for rel in ("policy", "eval_reward_model"):
            (ctx.out / rel).mkdir(parents=True, exist_ok=True)
            (ctx.out / rel / "config.json").write_text("{\"stand_in\": true}")
        argv = ["evaluate", *extra]
        if key is not None:
            argv += ["-S", f"{key}={build(ctx)}"]
        return argv
    return setup


def _csv(text: str | bytes, name: str = "safety.csv") -> Callable[[Ctx], Path]:
    return lambda ctx: ctx.file(name, text)


def _registry(pointer, published=("v1",), command: str = "rollback") -> Callable[[Ctx], list[str]]:
    """A local registry with `published` versions and `pointer` as production.json (text or object)."""
    def setup(ctx: Ctx) -> list[str]:
        root = ctx.dir / "registry"
        for v in published:
            (root / "versions" / v).mkdir(parents=True, exist_ok=True)
            (root / "versions" / v / "metrics.json").write_text("{\"m\": 1}")
        if pointer is not None:
            root.mkdir(parents=True, exist_ok=True)
            (root / "production.json").write_text(pointer if isinstance(pointer, str) else json.dumps(pointer))
        return [command, "-S", f"registry.uri={root}"]
    return setup


def _replace_prepared(rel: str, make: Callable[[Ctx, Path], None], stage: str) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        target = ctx.out / rel
        target.unlink()
        make(ctx, target)
        return [stage]
    return setup


def _hold_lock(ctx: Ctx) -> list[str]:
    import fcntl

    fh = open(ctx.dir / ".neat-run.lock", "a+")
    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    ctx.held.append(fh)
    return ["prepare", "-S", "data.split_salt=other"]


def _out_is_a_file(ctx: Ctx) -> list[str]:
    return ["prepare", "-S", f"paths.out={ctx.file('out-file', 'not a directory')}"]


def _out_data_is_a_file(ctx: Ctx) -> list[str]:
    shutil.rmtree(ctx.out / "data")
    (ctx.out / "data").write_text("a file where the data directory should be")
    return ["prepare", "-S", "data.split_salt=other"]


def _candidates_parquet(columns: dict) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        import pandas as pd

        pd.DataFrame(columns).to_parquet(ctx.out / "expand" / "candidates.parquet")
        return ["score", "-S", "reward.train=false", "-S", "reward.model=builtin:tiny-random"]
    return setup


CASES += [
    # ---- data files that are not regular files, or that would exhaust memory or hang
    Case("data-fifo", "data", "paths.data is a named pipe (used to hang forever)",
         _path_data(_fifo("pipe.jsonl")), ("pipe.jsonl", "named pipe", "not a regular file")),
    Case("data-dev-zero", "data", "paths.data=/dev/zero (used to exhaust memory)",
         _set("paths.data=/dev/zero"), ("/dev/zero", "device", "not a regular file")),
    Case("data-dev-null", "data", "paths.data=/dev/null", _set("paths.data=/dev/null"), ("/dev/null", "device")),
    Case("data-symlink-loop", "data", "a symlink loop (was reported as not found)",
         _path_data(_loop("loop.jsonl")), ("loop.jsonl", "symbolic link loop")),
    Case("data-dangling-symlink", "data", "a symlink to nothing", _path_data(_dangling("dangling.jsonl")),
         ("dangling.jsonl", "broken symbolic link")),
    Case("data-gzip-bomb", "data", "a gzip that expands 1000x", _data("bomb.jsonl.gz", _gzip_bomb),
         ("bomb.jsonl.gz", "decompression bomb")),
    Case("data-gzip-of-binary", "data", "gzip of random bytes",
         _data("bin.jsonl.gz", lambda ctx: gzip.compress(os.urandom(4096))), ("bin.jsonl.gz", "not utf-8")),
    Case("data-gzip-empty", "data", "gzip of nothing", _data("empty.jsonl.gz", lambda ctx: gzip.compress(b"")),
         ("empty.jsonl.gz", "no rows")),
    Case("data-deep-nesting-only", "data", "one row nested 100000 deep (RecursionError)",
         _data("deep.jsonl", "[" * 100_000 + "]" * 100_000 + "\n"), ("deep.jsonl", "nested too deeply")),
    Case("data-deep-nesting-array-file", "data", "a .json array nested 100000 deep",
         _data("deep.json", "[" * 100_000 + "]" * 100_000), ("deep.json", "nested too deeply")),
    Case("data-huge-int-only", "data", "a 5000-digit integer in the only row",
         _data("bigint.jsonl", '{"chosen": ' + "9" * 5000 + "}\n"), ("bigint.jsonl", "not json")),
    Case("data-huge-int-among-good", "data", "a 5000-digit integer in one row among good ones: only it is skipped",
         _data("bigint-mixed.jsonl", _among_good('{"chosen": ' + "9" * 5000 + "}")), ('"invalid_json": 1',), exit=0),
    Case("data-huge-int-array-file", "data", "a .json array holding a 5000-digit integer",
         _data("bigint.json", "[" + "9" * 5000 + "]"), ("bigint.json", "not valid json")),
    Case("data-lone-surrogate-only", "data", "a lone UTF-16 surrogate (failed at write time)",
         _data("surrogate.jsonl", json.dumps(GOOD_ROW).replace("hello", "hello \\ud800") + "\n"),
         ("surrogate.jsonl", "invalid_unicode=1")),
    Case("data-lone-surrogate-among-good", "data", "a lone surrogate in one row among good ones",
         _data("surrogate-mixed.jsonl", _among_good(json.dumps(GOOD_ROW).replace("hello", "hi \\udfff"))),
         ('"invalid_unicode": 1',), exit=0),
    Case("data-nul-bytes", "data", "a file of NUL bytes", _data("nul.jsonl", b"\0" * 4096), ("nul.jsonl", "not json")),
    Case("data-bz2-renamed", "data", "a bzip2 file named .jsonl",
         _data("bz.jsonl", lambda ctx: __import__("bz2").compress(DEMO.read_bytes())), ("bz.jsonl", "not utf-8")),
    Case("data-zip-renamed", "data", "a zip archive named .jsonl", _data("zip.jsonl", b"PK\x03\x04" + os.urandom(512)),
         ("zip.jsonl",)),
    Case("data-hash-in-path", "data", "-S paths.data with ' #' in the file name is read whole",
         lambda ctx: ["prepare", "-S", f"paths.data={ctx.file('x #2.jsonl', DEMO.read_bytes())}"],
         ('"rows_kept": ',), exit=0),
    Case("data-hash-in-missing-path", "data", "-S paths.data='/no/x #2.jsonl' names the whole path",
         lambda ctx: ["prepare", "-S", f"paths.data={ctx.dir / 'no' / 'x #2.jsonl'}"], ("x #2.jsonl", "not found")),
    Case("data-crlf", "data", "Windows line endings", _data("crlf.jsonl", lambda ctx: DEMO.read_text().replace("\n", "\r\n")),
         ('"rows_kept": ',), exit=0),
    Case("data-bom", "data", "a UTF-8 BOM", _data("bom.jsonl", lambda ctx: "\ufeff" + DEMO.read_text()),
         ('"rows_kept": ',), exit=0),
    Case("data-all-duplicates", "data", "the same row twice: one kept, one counted",
         _data("dup.jsonl", _jsonl([GOOD_ROW, GOOD_ROW])), ('"duplicate": 1',), exit=0),
    Case("data-json-object-file", "data", "a .json file holding one object without the fields",
         _data("obj.json", '{"a": 1}'), ("obj.json", "no usable row")),
    Case("data-empty-strings", "data", "chosen/rejected empty strings",
         _data("emptystr.jsonl", _jsonl([{"chosen": "", "rejected": ""}])), ("emptystr.jsonl", "no usable row")),
    Case("data-trl-content-not-string", "data", "TRL messages whose content is a number",
         _data("trlnum.jsonl", _jsonl([{"prompt": [{"role": "user", "content": 5}], "chosen": "a", "rejected": "b"}])),
         ("trlnum.jsonl", "wrong_type=1")),
    # ---- params files
    Case("params-directory", "params", "--params names a directory",
         lambda ctx: ["prepare", "--params", str(ctx.dir)], ("is a directory",)),
    Case("params-fifo", "params", "--params names a named pipe", _params_file(_fifo("params.yaml")),
         ("params.yaml", "not a regular file")),
    Case("params-dev-zero", "params", "--params /dev/zero", lambda ctx: ["prepare", "--params", "/dev/zero"],
         ("/dev/zero", "not a regular file")),
    Case("params-symlink-loop", "params", "--params is a symlink loop", _params_file(_loop("loop.yaml")),
         ("loop.yaml", "cannot read the params file")),
    Case("params-empty", "params", "an empty params.yaml (ran on defaults silently)", _params(""),
         ("bad-params.yaml", "params file is empty")),
    Case("params-only-comments", "params", "params.yaml with only comments", _params("# nothing\n# here\n"),
         ("bad-params.yaml", "empty")),
    Case("params-duplicate-section", "params", "'train:' twice (the first was dropped silently)",
         _params(lambda t: t + "\ntrain:\n  rounds: 3\n"), ("bad-params.yaml", "'train' appears twice")),
    Case("params-duplicate-key", "params", "'lr' twice in one section",
         _params(_train_lr("  lr: 1.0e-4\n  lr: 2.0e-4")), ("'lr' appears twice",)),
    Case("params-alias-bomb", "params", "a billion-laughs alias bomb (52 MB error line)", _params(ALIAS_BOMB),
         ("bad-params.yaml", "alias")),
    Case("params-alias", "params", "an innocent alias", _params(lambda t: t + "\nx: &a 1\ny: *a\n"), ("alias",)),
    Case("params-huge-int", "params", "seed with 5000 digits", _params(lambda t: t.replace("seed: 0", "seed: " + "9" * 5000, 1)),
         ("bad-params.yaml", "not valid yaml")),
    Case("params-deep-nesting", "params", "YAML nested 50000 deep", _params("a: " + "[" * 50_000 + "]" * 50_000 + "\n"),
         ("bad-params.yaml", "not valid yaml")),
    Case("params-too-large", "params", "a 2 MB params file", _params_file(_big_params), ("bad-params.yaml", "too large")),
    Case("params-binary", "params", "random bytes", _params(b"\xff\xfe" + bytes(range(256))), ("bad-params.yaml", "not utf-8")),
    Case("params-tab-indent", "params", "tabs for indentation", _params("train:\n\tlr: 1\n"), ("bad-params.yaml", "not valid yaml")),
    Case("params-inf-in-file", "params", "train.sft_weight: .inf in the file",
         _params(lambda t: t.replace("  sft_weight: 1.0", "  sft_weight: .inf")), ("train.sft_weight", "finite")),
    Case("params-null-section", "params", "'train:' with no value", _params(lambda t: t + "\nreward:\n"),
         ("reward", "appears twice")),
    Case("params-section-is-list", "params", "a section that is a list", _params("seed: 0\ntrain: [1, 2]\n"), ("train",)),
    Case("params-bool-garbage", "params", "a boolean that is not one", _set("train.shared_prompt=maybe"),
         ("train.shared_prompt", "boolean")),
    # ---- -S overrides
    Case("override-inf-weight", "override", "-S train.sft_weight=.inf", _set("train.sft_weight=.inf"), ("train.sft_weight", "finite")),
    Case("override-nan-norm", "override", "-S train.max_grad_norm=.nan", _set("train.max_grad_norm=.nan"), ("max_grad_norm", "finite")),
    Case("override-inf-margin", "override", "-S gate.margin=.inf", _set("gate.margin=.inf"), ("gate.margin", "finite")),
    Case("override-neg-inf-decay", "override", "-S train.weight_decay=-.inf", _set("train.weight_decay=-.inf"),
         ("train.weight_decay",)),
    Case("override-nan-fraction", "override", "-S data.eval_fraction=.nan", _set("data.eval_fraction=.nan"),
         ("data.eval_fraction", "finite")),
    Case("override-inf-lr", "override", "-S reward.lr=.inf", _set("reward.lr=.inf"), ("reward.lr",)),
    Case("override-hash-in-number", "override", "-S 'train.lr=1e-4 #fast' (the rest was dropped)",
         _set("train.lr=1e-4 #fast"), ("train.lr", "'#'")),
    Case("override-unknown-key", "override", "-S train.lrr=1", _set("train.lrr=1"), ("unknown key 'train.lrr'",)),
    Case("override-unknown-section", "override", "-S nope.x=1", _set("nope.x=1"), ("unknown key 'nope'",)),
    Case("override-section-as-scalar", "override", "-S train=5", _set("train=5"), ("train",)),
    Case("override-empty-key", "override", "-S =5", _set("=5"), ("override",)),
    Case("override-huge-value", "override", "-S with a 1 MB value: the error quotes a little",
         _set("train.lr=" + "9" * (1 << 20)), ("train.lr",)),
    Case("override-alias", "override", "-S with a YAML alias", _set("train.lr=*a"), ("train.lr",)),
    Case("override-list-for-number", "override", "-S train.lr=[1, 2]", _set("train.lr=[1, 2]"), ("train.lr", "valid number")),
    # ---- untrusted code through overrides
    Case("override-remote-code-policy", "security", "-S policy.trust_remote_code=true",
         _set("policy.trust_remote_code=true", stage="expand"), ("policy.trust_remote_code", "only be turned on in the params file")),
    Case("override-remote-code-reward", "security", "-S reward.trust_remote_code=yes",
         _set("reward.trust_remote_code=yes", stage="score"), ("reward.trust_remote_code", "params file")),
    Case("override-remote-code-section", "security", "-S policy={trust_remote_code: true}",
         _set("policy={trust_remote_code: true}"), ("policy.trust_remote_code", "params file")),
    Case("override-remote-code-one", "security", "-S reward.trust_remote_code=1",
         _set("reward.trust_remote_code=1"), ("reward.trust_remote_code", "params file")),
    Case("override-remote-code-on", "security", "-S policy.trust_remote_code=On",
         _set("policy.trust_remote_code=On"), ("policy.trust_remote_code", "params file")),
    # ---- safety CSV and refusal examples (evaluate), checked before any generation
    Case("safety-missing", "safety", "paths.safety_prompts does not exist",
         _evaluate_with("paths.safety_prompts", lambda ctx: ctx.dir / "no.csv"), ("no.csv", "not found")),
    Case("safety-directory", "safety", "paths.safety_prompts is a directory",
         _evaluate_with("paths.safety_prompts", lambda ctx: ctx.dir), ("is a directory",)),
    Case("safety-fifo", "safety", "paths.safety_prompts is a named pipe",
         _evaluate_with("paths.safety_prompts", _fifo("safety.csv")), ("safety.csv", "named pipe")),
    Case("safety-missing-column", "safety", "no 'label' column",
         _evaluate_with("paths.safety_prompts", _csv("prompt,type\nhi,x\n")), ("safety.csv", "missing column 'label'")),
    Case("safety-bad-label", "safety", "label 'maybe'",
         _evaluate_with("paths.safety_prompts", _csv("prompt,type,label\nhi,x,maybe\n")), ("safety.csv", "row 1")),
    Case("safety-empty", "safety", "a 0-byte CSV", _evaluate_with("paths.safety_prompts", _csv("")), ("safety.csv", "empty")),
    Case("safety-utf16", "safety", "a UTF-16 CSV",
         _evaluate_with("paths.safety_prompts", _csv("prompt,type,label\nhi,x,safe\n".encode("utf-16"))), ("safety.csv", "utf-8")),
    Case("safety-binary", "safety", "random bytes", _evaluate_with("paths.safety_prompts", _csv(b"\x89PNG" + os.urandom(200))),
         ("safety.csv",)),
    Case("refusal-one-label", "refusal", "every example labelled 'refusal'",
         _evaluate_with("paths.refusal_examples", lambda ctx: ctx.file("ref.jsonl", _jsonl([{"response": "no", "label": "refusal"}] * 4)),
                        "-S", "evaluate.judge=learned"), ("ref.jsonl", "needs both")),
    Case("refusal-latin1", "refusal", "Latin-1 bytes",
         _evaluate_with("paths.refusal_examples", lambda ctx: ctx.file("ref.jsonl", '{"response": "caf\u00e9", "label": "refusal"}\n'.encode("latin-1")),
                        "-S", "evaluate.judge=learned"), ("ref.jsonl", "not utf-8")),
    Case("refusal-not-json", "refusal", "plain text",
         _evaluate_with("paths.refusal_examples", lambda ctx: ctx.file("ref.jsonl", "no thanks\n"), "-S", "evaluate.judge=learned"),
         ("ref.jsonl", "line 1", "not valid json")),
    Case("refusal-bad-label", "refusal", "label 'maybe'",
         _evaluate_with("paths.refusal_examples", lambda ctx: ctx.file("ref.jsonl", _jsonl([{"response": "x", "label": "maybe"}])),
                        "-S", "evaluate.judge=learned"), ("ref.jsonl", "'maybe'")),
    Case("refusal-missing", "refusal", "paths.refusal_examples does not exist",
         _evaluate_with("paths.refusal_examples", lambda ctx: ctx.dir / "nope.jsonl", "-S", "evaluate.judge=learned"),
         ("nope.jsonl", "not found")),
    Case("refusal-directory", "refusal", "paths.refusal_examples is a directory",
         _evaluate_with("paths.refusal_examples", lambda ctx: ctx.dir, "-S", "evaluate.judge=learned"), ("is a directory",)),
    Case("refusal-empty", "refusal", "a 0-byte file",
         _evaluate_with("paths.refusal_examples", lambda ctx: ctx.file("ref.jsonl", ""), "-S", "evaluate.judge=learned"),
         ("ref.jsonl", "empty")),
    Case("refusal-huge-int", "refusal", "a 5000-digit integer",
         _evaluate_with("paths.refusal_examples", lambda ctx: ctx.file("ref.jsonl", '{"response": ' + "9" * 5000 + "}\n"),
                        "-S", "evaluate.judge=learned"), ("ref.jsonl", "not valid json")),
    Case("evaluate-no-eval-rm", "stage", "evaluate without the evaluation reward model: refused before generating",
         lambda ctx: (_evaluate_with(None, None)(ctx), shutil.rmtree(ctx.out / "eval_reward_model"))[0],
         ("eval_reward_model", "not found")),
    Case("evaluate-no-policy", "stage", "evaluate before train", lambda ctx: ["evaluate"], ("policy", "not found")),
    # ---- stage inputs written by earlier stages
    Case("prepared-train-fifo", "stage", "out/data/train.jsonl is a named pipe",
         _replace_prepared("data/train.jsonl", lambda ctx, p: os.mkfifo(p), "expand"), ("train.jsonl", "named pipe")),
    Case("prepared-train-directory", "stage", "out/data/train.jsonl is a directory",
         _replace_prepared("data/train.jsonl", lambda ctx, p: p.mkdir(), "expand"), ("train.jsonl", "is a directory")),
    Case("prepared-train-loop", "stage", "out/data/train.jsonl is a symlink loop",
         _replace_prepared("data/train.jsonl", lambda ctx, p: (p.symlink_to(p.with_name("x")), p.with_name("x").symlink_to(p)),
                           "expand"), ("train.jsonl", "symbolic link loop")),
    Case("prepared-train-truncated", "stage", "out/data/train.jsonl cut mid-row",
         _replace_prepared("data/train.jsonl", lambda ctx, p: p.write_text('{"prompt_id": "a", "prompt": [{"ro'), "expand"),
         ("train.jsonl", "row 1", "not a prepared")),
    Case("prepared-train-deep", "stage", "out/data/train.jsonl nested 100000 deep",
         _replace_prepared("data/train.jsonl", lambda ctx, p: p.write_text("[" * 100_000 + "]" * 100_000 + "\n"), "expand"),
         ("train.jsonl", "nested too deeply")),
    Case("prepared-eval-garbage", "stage", "out/data/eval.jsonl is not the prepared format (evaluate)",
         lambda ctx: (ctx.out.joinpath("data/eval.jsonl").write_text('{"x": 1}\n'), _evaluate_with(None, None)(ctx))[1],
         ("eval.jsonl", "row 1")),
    Case("candidates-empty-file", "stage", "out/expand/candidates.parquet is empty",
         _prepared("expand/candidates.parquet", "", "score"), ("candidates.parquet",)),
    # ---- the registry (rollback / registry): path traversal and damaged pointers
    Case("registry-traversal-history", "registry", "rollback to '../../../../elsewhere'",
         _registry({"version": "v1", "history": ["../../../../elsewhere"]}), ("production.json", "not a valid version id")),
    Case("registry-traversal-version", "registry", "production '../x' shown",
         _registry({"version": "../x", "history": []}, command="registry"), ("not a valid version id",)),
    Case("registry-absolute-version", "registry", "history holds '/etc'",
         _registry({"version": "v1", "history": ["/etc"]}), ("not a valid version id",)),
    Case("registry-pointer-not-json", "registry", "production.json cut short", _registry('{"version": "v1"'),
         ("production.json", "damaged")),
    Case("registry-pointer-list", "registry", "production.json is a list", _registry("[1, 2]"), ("production.json", "damaged")),
    Case("registry-pointer-no-version", "registry", "production.json without version", _registry({"history": []}),
         ("production.json", "not a valid version id")),
    Case("registry-pointer-history-string", "registry", "history is a string", _registry({"version": "v1", "history": "v0"}),
         ("production.json", "damaged")),
    Case("registry-pointer-deep", "registry", "production.json nested 100000 deep",
         _registry("[" * 100_000 + "]" * 100_000, command="registry"), ("production.json", "damaged")),
    Case("registry-rollback-unpublished", "registry", "rollback to a version never published",
         _registry({"version": "v2", "history": ["v0"]}, published=("v2",)), ("v0", "never published")),
    Case("registry-rollback-first", "registry", "rollback with no history", _registry({"version": "v1", "history": []}),
         ("nothing to roll back",)),
    Case("registry-empty", "registry", "rollback with no production model", _registry(None), ("no production model",)),
    Case("registry-unset", "registry", "rollback without registry.uri", lambda ctx: ["rollback"], ("registry.uri is not set",)),
    # ---- outputs: a path that is a file, a full disk, another run in the checkout
    Case("out-is-a-file", "output", "paths.out names a file", _out_is_a_file, ("out-file",)),
    Case("out-data-is-a-file", "output", "out/data is a file", _out_data_is_a_file, ("data",)),
    Case("disk-full-prepare", "output", "every write past 2 KB fails (RLIMIT_FSIZE, as a full disk)",
         _set("data.split_salt=other"), ("out", "disk full", "previous outputs kept"), fsize=2048),
    Case("disk-full-expand", "output", "expand on a full disk", _set("expand.k_neg=0", stage="expand"), ("disk full",), fsize=2048),
    Case("lock-held", "output", "another neat run holds the checkout", _hold_lock, ("another neat run",)),
]


# ---------------------------------------------------------------- issue 12, second part: damaged stage outputs,
# absurd model configs, damaged GGUF headers, S3 credentials, the lock around registry writes


def _write_out(rel: str, data: str | bytes | Callable[[Ctx], str | bytes], stage: str) -> Callable[[Ctx], list[str]]:
    """`stage` after out/<rel> was replaced by `data` (a damaged output of an earlier stage)."""
    def setup(ctx: Ctx) -> list[str]:
        payload = data(ctx) if callable(data) else data
        target = ctx.out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(payload.encode() if isinstance(payload, str) else payload)
        return [stage]
    return setup


def _scored_parquet(columns: dict) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        import pandas as pd

        pd.DataFrame(columns).to_parquet(ctx.out / "score" / "candidates.parquet")
        return ["train"]
    return setup


CANDIDATE = {"prompt_id": ["a", "a"], "prompt": ["[]", "[]"], "response": ["x", "y"], "origin": ["chosen", "rejected"]}
GENERATION = {"prompt_id": "p1", "prompt": [{"role": "user", "content": "hi"}], "chosen": "hello",
              "base_response": "hi", "trained_response": "hello", "base_reward": 0.1, "trained_reward": 0.2}
EVALUATE_JSON = json.dumps({"prompts": 4, "win_rate": 0.5, "eval_reward_mean": 0.1}, indent=2)
LOG_WITHOUT_RANK = "round,step,loss,sft_loss,lr\n1,1,0.5,0.4,1e-4\n"


def _config(**sizes) -> Callable[[Ctx], str]:
    return _model_dir({"config.json": json.dumps(json.loads(LLAMA_CONFIG) | sizes)})


def _gguf(header: bytes) -> Callable[[Ctx], str]:
    return lambda ctx: str(ctx.file("damaged.gguf", header + bytes(range(256)) * 4))


NO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "",
                  "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials", "AWS_CONFIG_FILE": "/nonexistent/config",
                  "AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "1"}
BATTERY_SECRET = "battery-secret-value-0123456789"


def _s3_registry(ctx: Ctx) -> list[str]:
    return ["registry", "-S", "registry.uri=s3://neat-models/neat", "-S", "registry.endpoint_url=http://127.0.0.1:9"]


def _rollback_while_locked(ctx: Ctx) -> list[str]:
    argv = _registry({"version": "v2", "history": ["v1"]}, published=("v1", "v2"))(ctx)
    _hold_lock(ctx)
    return argv


def _online(text: str, stage: str) -> Callable[[Ctx], list[str]]:
    """`stage` (evaluate or report) with out/train/online.json replaced by `text`."""
    def setup(ctx: Ctx) -> list[str]:
        argv = _evaluate_with(None, None)(ctx) if stage == "evaluate" else ["report"]
        if stage == "report":  # a report has something to say (a training log), and no stand-in Parquet
            (ctx.out / "score" / "candidates.parquet").unlink()
            (ctx.out / "train").mkdir(parents=True, exist_ok=True)
            (ctx.out / "train" / "log.csv").write_text("round,step,loss,rank_loss,sft_loss\n1,1,0.5,0.3,0.2\n")
        (ctx.out / "train").mkdir(parents=True, exist_ok=True)
        (ctx.out / "train" / "online.json").write_text(text)
        return argv
    return setup


ONLINE_JSON = json.dumps([{"round": 1, "dev": {"answers": [{"prompt": "hi", "response": "hello", "reward": 0.1}]}}])


CASES += [
    # ---- outputs of earlier stages with the wrong columns or damaged content
    Case("candidates-no-prompt-column", "stage", "expand/candidates.parquet without 'prompt' (score)",
         _candidates_parquet({k: v for k, v in CANDIDATE.items() if k != "prompt"}),
         ("candidates.parquet", "missing column 'prompt'")),
    Case("candidates-no-response-origin", "stage", "expand/candidates.parquet without 'response' and 'origin'",
         _candidates_parquet({"prompt_id": ["a"], "prompt": ["[]"]}),
         ("candidates.parquet", "'response'", "'origin'")),
    Case("scored-candidates-no-reward", "stage", "score/candidates.parquet without 'reward' (train)",
         _scored_parquet(CANDIDATE), ("candidates.parquet", "missing column 'reward'", "neat score")),
    Case("generations-truncated", "stage", "evaluate/generations.jsonl cut mid-row (report)",
         _write_out("evaluate/generations.jsonl", json.dumps(GENERATION) + "\n" + json.dumps(GENERATION)[:40], "report"),
         ("generations.jsonl", "row 2", "truncated", "neat evaluate")),
    Case("generations-missing-key", "stage", "evaluate/generations.jsonl rows without base_reward (report)",
         _write_out("evaluate/generations.jsonl", json.dumps({k: v for k, v in GENERATION.items() if k != "base_reward"}) + "\n",
                    "report"), ("generations.jsonl", "row 1", "lacks 'base_reward'")),
    Case("safety-jsonl-not-json", "stage", "evaluate/safety.jsonl is text (report)",
         _write_out("evaluate/safety.jsonl", "no json here\n", "report"), ("safety.jsonl", "row 1", "not valid json")),
    Case("log-csv-no-rank-loss", "stage", "train/log.csv without rank_loss (report; was a KeyError)",
         _write_out("train/log.csv", LOG_WITHOUT_RANK, "report"), ("log.csv", "missing column 'rank_loss'", "neat train")),
    Case("log-csv-binary", "stage", "train/log.csv is random bytes (report)",
         _write_out("train/log.csv", b"\xff\xfe\x00" + bytes(range(128, 256)), "report"), ("log.csv", "not utf-8")),
    Case("evaluate-json-truncated", "stage", "metrics/evaluate.json cut short (report used to leave the evaluation out)",
         _write_out("metrics/evaluate.json", EVALUATE_JSON[:30], "report"),
         ("evaluate.json", "truncated", "neat evaluate")),
    Case("evaluate-json-empty", "stage", "metrics/evaluate.json is a 0-byte file (report)",
         _write_out("metrics/evaluate.json", "", "report"), ("evaluate.json", "not valid json")),
    Case("evaluate-json-list", "stage", "metrics/evaluate.json holds a list (report)",
         _write_out("metrics/evaluate.json", "[1, 2]", "report"), ("evaluate.json", "expected a json object")),
    Case("evaluate-json-deep", "stage", "metrics/evaluate.json nested 100000 deep (report)",
         _write_out("metrics/evaluate.json", "[" * 100_000 + "]" * 100_000, "report"), ("evaluate.json", "nested too deeply")),
    Case("evaluate-json-directory", "stage", "metrics/evaluate.json is a directory (report)",
         lambda ctx: ((ctx.out / "metrics" / "evaluate.json").mkdir(parents=True), ["report"])[1],
         ("evaluate.json", "is a directory")),
    Case("train-json-damaged", "stage", "metrics/train.json cut short (report)",
         lambda ctx: ((ctx.out / "score" / "candidates.parquet").unlink(),  # the stand-in is not Parquet
                      _write_out("metrics/train.json", '{"steps": 4, "ro', "report")(ctx))[1],
         ("train.json", "truncated", "neat train")),
    Case("online-json-truncated", "stage", "train/online.json cut short (evaluate, before generating)",
         _online(ONLINE_JSON[:25], "evaluate"), ("online.json", "truncated", "neat train")),
    Case("online-json-object", "stage", "train/online.json holds an object, not the list of rounds (evaluate)",
         _online('{"round": 1}', "evaluate"), ("online.json", "expected a json array")),
    Case("online-json-dev-without-answers", "stage", "a dev probe without its answers (was silently dropped)",
         _online(json.dumps([{"round": 1, "dev": {"reward_mean": 0.2}}]), "evaluate"), ("online.json", "entry 1", "answers")),
    Case("online-json-answer-without-response", "stage", "a dev answer without its response (evaluate)",
         _online(json.dumps([{"round": 1, "dev": {"answers": [{"prompt": "hi"}]}}]), "evaluate"), ("online.json", "entry 1")),
    Case("online-json-not-rounds", "stage", "train/online.json entries without 'round' (report)",
         _online("[1, 2]", "report"), ("online.json", "entry 1", "round")),
    Case("online-json-truncated-report", "stage", "train/online.json cut short (report)",
         _online(ONLINE_JSON[:25], "report"), ("online.json", "truncated")),
    # ---- model configs with zero or absurd sizes, GGUF files with a damaged header
    Case("policy-config-hidden-zero", "model", "config.json with hidden_size 0",
         _model("policy.model", _config(hidden_size=0), "expand"), ("config.json", "hidden_size is 0")),
    Case("policy-config-layers-billion", "model", "config.json with num_hidden_layers 10**9 (would allocate forever)",
         _model("policy.model", _config(num_hidden_layers=10**9), "expand"), ("config.json", "num_hidden_layers", "1000000000")),
    Case("reward-config-vocab-negative", "model", "reward model config.json with vocab_size -1",
         _model("reward.model", _config(vocab_size=-1), "score"), ("config.json", "vocab_size is -1")),
    Case("policy-config-size-text", "model", "config.json with hidden_size \"64\"",
         _model("policy.model", _config(hidden_size="64"), "expand"), ("config.json", "hidden_size is '64'", "whole number")),
    Case("policy-config-huge", "model", "config.json sizes in range, but 10**14 parameters in all",
         _model("policy.model", _config(hidden_size=65536, num_hidden_layers=1024, intermediate_size=1 << 20,
                                        vocab_size=1 << 22), "expand"), ("config.json", "parameters", "refusing")),
    Case("policy-config-list", "model", "config.json holds a list",
         _model("policy.model", _model_dir({"config.json": "[1, 2]"}), "expand"), ("config.json", "not a json object")),
    Case("policy-gguf-bad-version", "model", "a GGUF whose header version is garbage (was 'bad JSON config')",
         _model("policy.model", _gguf(b"GGUF" + (0x99_00_00_01).to_bytes(4, "little") + bytes(16)), "expand"),
         ("damaged.gguf", "gguf file is damaged"), never=("json",)),
    Case("policy-gguf-absurd-counts", "model", "a GGUF header claiming 10**12 metadata entries",
         _model("policy.model", _gguf(b"GGUF" + (3).to_bytes(4, "little") + (5).to_bytes(8, "little")
                                      + (10**12).to_bytes(8, "little")), "expand"),
         ("damaged.gguf", "gguf file is damaged"), never=("json",)),
    Case("policy-gguf-damaged-metadata", "model", "a GGUF with a valid start and garbage metadata",
         _model("policy.model", _gguf(b"GGUF" + (3).to_bytes(4, "little") + (2).to_bytes(8, "little")
                                      + (3).to_bytes(8, "little")), "expand"),
         ("damaged.gguf", "gguf file is damaged"), never=("json",)),
    Case("policy-gguf-cut-header", "model", "a GGUF cut inside its header",
         _model("policy.model", lambda ctx: str(ctx.file("damaged.gguf", b"GGUF\x03\x00")), "expand"),
         ("damaged.gguf", "cut short"), never=("json",)),
    # ---- S3 credentials are not blamed on the endpoint; the endpoint is not blamed on the credentials
    Case("registry-s3-no-credentials", "registry", "an S3 registry with no credentials in the environment",
         _s3_registry, ("s3://neat-models/neat", "NoCredentialsError", "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"),
         env=NO_CREDENTIALS, never=("endpoint",)),
    Case("registry-s3-unreachable", "registry", "an S3 registry whose endpoint is down (credentials set)",
         _s3_registry, ("s3://neat-models/neat", "cannot reach the s3 endpoint"),
         env=NO_CREDENTIALS | {"AWS_ACCESS_KEY_ID": "battery-key", "AWS_SECRET_ACCESS_KEY": BATTERY_SECRET},
         never=(BATTERY_SECRET, "AWS_SECRET_ACCESS_KEY")),
    Case("registry-s3-unknown-profile", "registry", "AWS_PROFILE names a profile that does not exist (was exit 3)",
         _s3_registry, ("s3://neat-models/neat", "AWS_PROFILE", "no-such-profile"),
         env=NO_CREDENTIALS | {"AWS_PROFILE": "no-such-profile"}, never=("endpoint",)),
    # ---- registry writes take the checkout's lock
    Case("registry-rollback-lock-held", "registry", "rollback while another neat run holds the checkout",
         _rollback_while_locked, ("another neat run",)),
]


# ---------------------------------------------------------------- running a case


@dataclass
class Result:
    id: str
    group: str
    what: str
    exit: int | None
    message: str  # the error line, or a short summary of a handled case
    seconds: float
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def ended(self) -> str:
        return f"exit {self.exit}: {self.message}"


def _run_cli(argv: list[str], env: dict) -> tuple[int | None, str, str, str | None]:
    """(exit code, stdout, stderr, traceback text if an exception escaped main)."""
    from neat.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        tb = None
    except SystemExit as exc:  # argparse
        code, tb = exc.code, None
    except BaseException:  # noqa: BLE001 - any escaped exception is a finding
        import traceback

        code, tb = None, traceback.format_exc()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return code, out.getvalue(), err.getvalue(), tb


def run_case(case: Case, base: Path, workdir: Path) -> Result:
    ctx = Ctx(workdir)
    shutil.copytree(base, workdir, dirs_exist_ok=True)
    from neat.workspace import set_params_in_file

    set_params_in_file(ctx.params, {"paths.out": str(ctx.out), "paths.checkpoints": str(workdir / "checkpoints")})
    argv = case.setup(ctx)
    stages = argv[0].split("+")
    if "--params" not in argv:
        argv = argv + ["--params", str(ctx.params)]
    before = snapshot(ctx.out)
    registry_before = snapshot(ctx.dir / "registry")
    started = time.perf_counter()
    code, stdout, stderr = 0, "", ""
    tb = None
    try:
        with _file_size_limit(case.fsize):
            for stage in stages:
                code, so, se, tb = _run_cli([stage, *argv[1:]], case.env)
                stdout, stderr = stdout + so, stderr + se
                if code != 0:
                    break
    finally:
        for fh in ctx.held:
            fh.close()
    seconds = time.perf_counter() - started
    problems: list[str] = []
    errors = [ln for ln in stderr.splitlines() if ln.startswith("neat: error:")]
    if tb is not None:
        problems.append("exception escaped the CLI: " + tb.strip().splitlines()[-1])
    if "Traceback" in stderr:
        problems.append("traceback printed without --debug")
    if code != case.exit:
        problems.append(f"exit {code}, expected {case.exit}")
    if case.exit != 0:
        message = errors[0][len("neat: error: "):] if errors else (stderr.strip().splitlines() or [""])[-1]
        if len(errors) != 1:
            problems.append(f"{len(errors)} 'neat: error:' lines, expected one")
        missing = [s for s in case.says if s.lower() not in message.lower()]
        if missing:
            problems.append(f"message lacks {missing}")
        wrong = [s for s in case.never if s.lower() in (stderr + stdout).lower()]
        if wrong:
            problems.append(f"output holds {wrong}")
        after = snapshot(ctx.out)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        if changed:
            problems.append(f"outputs changed: {changed[:5]}")
        if snapshot(ctx.dir / "registry") != registry_before:
            problems.append("the registry changed")
    else:
        missing = [s for s in case.says if s.lower() not in stdout.lower()]
        if missing:
            problems.append(f"summary lacks {missing}")
        message = _handled_summary(stdout)
    left = leftovers(workdir)
    if left:
        problems.append(f"temporary files left: {left[:5]}")
    return Result(case.id, case.group, case.what, code, message, round(seconds, 2), problems)


@contextlib.contextmanager
def _file_size_limit(limit: int | None):
    if limit is None:
        yield
        return
    import resource
    import signal

    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)


def _handled_summary(stdout: str) -> str:
    """'skipped too_long=1' / 'prompts_too_long=4' from the JSON summaries a stage prints."""
    parts = []
    decoder = json.JSONDecoder()
    text, pos = stdout, 0
    while True:
        start = text.find("{", pos)
        if start < 0:
            break
        try:
            obj, end = decoder.raw_decode(text, start)
        except ValueError:
            pos = start + 1
            continue
        pos = end
        if isinstance(obj, dict) and "skipped" in obj:
            parts.append("rows kept %s of %s, skipped %s" % (obj.get("rows_kept"), obj.get("rows_read"),
                                                           ", ".join(f"{k}={v}" for k, v in obj["skipped"].items()) or "none"))
        if isinstance(obj, dict) and "prompts_too_long" in obj:
            parts.append(f"expand: {obj['prompts_too_long']} of {obj['prompts']} prompts too long, dropped")
    return "; ".join(parts) or "ok"


def run_battery(cases: list[Case] | None = None, workdir: Path | None = None) -> list[Result]:
    cases = cases or CASES
    with tempfile.TemporaryDirectory(prefix="neat-bad-inputs-") as tmp:
        root = Path(workdir or tmp)
        base = make_base(root / "base")
        return [run_case(c, base, root / c.id) for c in cases]


def format_table(results: list[Result]) -> str:
    width = max(len(r.id) for r in results)
    lines = [f"{'kind':<8}  {'case':<{width}}  exit  verdict  seconds  how it ended", "-" * (width + 80)]
    for r in results:
        lines.append(f"{r.group:<8}  {r.id:<{width}}  {str(r.exit):>4}  {'ok' if r.ok else 'FAILED':<7}  {r.seconds:7.2f}  "
                     f"{r.message}" + (f"   <-- {'; '.join(r.problems)}" if r.problems else ""))
    n_err = sum(1 for r in results if r.exit not in (0, None))
    kinds = sorted({r.group for r in results})
    lines.append(f"{len(results)} bad inputs in {len(kinds)} kinds ({', '.join(kinds)}): {n_err} ended with a one-line "
                 f"error (exit 2), {sum(1 for r in results if r.exit == 0)} handled (skipped/dropped and counted), "
                 f"{sum(1 for r in results if not r.ok)} failed their check")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--only", help="comma-separated case ids")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if not args.only or c.id in args.only.split(",")]
    results = run_battery(cases)
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ | {"ok": r.ok} for r in results], indent=2))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
