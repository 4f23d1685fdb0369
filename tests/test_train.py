"""Training on the tiny model: the loss moves log-probs the right way, and resume is exact."""

from __future__ import annotations

import pytest
import torch

from neat.data import read_preferences
from neat.steering import select_prompts
from neat.losses import LOSSES
from neat.encoding import collate
from neat.training.groups import groups_from_scored
from neat.training.objective import step_loss
from neat.training.trainer import Trainer, load_trainable_policy
from tests.conftest import ROOT, make_test_params


def make_params(tmp_path, **train):
    return make_test_params({
        "seed": 0,
        "paths": {"out": str(tmp_path / "out")},
        "policy": {"model": "builtin:tiny-random", "device": "cpu", "lora": {"enabled": False}},
        "data": {"max_train_prompts": 6},
        "expand": {"k_pos": 1, "k_neg": 1, "max_new_tokens": 6, "n_demos": 1},
        "train": {"rounds": 1, "batch_size": 2, "lr": 1e-3, "max_response_tokens": 24, "max_prompt_tokens": 96},
    }, train=train)


def synthetic_rows(n_prompts=6):
    """Scored rows: chosen is best, a 'negative' sample worst, rejected in between."""
    pairs = read_preferences(ROOT / "data/demo/hh_demo.jsonl").pairs[:n_prompts]
    rows = []
    for p in pairs:
        for origin, text, reward in [("chosen", p.chosen, 1.0), ("rejected", p.rejected, 0.0),
                                     ("negative", "Whatever, do what you want, idiot.", -1.0)]:
            rows.append({"prompt_id": p.prompt_id, "prompt": p.prompt, "origin": origin, "response": text,
                         "reward": reward, "rank": {1.0: 0, 0.0: 1, -1.0: 2}[reward]})
    return pairs, rows


def fake_scorer(rows):
    """Deterministic stand-in for a reward model: longer responses score higher."""
    out = []
    for row in rows:
        out.append(dict(row, reward=float(len(row["response"]) % 17), rank=0 if not row.get("degenerate") else None))
    return out


def mean_gap(model, tokenizer, rows, cfg):
    groups = groups_from_scored(rows)
    batch = collate(tokenizer, groups, cfg.max_prompt_tokens, cfg.max_response_tokens, tokenizer.pad_token_id)
    with torch.no_grad():
        _, stats = step_loss(model, batch, cfg, LOSSES[cfg.loss])
    return stats["logp_chosen"] - stats["logp_negative"]


def test_training_prefers_top_ranked_over_negative_samples(tmp_path):
    params = make_params(tmp_path, lr=3e-3, sft_weight=0.1, epochs_per_round=4)
    pairs, rows = synthetic_rows()
    model, tokenizer = load_trainable_policy(params)
    before = mean_gap(model, tokenizer, rows, params.train)
    trainer = Trainer(params, model, tokenizer, out_dir=params.out("train"), progress=False)
    summary = trainer.run(rows, select_prompts(pairs, 6), pairs, fingerprint_="x")
    after = mean_gap(model, tokenizer, rows, params.train)
    assert summary["steps"] == 12
    assert after > before + 0.5, (before, after)
    log = (params.out("train") / "log.csv").read_text().splitlines()
    assert log[0].startswith("round,step,loss,rank_loss,sft_loss,lr") and len(log) == 13


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("lora", [False, True])
def test_resume_gives_identical_weights(tmp_path, lora):
    pairs, rows = synthetic_rows()
    overrides = {"rounds": 2, "checkpoint_every": 1}

    def run(out, stop=None, resume=False):
        params = make_params(out, **overrides)
        params.policy.lora.enabled = lora
        model, tokenizer = load_trainable_policy(params)
        trainer = Trainer(params, model, tokenizer, out_dir=params.out("train"), scorer=fake_scorer, progress=False)
        summary = trainer.run(rows, select_prompts(pairs, 6), pairs, fingerprint_="fp", resume=resume,
                              stop_after_steps=stop)
        return summary, model

    straight, reference = run(tmp_path / "a")
    assert straight["steps"] == 6  # 3 steps per round, 2 rounds (round 2 samples from the policy)
    stopped, _ = run(tmp_path / "b", stop=2)
    assert stopped == {"stopped_at_step": 2}
    stopped, _ = run(tmp_path / "b", stop=4, resume=True)  # crosses into round 2
    assert stopped == {"stopped_at_step": 4}
    resumed, model = run(tmp_path / "b", resume=True)
    assert resumed["steps"] == 6
    ref, got = _weights(reference), _weights(model)
    assert ref.keys() == got.keys()
    for name in ref:
        assert torch.equal(ref[name], got[name]), name


