"""The training strategy (one process here; DDP and FSDP in tests/test_distributed.py) and the
checkpoint helpers of `neat.training.checkpoint`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from neat.training.checkpoint import fingerprint, load_checkpoint, save_checkpoint, state_dir_for, trainable_state
from neat.training.strategy import SingleProcess, strategy_for
from tests.test_train import make_params


def test_one_process_gets_the_single_process_strategy_whose_collectives_are_the_identity(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    model = torch.nn.Linear(3, 1)
    strategy = strategy_for(model, "fsdp")  # train.parallel means nothing without a process group
    assert isinstance(strategy, SingleProcess) and strategy.name == "single" and strategy.is_main
    assert strategy.wrap(model) is model and strategy.full_policy(lambda: None) is model
    t = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert strategy.all_sum(t) is t and strategy.main_says(True) and not strategy.main_says(False)
    assert strategy.shard(["a", "b"]) == (["a", "b"], False)


def test_single_process_checkpoint_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    def fresh():
        model = torch.nn.Linear(3, 1)
        model.bias.requires_grad_(False)  # only trainable weights are checkpointed
        optimizer = torch.optim.AdamW([model.weight], lr=0.1)
        return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1))

    torch.manual_seed(0)
    model, optimizer, scheduler = fresh()
    strategy = SingleProcess()
    strategy.wrap(model)
    model(torch.randn(4, 3)).sum().backward()
    strategy.optimizer_step(optimizer, scheduler)
    weights, optimizer_state = strategy.training_state(optimizer)
    assert weights.keys() == {"weight"}
    save_checkpoint(tmp_path / "state", weights, optimizer_state, scheduler, {"step": 1})
    after_save = torch.rand(2)

    other, other_optimizer, other_scheduler = fresh()
    restored = SingleProcess()
    restored.wrap(other)
    info, weights, optimizer_state = load_checkpoint(tmp_path / "state", other_scheduler)
    restored.load_training_state(other_optimizer, weights, optimizer_state)
    assert info["step"] == 1
    assert torch.equal(other.weight, model.weight)
    assert other_scheduler.get_last_lr() == scheduler.get_last_lr()
    assert other_optimizer.state_dict()["state"][0]["exp_avg"].equal(optimizer.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(torch.rand(2), after_save)  # the RNG continues where the checkpoint left it


def test_the_checkpoint_fingerprint_and_place_keep_their_former_values(tmp_path, monkeypatch):
    """Unchanged by the move to `neat.io`: a checkpoint written before the move still resumes."""
    monkeypatch.setattr("neat.models.native_bf16", lambda device: False)  # float32 throughout, as before
    params = make_params(tmp_path)
    scored = tmp_path / "candidates.parquet"
    scored.write_bytes(b"rows")
    keys = {k: getattr(params, k).model_dump(mode="json") for k in ("policy", "expand", "train", "data")}
    keys["expand"].pop("negative_opening")  # (added later; unset, it is left out, so these checkpoints resume)
    keys["expand"].pop("demo_scope")  # (likewise, at its default)
    keys["train"].pop("benign_refusals"), keys["train"].pop("benign_refusal_text")  # (likewise)
    keys["seed"] = params.seed
    keys["generation"] = params.generation.model_dump(mode="json")  # the `lean` engine samples the rounds
    assert params.generation.engine != "hf"
    former = hashlib.sha256(json.dumps(keys, sort_keys=True).encode())
    assert fingerprint(params, tmp_path / "missing.parquet") == former.hexdigest()[:16]
    former.update(b"rows")
    assert fingerprint(params, scored) == former.hexdigest()[:16]
    out = tmp_path.joinpath("out").resolve()
    key = hashlib.sha256(str(out).encode()).hexdigest()[:8]
    assert state_dir_for(params) == Path(params.paths.checkpoints) / f"out-{key}" / "train"


def test_the_checkpoint_fingerprint_follows_the_arithmetic_auto_resolves_to(tmp_path, monkeypatch):
    """A project copied from a CPU with native bf16 to one without must not resume its bf16 rounds' samples."""
    params = make_params(tmp_path)
    params.generation.cpu_dtype, params.train.bf16_autocast = "auto", "auto"
    scored = tmp_path / "missing.parquet"
    monkeypatch.setattr("neat.models.native_bf16", lambda device: False)
    float32 = fingerprint(params, scored)
    monkeypatch.setattr("neat.models.native_bf16", lambda device: True)
    bf16 = fingerprint(params, scored)
    assert bf16 != float32  # the same words, another arithmetic


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_several_processes_get_the_strategy_train_parallel_names(monkeypatch, name):
    from neat.distributed import Group
    from neat.training import strategy as strategy_module

    monkeypatch.setattr("neat.distributed.init_from_env", lambda device=None: Group(1, 2, torch.device("cpu")))
    strategy = strategy_module.strategy_for(torch.nn.Linear(2, 1), name)
    assert strategy.name == name and (strategy.rank, strategy.world_size, strategy.is_main) == (1, 2, False)
    assert strategy.shard(["a", "b", "c"]) == (["b"], False) and strategy.shard(["a"]) == (["a"], True)
