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
}
TEMP_MARKERS = (".tmp", ".old-")


# ---------------------------------------------------------------- the throw-away project


@dataclass
class Ctx:
    """One case's directory: `params` (a valid params file), `out` (with a previous run's outputs)."""

    dir: Path

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
    from neat.pipeline import set_params_in_file

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "params.yaml", dest / "params.yaml")
    set_params_in_file(dest / "params.yaml", TINY | {
        "paths.data": str(DEMO), "paths.safety_prompts": str(ROOT / "data/demo/safety_prompts.csv"),
        "paths.refusal_examples": str(ROOT / "data/demo/refusal_examples.jsonl"),
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


def _demo_rows() -> list[dict]:
    return [json.loads(line) for line in DEMO.read_text().splitlines() if line.strip()]


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
    from neat.models import _resolve

    src = Path(_resolve("builtin:tiny-random", Path(os.environ["NEAT_CACHE_DIR"]), 0).location)
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
    Case("params-unknown-key", "params", "train.lrr (typo)", _params(lambda t: t.replace("  lr: 1.0e-4", "  lrr: 1.0e-4")),
         ("bad-params.yaml", "unknown key 'train.lrr'")),
    Case("params-unknown-section", "params", "a section the schema lacks", _params(lambda t: t + "\nfoo:\n  bar: 1\n"),
         ("unknown key 'foo'",)),
    Case("params-wrong-type", "params", "train.lr: fast", _params(lambda t: t.replace("  lr: 1.0e-4", "  lr: fast")),
         ("train.lr", "valid number", "fast")),
    Case("params-out-of-range", "params", "train.lr: -1", _params(lambda t: t.replace("  lr: 1.0e-4", "  lr: -1")),
         ("train.lr", "greater than 0")),
    Case("params-bad-enum", "params", "-S train.loss=dpo", _set("train.loss=dpo"), ("train.loss", "'rrhf' or 'pro'", "dpo")),
    Case("params-fractions", "params", "eval + judge fractions >= 1",
         _set("data.eval_fraction=0.6", "data.judge_fraction=0.5"), ("data", "must be below 1")),
    Case("params-override-syntax", "params", "-S without =", _set("train.lr"), ("train.lr", "expected key=value")),
    Case("params-override-into-scalar", "params", "-S seed.x=1", _set("seed.x=1"), ("seed.x", "not a section")),
    Case("params-negative-int", "params", "expand.k_pos: -1", _set("expand.k_pos=-1"), ("expand.k_pos", "greater than or equal to 0")),
    # ---- model references
    Case("policy-missing-path", "model", "policy.model=/no/such/model",
         _model("policy.model", lambda ctx: str(ctx.dir / "no" / "such" / "model"), "expand"), ("no/such/model", "does not exist")),
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
    from neat.pipeline import set_params_in_file

    set_params_in_file(ctx.params, {"paths.out": str(ctx.out), "paths.checkpoints": str(workdir / "checkpoints")})
    argv = case.setup(ctx)
    stages = argv[0].split("+")
    if "--params" not in argv:
        argv = argv + ["--params", str(ctx.params)]
    before = snapshot(ctx.out)
    started = time.perf_counter()
    code, stdout, stderr = 0, "", ""
    tb = None
    for stage in stages:
        code, so, se, tb = _run_cli([stage, *argv[1:]], case.env)
        stdout, stderr = stdout + so, stderr + se
        if code != 0:
            break
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
        after = snapshot(ctx.out)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        if changed:
            problems.append(f"outputs changed: {changed[:5]}")
    else:
        missing = [s for s in case.says if s.lower() not in stdout.lower()]
        if missing:
            problems.append(f"summary lacks {missing}")
        message = _handled_summary(stdout)
    left = leftovers(workdir)
    if left:
        problems.append(f"temporary files left: {left[:5]}")
    return Result(case.id, case.group, case.what, code, message, round(seconds, 2), problems)


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
    lines = [f"{'case':<{width}}  group   ok   exit  seconds  how it ended", "-" * (width + 70)]
    for r in results:
        lines.append(f"{r.id:<{width}}  {r.group:<6}  {'yes' if r.ok else 'NO ':<3}  {str(r.exit):>4}  {r.seconds:7.2f}  "
                     f"{r.message}" + (f"   <-- {'; '.join(r.problems)}" if r.problems else ""))
    n_err = sum(1 for r in results if r.exit not in (0, None))
    lines.append(f"{len(results)} bad inputs: {n_err} ended with a one-line error (exit 2), "
                 f"{sum(1 for r in results if r.exit == 0)} handled (skipped/dropped and counted), "
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