def test_resume_ignores_checkpoint_of_other_inputs(tmp_path, caplog):
    pairs, rows = synthetic_rows()
    params = make_params(tmp_path, checkpoint_every=1)
    model, tokenizer = load_trainable_policy(params)
    Trainer(params, model, tokenizer, out_dir=params.out("train"), progress=False).run(
        rows, select_prompts(pairs, 6), pairs, fingerprint_="old", stop_after_steps=1)
    model, tokenizer = load_trainable_policy(params)
    summary = Trainer(params, model, tokenizer, out_dir=params.out("train"), progress=False).run(
        rows, select_prompts(pairs, 6), pairs, fingerprint_="new", resume=True)
    assert summary["steps"] == 3
    assert "starting fresh" in caplog.text


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    from neat.errors import TrainingError

    pairs, rows = synthetic_rows()
    params = make_params(tmp_path, checkpoint_every=1, lr=1e-3)
    model, tokenizer = load_trainable_policy(params)
    trainer = Trainer(params, model, tokenizer, out_dir=params.out("train"), progress=False)
    trainer.run(rows, select_prompts(pairs, 6), pairs, fingerprint_="fp", stop_after_steps=1)
    saved = (params.out("train") / "state" / "trainable.safetensors").read_bytes()
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))
    with pytest.raises(TrainingError, match="non-finite loss .* last good checkpoint is kept"):
        trainer.run(rows, select_prompts(pairs, 6), pairs, fingerprint_="fp", resume=False)
    assert (params.out("train") / "state" / "trainable.safetensors").read_bytes() == saved


def test_gradient_accumulation_equals_one_big_batch_with_uneven_micro_batches(tmp_path):
    """7 prompts: 2 micro-batches of 2 prompts (then 2 + 1) per step must train exactly like batches of 4
    (then 3): every term is averaged over the whole step, not micro-batch by micro-batch."""
    pairs, rows = synthetic_rows(7)
    runs = {}
    for name, batch_size, accum in (("accum", 2, 2), ("big", 4, 1)):
        params = make_params(tmp_path / name, batch_size=batch_size, grad_accum=accum, rounds=1)
        model, tokenizer = load_trainable_policy(params)
        trainer = Trainer(params, model, tokenizer, out_dir=params.out("train"), progress=False)
        trainer.run(rows, select_prompts(pairs, 7), pairs, fingerprint_=name)
        runs[name] = trainer
    a, b = runs["accum"], runs["big"]
    assert len(a.log) == len(b.log) == 2
    for got, want in zip(a.log, b.log):
        for key in ("loss", "rank_loss", "sft_loss", "grad_norm"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), atol=1e-5, rtol=1e-4, msg=name)  # updates are ~1e-3


def _logp_drift(model, tokenizer, rows, cfg):
    """Mean |normalised log-prob of the policy − of the reference (adapters off)| over the candidates."""
    from neat.training.objective import batch_logps, reference_policy

    batch = collate(tokenizer, groups_from_scored(rows), cfg.max_prompt_tokens, cfg.max_response_tokens,
                    tokenizer.pad_token_id)
    with torch.no_grad():
        policy, _, _ = batch_logps(model, batch, cfg.logprob_chunk)
        with reference_policy(model):
            ref, _, _ = batch_logps(model, batch, cfg.logprob_chunk)
    return float((policy - ref)[batch.mask].abs().mean())


def test_anchor_keeps_the_policy_near_the_reference(tmp_path):
    """With LoRA the reference is the base model; a strong anchor leaves the log-probs much closer to it."""
    pairs, rows = synthetic_rows()
    drift, logs = {}, {}
    for weight in (0.0, 500.0):
        params = make_params(tmp_path / str(weight), lr=3e-2, epochs_per_round=3, anchor_weight=weight)
        params.policy.lora.enabled = True
        model, tokenizer = load_trainable_policy(params)
        trainer = Trainer(params, model, tokenizer, out_dir=params.out("train"), progress=False)
        trainer.run(rows, select_prompts(pairs, 6), pairs, fingerprint_="a")
        drift[weight], logs[weight] = _logp_drift(model, tokenizer, rows, params.train), trainer.log
    assert logs[0.0][0]["anchor_loss"] == 0.0  # not computed without a weight
    assert logs[500.0][0]["anchor_loss"] == pytest.approx(0.0, abs=1e-9)  # LoRA starts at the reference
    assert logs[500.0][-1]["anchor_loss"] > 0
    assert drift[0.0] > 0.05 and drift[500.0] < 0.7 * drift[0.0], drift  # Adam: direction, not size


