"""Two CPU processes under `accelerate launch` (gloo; DDP or FSDP) train like one process on the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from neat.steering import select_prompts
from neat.training.trainer import Trainer, load_trainable_policy
from tests.conftest import ROOT
from tests.project import free_port
from tests.test_train import fake_scorer, make_params, synthetic_rows

# 7 prompts, 3 per step: the steps' shards are (2, 1), (2, 1) and (1, none), so the second process
# also runs a step in which it has no prompt of its own.
N_PROMPTS, BATCH = 7, 3

WORKER = textwrap.dedent(
    """
    import contextlib, json, sys
    sys.path.insert(0, {root!r})
    import torch
    from safetensors.torch import save_file
    from neat.steering import select_prompts
    from neat.training.frozen_weights import FrozenWeightCasts
    from neat.training.trainer import Trainer, load_trainable_policy
    from tests.test_distributed import worker_params
    from tests.test_train import fake_scorer, synthetic_rows

    out, spec = sys.argv[1], json.loads(sys.argv[2])
    params = worker_params(__import__("pathlib").Path(out), spec)
    pairs, rows = synthetic_rows(spec["n"])
    model, tokenizer = load_trainable_policy(params)
    trainer = Trainer(params, model, tokenizer, out_dir=params.out("train"), progress=False, scorer=fake_scorer)
    assert trainer.strategy.world_size == 2 and trainer.strategy.name == spec["parallel"]
    if "casts" in spec:  # bf16 autocast: frozen base weights cast once per step, or by autocast in every forward
        assert isinstance(trainer.frozen_casts, FrozenWeightCasts) and len(trainer.frozen_casts)
        if not spec["casts"]:
            trainer.frozen_casts = contextlib.nullcontext
    if spec.get("nan_on_rank") is not None and trainer.strategy.rank == spec["nan_on_rank"]:
        with torch.no_grad():  # this process alone computes a non-finite loss
            next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))
    summary = trainer.run(rows, select_prompts(pairs, spec["n"]), pairs, fingerprint_="dist",
                          resume=spec.get("resume", False), stop_after_steps=spec.get("stop_after"))
    policy = trainer.full_policy()
    if trainer.is_main:
        save_file({{k: p.detach().contiguous() for k, p in policy.named_parameters()}}, out + "/weights.safetensors")
        json.dump(trainer.log, open(out + "/log.json", "w"))
    """
)


def worker_params(tmp_path, spec: dict):
    """The params of one test run (a single process uses the same)."""
    params = make_params(tmp_path, batch_size=spec.get("batch", BATCH), max_response_tokens=16,
                         rounds=spec.get("rounds", 1), checkpoint_every=spec.get("checkpoint_every", 0),
                         grad_accum=spec.get("accum", 1), parallel=spec["parallel"],
                         bf16_autocast=spec.get("bf16", False))
    # no LoRA dropout: its random masks differ between one process and two
    lora = params.policy.lora.model_copy(update={"enabled": spec.get("lora", False), "dropout": 0.0})
    return params.model_copy(update={"policy": params.policy.model_copy(update={"lora": lora})})


def accelerate_launch(*program: str) -> list[str]:
    """The command running `program` as two CPU processes (gloo) under `accelerate launch`."""
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("accelerate CLI not installed")
    return [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), *program]


def launch(tmp_path, out, spec: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    """The test worker on two CPU processes."""
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(root=str(ROOT)))
    out.mkdir(exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    return subprocess.run(accelerate_launch(str(worker), str(out), json.dumps(spec)), env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def single_process(tmp_path, spec: dict) -> Trainer:
    params = worker_params(tmp_path, spec)
    pairs, rows = synthetic_rows(spec["n"])
    model, tokenizer = load_trainable_policy(params)
    trainer = Trainer(params, model, tokenizer, out_dir=params.out("train"), progress=False, scorer=fake_scorer)
    assert trainer.strategy.name == "single"
    trainer.run(rows, select_prompts(pairs, spec["n"]), pairs, fingerprint_="dist")
    return trainer


# fp32 sums in another order (2 processes, another CPU's kernels) differ in the last bits, and Adam
# amplifies that for weights whose gradient is near zero: g/(sqrt(v)+eps) moves them by up to lr per step
# whatever tiny value g has. So weights are compared by their *update*: the difference between the two
# runs must be a small fraction of how far training moved the tensor. Measured on the tiny model
# (7 prompts, 3 steps, lr 1e-3): additive gradient noise of 1e-7 x max|g| (fp32 rounding) gives at most
# 1.2e-3 of the update, 1e-6 x max|g| gives 8e-3; training without one of the 7 prompts gives 0.78-1.16.
UPDATE_RTOL = 2e-2


def assert_same_update(got: torch.Tensor, want: torch.Tensor, initial: torch.Tensor, name: str) -> None:
    update = (want - initial).norm().item()
    diff = (got - want).norm().item()
    assert diff <= UPDATE_RTOL * update + 1e-6 * got.numel() ** 0.5, (name, diff, update)


def assert_same_training(out, trainer: Trainer, spec: dict, steps: int) -> None:
    dist_log = json.loads((out / "log.json").read_text())
    assert len(dist_log) == len(trainer.log) == steps
    for got, want in zip(dist_log, trainer.log):
        for key in ("loss", "rank_loss", "sft_loss", "grad_norm", "logp_chosen", "logp_negative"):
            assert abs(got[key] - want[key]) < 1e-5 * max(1.0, abs(want[key])), (key, got[key], want[key])
    dist_weights = load_file(str(out / "weights.safetensors"))
    single = {k: p.detach() for k, p in trainer.model.named_parameters()}
    assert dist_weights.keys() == single.keys()
    model, _ = load_trainable_policy(trainer.params)
    initial = {k: p.detach() for k, p in model.named_parameters()}
    moved = max((initial[k] - single[k]).abs().max().item() for k in single)
    assert moved > 1e-4  # training did change the weights
    for name, want in single.items():
        assert_same_update(dist_weights[name], want, initial[name], name)
    # the main process alone wrote the checkpoint and the log; the checkpoint holds the full trainable weights
    state = load_file(str(out / "out" / "train" / "state" / "trainable.safetensors"))
    assert state.keys() == {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    for name, tensor in state.items():
        assert_same_update(tensor, single[name], initial[name], name)


needs_dist = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")


@needs_dist
@pytest.mark.parametrize("parallel,lora,accum", [("ddp", False, 1), ("fsdp", False, 1), ("fsdp", True, 1),
                                                 ("fsdp", False, 2)])
def test_two_cpu_processes_match_one(tmp_path, parallel, lora, accum):
    """accum 2: micro-batches of 3 prompts, two per step ((2, 1) + (2, 1) shards, then (1, none))."""
    spec = {"parallel": parallel, "lora": lora, "n": N_PROMPTS, "accum": accum}
    out = tmp_path / "dist"
    proc = launch(tmp_path, out, spec)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_same_training(out, single_process(tmp_path / "single", spec), spec, steps=3 if accum == 1 else 2)


@needs_dist
def test_ddp_with_frozen_weights_cast_once_trains_bit_for_bit_as_with_autocasts_casts(tmp_path):
    """bf16 autocast, LoRA: under DDP the frozen base weights swapped for bf16 copies during each step give the
    same losses and weights as autocast casting them in every forward (no tolerance: the same bf16 values)."""
    runs = []
    for casts in (True, False):
        spec = {"parallel": "ddp", "lora": True, "n": N_PROMPTS, "bf16": True, "casts": casts}
        out = tmp_path / f"casts-{casts}"
        proc = launch(tmp_path, out, spec)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs.append((json.loads((out / "log.json").read_text()), load_file(str(out / "weights.safetensors"))))
    (log0, weights0), (log1, weights1) = runs
    def steps(log):  # as text, so that a NaN statistic equals itself
        return [json.dumps({k: v for k, v in e.items() if k != "tokens_per_s"}, sort_keys=True) for e in log]

    assert len(log0) == 3 and steps(log0) == steps(log1)
    assert weights0.keys() == weights1.keys()
    for name in weights0:
        assert torch.equal(weights0[name], weights1[name]), name
    assert all(w.dtype == torch.float32 for w in weights0.values())


@needs_dist
def test_fsdp_resumes_and_samples_online_rounds_like_one_process(tmp_path):
    """Killed after 2 steps (checkpointed every step), resumed, then a second round sampled from the
    gathered policy: the same weights as one uninterrupted process."""
    spec = {"parallel": "fsdp", "n": 5, "batch": 2, "rounds": 2, "checkpoint_every": 1}
    out = tmp_path / "dist"
    first = launch(tmp_path, out, spec | {"stop_after": 2})
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert json.loads((out / "out" / "train" / "state" / "state.json").read_text())["step"] == 2
    second = launch(tmp_path, out, spec | {"resume": True})
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert (out / "out" / "train" / "rounds" / "round_2.parquet").exists()
    assert_same_training(out, single_process(tmp_path / "single", spec), spec, steps=6)


@needs_dist
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_non_finite_loss_on_one_process_stops_all_without_hanging(tmp_path, parallel):
    spec = {"parallel": parallel, "n": N_PROMPTS, "nan_on_rank": 1}
    proc = launch(tmp_path, tmp_path / "dist", spec, timeout=240)  # a hang would time out here
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    assert log.count("non-finite loss") >= 2, log[-3000:]  # both processes stopped on it
    assert not (tmp_path / "dist" / "out" / "train" / "state").exists()  # no checkpoint of NaN weights


@needs_dist
def test_neat_train_stage_under_fsdp_saves_the_policy_one_process_would(tmp_path, monkeypatch):
    """`accelerate launch -m neat.cli train -S train.parallel=fsdp` on a tiny project (2 rounds): the
    saved policy equals a single-process `neat train`, and the summary is printed once."""
    from tests.project import make_project, venv_env

    project = make_project(tmp_path / "project", {"train.rounds": 2, "paths.cache": str(ROOT / ".cache" / "neat")})
    env = venv_env({"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})

    def neat(*args):
        proc = subprocess.run(["neat", *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]

    from neat.cli import main

    monkeypatch.chdir(project)
    for stage in ("prepare", "train-rm", "expand", "score"):  # in this process: the inputs both trainings share
        assert main(["--quiet", stage]) == 0, stage
    shutil.copytree(project / "outputs", project / "single")
    neat("train", "-S", "paths.out=single", "-S", "paths.checkpoints=.neat/single")
    proc = subprocess.run(accelerate_launch("-m", "neat.cli", "train", "-S", "train.parallel=fsdp"),
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count('"rounds": 2') == 1  # the main process alone prints the summary
    sharded = load_file(str(project / "outputs" / "policy" / "model.safetensors"))
    single = load_file(str(project / "single" / "policy" / "model.safetensors"))
    assert sharded.keys() == single.keys()
    from neat.config import load_params
    from neat.models import load_policy

    params = load_params(project / "params.yaml")
    base, _ = load_policy(params.policy.model, cache_dir=params.paths.cache, device="cpu", seed=params.seed)
    initial = {k: p.detach() for k, p in base.named_parameters()}
    for name, want in single.items():
        assert_same_update(sharded[name], want, initial[name], name)
    metrics = json.loads((project / "outputs" / "metrics" / "train.json").read_text())
    assert metrics["steps"] == 4 and metrics["rounds"] == 2
