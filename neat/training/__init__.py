"""The policy-training library behind the `train` stage (`neat/train.py`).

- `groups`: scored candidate rows → the prompts with their ranked candidates, and each round's order;
- `objective`: the loss of one micro-batch (`step_loss`) and the log-probs it is built on;
- `strategy`: one process, DDP or FSDP behind one interface (wrap, sync, reduce, gather, save);
- `checkpoint`: where the resumable state lives, what it was trained from, writing and reading it;
- `records`: the training log (`log.csv`) and the online curve's summary;
- `trainer`: the `Trainer` (optimizer steps, rounds, checkpoints, resume) and the trainable policy.
"""