def test_anchor_without_lora_is_refused(tmp_path):
    from neat.errors import TrainingError

    pairs, rows = synthetic_rows()
    params = make_params(tmp_path, anchor_weight=1.0)
    model, tokenizer = load_trainable_policy(params)
    with pytest.raises(TrainingError, match="anchor_weight needs policy.lora.enabled"):
        Trainer(params, model, tokenizer, out_dir=params.out("train"), progress=False).run(
            rows, select_prompts(pairs, 6), pairs, fingerprint_="x")


def test_sft_target_best_generated_skips_dataset_responses():
    from neat.training.objective import sft_mask
    from neat.losses import best_candidate_index

    pairs, rows = synthetic_rows(2)
    rows = rows + [dict(rows[0], origin="positive", response="A sample.", reward=0.5)]
    groups = groups_from_scored(rows)
    from neat.models import load_policy

    _, tokenizer = load_policy("builtin:tiny-random", cache_dir=str(ROOT / ".cache" / "neat"), device="cpu")
    batch = collate(tokenizer, groups, 96, 24, tokenizer.pad_token_id)
    # prompt 0: chosen (1.0) is best overall, the positive sample (0.5) is the best generated one
    assert best_candidate_index(batch.rewards, sft_mask(batch, "best")).tolist()[0] == 0
    assert best_candidate_index(batch.rewards, sft_mask(batch, "best_generated")).tolist()[0] == 3
    # prompt 1 has the 'negative' sample only as generated candidate
    assert batch.origins[1][best_candidate_index(batch.rewards, sft_mask(batch, "best_generated")).tolist()[1]] == "negative"
    # "chosen": the human preference, even where the reward model rates a sample above it
    rigged = batch.rewards.clone()
    rigged[0, 3] = 9.0
    chosen = best_candidate_index(rigged, sft_mask(batch, "chosen")).tolist()
    assert [batch.origins[b][k] for b, k in enumerate(chosen)] == ["chosen", "chosen"]
    assert best_candidate_index(rigged, sft_mask(batch, "best")).tolist()[0] == 3


def test_online_curve_is_recorded_per_round_and_survives_resume(tmp_path):
    """Dev prompts answered before every round and after the last, scored; P(pos > neg) per round."""
    import json

    pairs, rows = synthetic_rows(8)
    groups = select_prompts(pairs, None)
    train_groups, dev = groups[:6], groups[6:8]
    train_rows = [r for r in rows if r["prompt_id"] in {g[0].prompt_id for g in train_groups}]
    train_rows += [dict(r, origin="positive", reward=0.5) for r in train_rows if r["origin"] == "rejected"]

    def run(out, **kw):
        params = make_params(out, rounds=2, checkpoint_every=1)
        model, tokenizer = load_trainable_policy(params)
        trainer = Trainer(params, model, tokenizer, out_dir=params.out("train"), scorer=fake_scorer, progress=False)
        return trainer.run(train_rows, train_groups, pairs, fingerprint_="o", dev_source=dev, **kw), params

    summary, params = run(tmp_path / "a")
    assert len(summary["online_dev_reward"]) == 3 and all(isinstance(v, float) for v in summary["online_dev_reward"])
    online = json.loads((params.out("train") / "online.json").read_text())
    assert [e["round"] for e in online] == [1, 2, 3]
    # round 1's candidates: positive (0.5) beats negative (-1.0) on every prompt
    assert online[0]["p_positive_over_negative"] == 1.0 and online[0]["p_positive_over_negative_ci"] == [1.0, 1.0]
    low, high = online[0]["dev"]["reward_mean_ci"]  # over the dev prompts
    assert low <= online[0]["dev"]["reward_mean"] <= high
    gain = summary["online_dev_reward_gain"]  # after training − before round 1, paired over the two dev prompts
    assert gain["prompts"] == 2 and gain["gain"] == pytest.approx(summary["online_dev_reward"][-1]
                                                                  - summary["online_dev_reward"][0])
    assert gain["ci_low"] <= gain["gain"] <= gain["ci_high"]
    assert summary["online_p_positive_over_negative_ci"][0] == [1.0, 1.0]  # metrics/train.json keeps them too
    assert {a["prompt_id"] for a in online[0]["dev"]["answers"]} == {g[0].prompt_id for g in dev}
    assert online[0]["dev"]["repetition_rate"] is not None
    run(tmp_path / "b", stop_after_steps=4)  # stops inside round 2, after its dev probe
    resumed, _ = run(tmp_path / "b", resume=True)
    assert resumed["online_dev_reward"] == summary["online_dev_reward"]
    assert resumed["online_p_positive_over_negative"] == summary["online_p_positive_over_negative"]


