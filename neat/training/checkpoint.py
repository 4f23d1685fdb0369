"""The resumable training state: where it lives, what it was trained from, writing and reading it.

A checkpoint (end of round and every `train.checkpoint_every` optimizer steps) is a directory,
replaced atomically: the trainable weights (safetensors), the optimizer and scheduler states
(`torch.load(weights_only=True)`: nothing is unpickled), the RNG states and `state.json` (round,
step, data position, log, fingerprint). The weights and optimizer state are full (unsharded) and
keyed by parameter name; the training strategy gathers them before saving and places them after
loading (`neat.training.strategy`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from neat.errors import TrainingError
from neat.io import atomic_path, fingerprint_of, work_dir_for
from neat.models import arithmetic


def state_dir_for(params) -> Path:
    """Resumable state lives outside the DVC outputs (DVC deletes outputs before it reruns a stage)."""
    return work_dir_for(params.paths.checkpoints, params.paths.out, "train")


def fingerprint(params, scored_path: Path) -> str:
    """What a checkpoint was trained from; resuming under anything else would mix two runs."""
    keys = {k: getattr(params, k).model_dump(mode="json") for k in ("policy", "data")}
    keys["expand"], keys["train"] = params.expand.key(), params.train.key()  # (hashed with sorted keys)
    # (train.parallel counts too: sharded and replicated runs keep the optimizer state in different layouts)
    keys["seed"] = params.seed
    if params.generation.backend != "hf" or params.generation.engine != "hf":  # online rounds sample with another engine
        keys["generation"] = params.generation.model_dump(mode="json")
    resolved = arithmetic(params, "generation", "policy_training")  # `auto` means bf16 on some CPUs only
    if any(resolved[part] != "float32" for part in ("generation", "policy_training")):  # (float32 keeps its keys)
        keys["arithmetic"] = resolved
    return fingerprint_of(keys, *([scored_path] if Path(scored_path).exists() else []))


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(state_dir: Path, weights: dict[str, torch.Tensor], optimizer_state: dict, scheduler,
                    info: dict) -> None:
    """Write the checkpoint: `weights` and `optimizer_state` full (gathered), `info` as `state.json`."""
    with atomic_path(state_dir, is_dir=True) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "trainable.safetensors"))
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {"torch": torch.get_rng_state().tolist(), "python": _jsonable(random.getstate())}
        (tmp / "state.json").write_text(json.dumps(info | {"rng": rng}))


def checkpoint_info(state_dir: Path) -> dict | None:
    """The `state.json` of the checkpoint in `state_dir`; None when there is none."""
    path = Path(state_dir) / "state.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise TrainingError(f"{path}: damaged checkpoint state; remove {state_dir} to start over") from None


def load_checkpoint(state_dir: Path, scheduler) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """Restore the scheduler and the RNG states; returns (info, trainable weights, optimizer state)
    for the strategy to place into the model and optimizer."""
    info = json.loads((state_dir / "state.json").read_text())
    weights = load_file(str(state_dir / "trainable.safetensors"))
    optimizer_state = torch.load(state_dir / "optimizer.pt", weights_only=True)
    scheduler.load_state_dict(torch.load(state_dir / "scheduler.pt", weights_only=True))
    torch.set_rng_state(torch.tensor(info["rng"]["torch"], dtype=torch.uint8))
    random.setstate(_tuplify(info["rng"]["python"]))
    return info, weights, optimizer_state


def _jsonable(obj):
    return [_jsonable(x) for x in obj] if isinstance(obj, (tuple, list)) else obj


def _tuplify(obj):
    return tuple(_tuplify(x) for x in obj) if isinstance(obj, list) else obj
