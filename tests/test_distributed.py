"""Two CPU processes under `accelerate launch` (DDP, gloo) train like one process on the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from neat.expand import select_prompts
from neat.train import Trainer, load_trainable_policy
from tests.conftest import ROOT
from tests.test_train import make_params, synthetic_rows

# 7 prompts, 3 per step: the steps' shards are (2, 1), (2, 1) and (1, none), so the second process
# also runs a step in which it has no prompt of its own.
N_PROMPTS, BATCH = 7, 3

WORKER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {root!r})
    import torch
    from safetensors.torch import save_file
    from neat.expand import select_prompts
    from neat.train import Trainer, load_trainable_policy
    from tests.test_train import make_params, synthetic_rows

    out = sys.argv[1]
    params = make_params(__import__("pathlib").Path(out), batch_size={batch}, max_response_tokens=16)
    pairs, rows = synthetic_rows({n})
    model, tokenizer = load_trainable_policy(params)
    trainer = Trainer(params, model, tokenizer, out_dir=params.out("train"), progress=False)
    assert trainer.dist is not None and trainer.dist.world_size == 2
    trainer.run(rows, select_prompts(pairs, {n}), pairs, fingerprint_="ddp")
    if trainer.is_main:
        save_file({{k: p.detach().contiguous() for k, p in model.named_parameters()}}, out + "/weights.safetensors")
        json.dump(trainer.log, open(out + "/log.json", "w"))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_two_cpu_processes_match_one(tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("accelerate CLI not installed")
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(root=str(ROOT), batch=BATCH, n=N_PROMPTS))
    out = tmp_path / "ddp"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(worker), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # the same global batch in this single process
    params = make_params(tmp_path / "single", batch_size=BATCH, max_response_tokens=16)
    pairs, rows = synthetic_rows(N_PROMPTS)
    model, tokenizer = load_trainable_policy(params)
    trainer = Trainer(params, model, tokenizer, out_dir=params.out("train"), progress=False)
    assert trainer.dist is None
    trainer.run(rows, select_prompts(pairs, N_PROMPTS), pairs, fingerprint_="ddp")

    ddp_log = json.loads((out / "log.json").read_text())
    assert len(ddp_log) == len(trainer.log) == 3
    for got, want in zip(ddp_log, trainer.log):
        for key in ("loss", "rank_loss", "sft_loss", "grad_norm", "logp_chosen", "logp_negative"):
            assert abs(got[key] - want[key]) < 1e-5 * max(1.0, abs(want[key])), (key, got[key], want[key])
    ddp_weights = load_file(str(out / "weights.safetensors"))
    single = {k: p.detach() for k, p in model.named_parameters()}
    assert ddp_weights.keys() == single.keys()
    initial, _ = load_trainable_policy(params)
    moved = max((p.detach() - single[k]).abs().max().item() for k, p in initial.named_parameters())
    assert moved > 1e-4  # training did change the weights
    for name, want in single.items():
        torch.testing.assert_close(ddp_weights[name], want, atol=1e-6, rtol=1e-4, msg=name)
    # the main process alone wrote the checkpoint and the log
    assert (out / "out" / "train" / "state" / "trainable.safetensors").exists()