def _row(pid, origin, response, reward, degenerate=False):
    return dict(prompt_id=pid, prompt=[{"role": "user", "content": pid}], origin=origin, response=response,
                reward=reward, rank=None if degenerate else 0, degenerate=degenerate)


def test_degenerate_candidates_rank_last_or_stay_out():
    rows = [_row("a", "chosen", "fine answer", 0.2), _row("a", "negative", "no no no no no no", 5.0, degenerate=True),
            _row("a", "positive", "another answer", 0.7), _row("b", "negative", "", 1.0, degenerate=True)]
    (last,) = groups_from_scored(rows, "last")
    assert last.origins == ["chosen", "positive", "negative"]
    # the reward model liked the loop (5.0); training sees it below the worst real answer
    assert last.rewards == [0.2, 0.7, pytest.approx(-0.8)]
    (kept,) = groups_from_scored(rows, "exclude")
    assert kept.origins == ["chosen", "positive"] and kept.rewards == [0.2, 0.7]


def test_quality_flags_catch_word_loops():
    from neat.generation import quality_flags

    loop = "You're a coward, you're not. You're a coward. You're a coward. You're a coward. You're a coward."
    ids = list(range(40))  # distinct token ids: the token-level test alone would pass it
    assert "repetitive" in quality_flags(ids, loop, True, 2)
    fine = "Keep it in a paper bag at room temperature and freeze the slices you will not eat within two days."
    assert "repetitive" not in quality_flags(ids, fine, True, 2)


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_schedule_warms_up_then_keeps_its_shape_across_a_checkpoint(tmp_path, schedule):
    import math

    from neat.training.checkpoint import load_checkpoint, save_checkpoint, trainable_state
    from neat.training.strategy import SingleProcess
    from neat.training.trainer import make_scheduler

    def fresh():
        model = torch.nn.Linear(2, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        return model, optimizer, make_scheduler(optimizer, schedule, warmup=4, total=12)

    def steps(optimizer, scheduler, n):
        lrs = []
        for _ in range(n):
            lrs.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return lrs

    decay = {"constant": lambda p: 1.0, "linear": lambda p: 1.0 - p,
             "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p))}[schedule]
    model, optimizer, scheduler = fresh()
    lrs = steps(optimizer, scheduler, 6)
    save_checkpoint(tmp_path / "state", trainable_state(model), optimizer.state_dict(), scheduler, {})
    lrs += steps(optimizer, scheduler, 6)
    assert lrs == pytest.approx([0.0, 0.25, 0.5, 0.75] + [decay((s - 4) / 8) for s in range(4, 12)])

    model, optimizer, scheduler = fresh()  # resumed: the schedule continues where the checkpoint left it
    _, weights, optimizer_state = load_checkpoint(tmp_path / "state", scheduler)
    strategy = SingleProcess()
    strategy.wrap(model)
    strategy.load_training_state(optimizer, weights, optimizer_state)
    assert steps(optimizer, scheduler, 6) == pytest.approx(lrs[6:])


def test_rank_weight_scales_only_the_ranking_term(tmp_path):
    pairs, rows = synthetic_rows(2)
    rows = [dict(r, reward=-r["reward"]) for r in rows]  # the insult on top: the model disagrees
    losses = {}
    for weight in (0.0, 1.0, 0.25):
        params = make_params(tmp_path, rank_weight=weight, sft_weight=1.0)
        model, tokenizer = load_trainable_policy(params)
        batch = collate(tokenizer, groups_from_scored(rows), 96, 24, tokenizer.pad_token_id)
        with torch.no_grad():
            loss, stats = step_loss(model, batch, params.train, LOSSES[params.train.loss])
        losses[weight] = (float(loss), stats)
    rank, sft = losses[1.0][1]["rank_loss"], losses[1.0][1]["sft_loss"]
    assert rank > 0  # the untrained model does not already follow the ranking
    assert losses[0.0][0] == pytest.approx(sft, rel=1e-5)
    assert losses[0.25][0] == pytest.approx(0.25 * rank + sft, rel=1e-5)
    assert losses[0.25][1]["loss"] == pytest.approx(0.25 * rank + sft, rel=1e-5)


def test_the_ranking_loss_is_chosen_once_and_step_loss_uses_the_one_given(tmp_path):
    from neat.losses import pro_loss

    params = make_params(tmp_path, loss="pro")
    model, tokenizer = load_trainable_policy(params)
    trainer = Trainer(params, model, tokenizer, out_dir=params.out("train"), progress=False)
    assert trainer.loss_fn is pro_loss
    _, rows = synthetic_rows(2)
    batch = collate(tokenizer, groups_from_scored(rows), 96, 24, tokenizer.pad_token_id)
    calls = []

    def stand_in(logps, rewards, mask):
        calls.append(tuple(logps.shape))
        return logps.sum() * 0 + 0.5

    with torch.no_grad():
        _, stats = step_loss(model, batch, params.train, stand_in)
    assert calls == [(2, 3)] and stats["rank_loss"] == pytest.approx(0.5)


# ---------------------------------------------------------------- DPO


def _dpo_setup(tmp_path, **train):
    params = make_params(tmp_path, loss="dpo", rank_weight=1.0, sft_weight=0.0, **train)
    params.policy.lora.enabled = True
    model, tokenizer = load_trainable_policy(params)
    _, rows = synthetic_rows(2)
    batch = collate(tokenizer, groups_from_scored(rows), 96, 24, tokenizer.pad_token_id)
    return params, model, tokenizer, batch


def test_dpo_step_loss_uses_summed_logps_against_the_adapter_free_reference(tmp_path):
    import math

    from neat.losses import dpo_loss
    from neat.training.objective import batch_logps, reference_policy

    params, model, _, batch = _dpo_setup(tmp_path, dpo_beta=0.5)
    model.eval()
    with torch.no_grad():
        _, stats = step_loss(model, batch, params.train, LOSSES["dpo"])
    assert stats["rank_loss"] == pytest.approx(math.log(2), abs=1e-5)  # fresh LoRA = the reference
    with torch.no_grad():  # move the adapters away from the reference
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
        loss, stats = step_loss(model, batch, params.train, LOSSES["dpo"])
        norm, sums, _ = batch_logps(model, batch, 1024)
        with reference_policy(model):
            ref_norm, ref_sums, _ = batch_logps(model, batch, 1024)
    expected = dpo_loss(sums, batch.rewards, batch.mask, ref_logps=ref_sums, beta=0.5).item()
    normalised = dpo_loss(norm, batch.rewards, batch.mask, ref_logps=ref_norm, beta=0.5).item()
    assert abs(expected - math.log(2)) > 1e-3 and abs(expected - normalised) > 1e-3
    assert stats["rank_loss"] == pytest.approx(expected, rel=1e-4)
    assert float(loss) == pytest.approx(expected, rel=1e-4)  # rank_weight 1, sft_weight 0, no anchor


def test_dpo_training_prefers_the_best_over_the_worst(tmp_path):
    from neat.training.objective import batch_logps

    params, model, tokenizer, batch = _dpo_setup(tmp_path, lr=1e-2, epochs_per_round=3)
    pairs, rows = synthetic_rows(6)

    def gap():  # chosen (best) minus negative (worst), summed log-probs
        with torch.no_grad():
            _, sums, _ = batch_logps(model, batch, 1024)
        return float((sums[:, 0] - sums[:, 2]).mean())

    before = gap()
    trainer = Trainer(params, model, tokenizer, out_dir=params.out("train"), progress=False)
    assert trainer.loss_fn is LOSSES["dpo"]
    trainer.run(rows, select_prompts(pairs, 6), pairs, fingerprint_="d")
    assert gap() > before + 1.0, (before, gap())
    assert trainer.log[-1]["rank_loss"] < trainer.log[0]["rank_loss"]


def test_dpo_without_lora_is_refused(tmp_path):
    from neat.errors import TrainingError

    pairs, rows = synthetic_rows()
    params = make_params(tmp_path, loss="dpo")
    model, tokenizer = load_trainable_policy(params)
    with pytest.raises(TrainingError, match="train.loss: dpo"):
        Trainer(params, model, tokenizer, out_dir=params.out("train"), progress=False).run(
            rows, select_prompts(pairs, 6), pairs, fingerprint_="x")


def test_origin_labels_order_candidates_by_how_they_were_made():
    """train.pair_labels: origin (RLCD): positive above negative whatever the reward model said."""
    from neat.errors import TrainingError

    prompt = [{"role": "user", "content": "q"}]
    rows = [{"prompt_id": "a", "prompt": prompt, "origin": o, "response": f"{o} {i}", "reward": r, "rank": 0}
            for i, (o, r) in enumerate([("positive", -3.0), ("negative", 5.0), ("positive", 0.0)])]
    rows.append({"prompt_id": "a", "prompt": prompt, "origin": "negative", "response": "", "reward": 9.0,
                 "rank": None, "degenerate": True})
    by_reward = groups_from_scored(rows, "last")[0]
    by_origin = groups_from_scored(rows, "last", "origin")[0]
    assert by_reward.rewards == [-3.0, 5.0, 0.0, -4.0]
    assert by_origin.rewards == [1.0, 0.0, 1.0, -1.0]  # the degenerate one still goes last
    assert by_origin.origins == by_reward.origins
    with pytest.raises(TrainingError, match="origin 'unsteered'"):
        groups_from_scored([dict(rows[0], origin="unsteered")], labels="origin")


def test_tier_labels_put_negatives_and_rejected_below_the_rest_in_reward_order():
    """train.pair_labels: tiers: the reward model orders each tier; negative/rejected all rank below."""
    from neat.losses import rrhf_loss

    prompt = [{"role": "user", "content": "q"}]
    made = [("chosen", 0.2), ("positive", -3.0), ("negative", 5.0), ("rejected", 0.1), ("negative", 1.0),
            ("positive", 0.5)]
    rows = [{"prompt_id": "a", "prompt": prompt, "origin": o, "response": f"{o} {i}", "reward": r, "rank": 0}
            for i, (o, r) in enumerate(made)]
    rows.append({"prompt_id": "a", "prompt": prompt, "origin": "probe", "response": "loop loop", "reward": 9.0,
                 "rank": None, "degenerate": True})
    g = groups_from_scored(rows, "last", "tiers")[0]
    # span 8 + 1: the lower tier moves down by 9, the gaps inside each tier stay the reward model's
    assert g.rewards == pytest.approx([0.2, -3.0, -4.0, -8.9, -8.0, 0.5, -9.9])
    upper = [r for r, o in zip(g.rewards, g.origins) if o in ("chosen", "positive")]
    lower = [r for r, o in zip(g.rewards, g.origins) if o in ("negative", "rejected")]
    assert min(upper) > max(lower) and g.rewards[-1] < min(lower)  # the degenerate probe still goes last
    # a policy whose log-probs follow the reward model (which likes the negatives) pays nothing under reward
    # and a ranking loss under tiers
    by_reward = torch.tensor([groups_from_scored(rows[:-1], "last")[0].rewards])
    tiered = torch.tensor([groups_from_scored(rows[:-1], "last", "tiers")[0].rewards])
    mask = torch.ones(1, 6, dtype=torch.bool)
    follows_rm = torch.tensor([[-2.5, -4.0, -1.0, -3.0, -1.5, -2.0]])
    assert rrhf_loss(follows_rm, by_reward, mask).item() == 0.0
    assert rrhf_loss(follows_rm, tiered, mask).item() > 0.5
    follows_tiers = torch.tensor([[-2.5, -2.8, -3.0, -4.0, -3.5, -2.0]])
    assert rrhf_loss(follows_tiers, tiered, mask).item() == 0.0
    with pytest.raises(ValueError, match="labels must be one of reward, origin, tiers, got 'tier'"):
        groups_from_scored(rows, "last", "tier")


def test_sft_target_positive_distils_only_samples_that_beat_rejected():
    """"positive": the best positive-steered sample where it outranks the rejected response; parts add up."""
    import math

    from neat.models import load_policy
    from neat.training.objective import batch_counts, response_token_counts, sft_selection

    pairs, rows = synthetic_rows(2)
    rows = rows + [dict(rows[0], origin="positive", response="A sample.", reward=0.5),
                   dict(rows[0], origin="positive", response="A better sample here.", reward=0.7)]
    groups = groups_from_scored(rows)
    _, tokenizer = load_policy("builtin:tiny-random", cache_dir=str(ROOT / ".cache" / "neat"), device="cpu")
    batch = collate(tokenizer, groups, 96, 24, tokenizer.pad_token_id)
    rewards = batch.rewards.clone()
    rej = [k for k, o in enumerate(batch.origins[0]) if o == "rejected"][0]
    pos = [k for k, o in enumerate(batch.origins[0]) if o == "positive"]
    rewards[0, rej] = 0.6  # between the two positive samples
    sel = sft_selection(batch, rewards, "positive")
    assert sel[0].nonzero().flatten().tolist() == [pos[1]]  # the 0.7 sample: above rejected, best positive
    assert not sel[1].any()  # prompt 1 has no positive sample: nothing to distil
    rewards[0, rej] = 0.9  # now no positive sample beats the rejected response
    assert not sft_selection(batch, rewards, "positive").any()
    both = sft_selection(batch, batch.rewards, "chosen+positive")
    assert [sorted(batch.origins[b][k] for k in both[b].nonzero().flatten().tolist()) for b in (0, 1)] == [
        ["chosen", "positive"], ["chosen"]]
    counts = response_token_counts(batch)
    assert batch_counts(batch, "chosen+positive")[1] == float(counts[both].sum())
    # the SFT term is the token mean over exactly the selected candidates
    from neat.training.objective import step_loss
    from neat.losses import LOSSES
    from neat.config import TrainParams

    model, _ = load_policy("builtin:tiny-random", cache_dir=str(ROOT / ".cache" / "neat"), device="cpu")
    cfg = TrainParams(sft_target="chosen+positive", anchor_weight=0.0, rank_weight=0.0)
    from neat.training.objective import batch_logps

    with torch.no_grad():
        _, sums, n = batch_logps(model, batch, cfg.logprob_chunk)
        _, stats = step_loss(model, batch, cfg, LOSSES[cfg.loss])
    expected = -float(sums[both].sum()) / float(n[both].sum())
    assert math.isclose(stats["sft_loss"], expected, rel_tol=1e-5)


def test_loop_probes_rank_the_policys_degenerate_greedy_answers_last(tmp_path):
    """train.loop_probes: every round, the policy's unsteered greedy answers that are degenerate join the
    candidates as `probe`, ranked below the prompt's other candidates, and training pushes them down."""
    from neat.candidates import read_candidates
    from neat.encoding import fit_turns
    from neat.generation import generate

    pairs, rows = synthetic_rows()
    params = make_params(tmp_path, loop_probes=True, rounds=2, lr=3e-3, epochs_per_round=2)
    params.expand.max_new_tokens = 24  # the repetition check needs >= 16 tokens
    model, tokenizer = load_trainable_policy(params)
    groups_source = select_prompts(pairs, 6)
    texts = [fit_turns(tokenizer, g[0].prompt, params.train.max_prompt_tokens)[0] for g in groups_source]
    greedy = generate(model, tokenizer, texts, max_new_tokens=24, seed=0, min_tokens=params.expand.min_response_tokens)
    looping = {g[0].prompt_id: gen[0].text for g, gen in zip(groups_source, greedy) if gen[0].degenerate}
    assert looping, "the tiny random model's greedy answers should include a loop"

    trainer = Trainer(params, model, tokenizer, out_dir=params.out("train"), scorer=fake_scorer, progress=False)
    trainer.run(rows, groups_source, pairs, fingerprint_="fp")
    round_1 = read_candidates(params.out("train") / "rounds" / "round_1.parquet", ("origin", "degenerate", "reward"))
    probes = {r["prompt_id"]: r["response"] for r in round_1 if r["origin"] == "probe"}
    assert probes == looping
    assert all(r["degenerate"] for r in round_1 if r["origin"] == "probe")
    assert len(round_1) == len(rows) + len(looping)  # the expansion's rows, unchanged, and the probes
    groups = groups_from_scored(round_1, "last")
    for g in groups:
        for origin, reward in zip(g.origins, g.rewards):
            if origin == "probe":
                assert reward < min(w for o, w in zip(g.origins, g.rewards) if o != "probe")
    assert trainer.rounds_log[0]["greedy_loops"] == len(looping)
    assert "greedy_loops" in trainer.rounds_log[1]
    round_2 = read_candidates(params.out("train") / "rounds" / "round_2.parquet", ("origin",))
    assert sum(r["origin"] == "probe" for r in round_2) == trainer.rounds_log[1]["greedy_loops"]


def test_a_probe_ranked_last_loses_log_probability(tmp_path):
    pairs, rows = synthetic_rows()
    loop = "no no no no no no no no no no no no no no no no no no no no"
    probed = rows + [{"prompt_id": p.prompt_id, "prompt": p.prompt, "origin": "probe", "response": loop,
                      "reward": 5.0, "rank": None, "degenerate": True} for p in pairs]
    params = make_params(tmp_path, lr=3e-3, epochs_per_round=4, sft_weight=0.1)
    model, tokenizer = load_trainable_policy(params)

    def probe_logp():
        groups = groups_from_scored(probed, "last")
        batch = collate(tokenizer, groups, 96, 24, tokenizer.pad_token_id)
        with torch.no_grad():
            return step_loss(model, batch, params.train, LOSSES["rrhf"])[1]["logp_probe"]

    before = probe_logp()
    Trainer(params, model, tokenizer, out_dir=params.out("train"), progress=False).run(
        probed, select_prompts(pairs, 6), pairs, fingerprint_="x")
    assert probe_logp() < before - 0.5


def test_steps_per_round_repeats_epoch_permutations_and_cuts_at_the_last_step():
    from types import SimpleNamespace

    from neat.training.groups import round_order

    def batches(epochs, steps, accum=1, n=5):
        cfg = SimpleNamespace(epochs_per_round=epochs, steps_per_round=steps, grad_accum=accum, batch_size=2)
        me = SimpleNamespace(cfg=cfg, params=SimpleNamespace(seed=3))
        return Trainer.round_batches(me, n, 2), Trainer.steps_per_round(me, n)

    plain, n_plain = batches(1, None)
    assert n_plain == 3 and [i for b in plain for i in b] == round_order(5, 3, 2, 1)
    # 7 steps of 2 prompts over 5 prompts: three epoch permutations, cut after the 14th prompt
    seven, n_seven = batches(1, 7)
    assert n_seven == 7 and len(seven) == 7 and all(len(b) == 2 for b in seven)
    assert [i for b in seven for i in b] == round_order(5, 3, 2, 3)[:14]
    assert seven[:2] == plain[:2]  # the first epoch is visited as without the option
    # grad_accum 2: 7 optimizer steps are 14 micro-batches
    accum, n_accum = batches(1, 7, accum=2)
    assert n_accum == 7 and len(accum) == 14
    # fewer steps than the epochs' passes: the round stops there
    short, n_short = batches(2, 2)
    assert n_short == 2 and short == batches(2, None)[0][:2]


REFUSAL = "I'm sorry, but I can't help with that."


def _benign_rows():
    """Prompt `b` is a benign-mix request, `h` is not; both have a refusing sample the reward model liked best."""
    return [_row("b", "chosen", "Pull them by hand after rain.", 0.2), _row("b", "positive", REFUSAL, 0.9),
            _row("b", "negative", "Boil water and pour it over them.", 0.5),
            _row("h", "chosen", "I won't help with that.", 0.4), _row("h", "positive", REFUSAL, 0.9)]


def test_benign_refusals_rank_last_and_the_refusal_text_joins_each_benign_prompt():
    from neat.training.groups import mark_benign_refusals

    b, h = groups_from_scored(mark_benign_refusals(_benign_rows(), {"b"}, "I can't help you with that."))
    # the benign prompt: its refusing sample and the written refusal sit below its worst answer
    assert b.origins == ["chosen", "negative", "positive", "rejected"]
    assert b.responses[2:] == [REFUSAL, "I can't help you with that."]
    assert b.rewards == [0.2, 0.5, pytest.approx(-0.8), pytest.approx(-0.8)]
    # any other prompt keeps the reward model's order, refusals included
    assert h.origins == ["chosen", "positive"] and h.rewards == [0.4, 0.9]
    unmarked = groups_from_scored(mark_benign_refusals(_benign_rows(), {"b"}))
    assert unmarked[0].origins == ["chosen", "negative", "positive"]  # no text: nothing added


def test_a_trainer_with_benign_refusals_last_pushes_down_the_refusal_its_reward_model_ranks_first(tmp_path):
    pairs, rows = synthetic_rows()
    benign = {p.prompt_id for p in pairs}
    # the reward model's favourite on every prompt: a refusal (as HH's RM does)
    rows += [{"prompt_id": p.prompt_id, "prompt": p.prompt, "origin": "positive", "response": REFUSAL,
              "reward": 2.0, "rank": 0} for p in pairs]

    def refusal_logp(model, tokenizer, ids):
        groups = groups_from_scored([r for r in rows if r["prompt_id"] in ids])
        batch = collate(tokenizer, groups, 96, 24, tokenizer.pad_token_id)
        with torch.no_grad():
            return step_loss(model, batch, params.train, LOSSES["rrhf"])[1]["logp_positive"]

    gaps = {}
    for option in ("reward", "last"):
        params = make_params(tmp_path / option, lr=3e-3, epochs_per_round=4, sft_weight=0.1, rank_weight=1.0,
                             benign_refusals=option)
        model, tokenizer = load_trainable_policy(params)
        before = refusal_logp(model, tokenizer, benign)
        trainer = Trainer(params, model, tokenizer, out_dir=params.out("train"), progress=False, answer_only=benign)
        trainer.run(rows, select_prompts(pairs, 6), pairs, fingerprint_=option)
        gaps[option] = refusal_logp(model, tokenizer, benign) - before
        entry = trainer.rounds_log[0]
        if option == "last":  # the round's log counts the policy's samples that refuse a benign request
            assert entry["benign_samples"] == 12 and entry["benign_samples_refused"] == 6
        else:
            assert "benign_samples" not in entry
    # same init, data and steps: ranked first the refusal is learned (+1.6 nats/token here); ranked last it
    # rises only with everything the SFT term lifts (+0.3)
    assert gaps["reward"] > 1.0 and gaps["last"] < gaps["reward"] - 1.0


def test_benign_refusal_text_needs_benign_refusals_last_and_unset_options_leave_keys_alone():
    from neat.config import TrainParams

    with pytest.raises(ValueError, match="benign_refusals: last"):
        TrainParams(benign_refusal_text="I can't help with that.")
    assert "benign_refusals" not in TrainParams().key() and "benign_refusal_text" not in TrainParams().key()
    assert TrainParams(benign_refusals="last").key()["benign_refusals"] == "last"
