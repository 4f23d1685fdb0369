"""The lean CPU decode loop against transformers' generate: same greedy outputs, same sampling distribution."""

from __future__ import annotations

import pytest
import torch

from neat import generation
from neat.generation import generate, lean_decode
from tests.conftest import ROOT

CACHE = str(ROOT / ".cache" / "neat")
QUESTIONS = ["Hi", "How do I bake bread at home without yeast?", "Tell me a joke about cats.",
             "What is the capital of France, and why is it famous? Please be brief.", "Why?",
             "Explain photosynthesis to a child in two sentences."]


@pytest.fixture(scope="module")
def tiny():
    from neat.encoding import render_prompt
    from neat.models import load_policy

    model, tok = load_policy("builtin:tiny-random", cache_dir=CACHE, device="cpu", seed=0)
    # its init answers "\n" forever; larger random weights make greedy outputs depend on the prompt
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3, generator=gen)
    prompts = [render_prompt(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]
    return model, tok, prompts


def _as_tuples(gens):
    return [[(g.text, g.n_tokens, g.finished, g.flags) for g in gs] for gs in gens]


def _left_padded(tok, prompts):
    enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(map(len, enc))
    input_ids = torch.full((len(enc), width), tok.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(enc), width), dtype=torch.long)
    for row, ids in enumerate(enc):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        attention[row, width - len(ids):] = 1
    return input_ids, attention


def test_greedy_identical_to_hf(tiny):
    model, tok, prompts = tiny
    kw = dict(max_new_tokens=24, batch_size=4, min_tokens=4)  # batches of mixed lengths: left padding matters
    assert _as_tuples(generate(model, tok, prompts, engine="lean", **kw)) == \
        _as_tuples(generate(model, tok, prompts, engine="hf", **kw))


def test_greedy_identical_with_early_stops(tiny):
    """Rows stopping at different steps (the lean loop drops them from the batch) still match HF exactly."""
    model, tok, prompts = tiny
    input_ids, attention = _left_padded(tok, prompts)
    with torch.no_grad():
        first = generation._hf_batch(model, input_ids, attention, max_new_tokens=12, temperature=0.0, top_p=1.0,
                                     k=1, pad_id=tok.pad_token_id, stop={tok.eos_token_id})
    # make tokens three responses produce mid-way stop ids, so rows finish at different steps
    extra = [first[0][3], first[1][6], first[2][9]]
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [saved, *extra]
    try:
        hf = generate(model, tok, prompts, max_new_tokens=12, batch_size=6, engine="hf")
        lean = generate(model, tok, prompts, max_new_tokens=12, batch_size=6, engine="lean")
    finally:
        model.generation_config.eos_token_id = saved
    assert any(g[0].finished for g in hf) and len({g[0].n_tokens for g in hf}) > 1
    assert _as_tuples(lean) == _as_tuples(hf)


def test_sampling_reproducible_from_seed(tiny):
    model, tok, prompts = tiny
    kw = dict(max_new_tokens=16, temperature=0.9, top_p=0.95, num_return_sequences=2, batch_size=4, engine="lean")
    a = generate(model, tok, prompts, seed=3, **kw)
    assert _as_tuples(a) == _as_tuples(generate(model, tok, prompts, seed=3, **kw))
    assert _as_tuples(a) != _as_tuples(generate(model, tok, prompts, seed=4, **kw))
    assert all(len(gs) == 2 for gs in a)


def warpers(temperature: float, top_p: float) -> list:
    """The reference: the logits warpers HF's `generate` builds for do_sample with this temperature and
    top_p (top_k off)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    out = []
    if temperature != 1.0:
        out.append(TemperatureLogitsWarper(temperature))
    if top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    return out


def _hf_samples_to_force(model, tok, input_ids, attention, temperature, top_p, k, steps):
    """HF's samples (seeded) with their processed scores, and a `choose` that replays them while
    recording the lean loop's processed logits in `seen`."""
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=steps, do_sample=True,
                             temperature=temperature, top_p=top_p, top_k=None, num_return_sequences=k,
                             pad_token_id=tok.pad_token_id, eos_token_id=None, output_scores=True,
                             return_dict_in_generate=True)
    forced = out.sequences[:, input_ids.shape[1]:]
    procs, seen = warpers(temperature, top_p), []

    def choose(logits, step):
        for proc in procs:
            logits = proc(None, logits)
        seen.append(logits)
        return forced[:, step]

    return out, forced, seen, choose


def _assert_same_distributions(seen, scores):
    for ours, theirs in zip(seen, scores):
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs))  # the same top-p nucleus
        finite = ~torch.isinf(theirs)
        torch.testing.assert_close(torch.log_softmax(ours, -1)[finite], torch.log_softmax(theirs, -1)[finite],
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature,top_p", [(0.9, 0.95), (0.7, 0.5), (1.0, 1.0)])
def test_sampling_distribution_matches_hf(tiny, temperature, top_p):
    """Teacher-forced on HF's own samples, the lean loop (one shared prefill, cache repeated k times)
    sees the same processed next-token distribution as HF's generate at every position."""
    model, tok, prompts = tiny
    input_ids, attention = _left_padded(tok, prompts[:3])
    k, steps = 2, 10
    out, forced, seen, choose = _hf_samples_to_force(model, tok, input_ids, attention, temperature, top_p, k, steps)
    with torch.no_grad():
        tokens = lean_decode(model, input_ids, attention, max_new_tokens=steps, k=k, stop=set(), choose=choose)
    assert tokens == forced.tolist()
    assert len(seen) == len(out.scores) == steps
    _assert_same_distributions(seen, out.scores)


@pytest.mark.parametrize("temperature,top_p", [(0.9, 0.95), (0.7, 0.5), (1.3, 0.99)])
def test_nucleus_keeps_hf_top_p_tokens_and_probabilities(temperature, top_p):
    """`nucleus` (top candidates, whole-vocabulary sort only where needed) keeps the tokens HF's
    temperature + top-p warpers keep, with the same renormalised probabilities: on peaked rows (nucleus
    among the candidates), flat rows (nucleus wider than them: the sorting fallback) and ties."""
    gen = torch.Generator().manual_seed(0)
    vocab = 3000
    peaked = torch.randn(40, vocab, generator=gen) * 6
    flat = torch.randn(40, vocab, generator=gen) * 0.01
    medium = torch.full((4, vocab), -30.0)  # a nucleus of ~100-500 tokens: the top-1024 pass
    medium[:, :500] = torch.linspace(0, -1, 500)
    ties = torch.full((4, vocab), -30.0)  # tied top tokens (a cut inside a tie is arbitrary in both)
    ties[:, 7:12] = 2.0
    mixed = torch.cat([peaked[:3], flat[:3], medium[:2]])
    for logits in (peaked, flat, ties, medium, mixed):
        processed = logits.clone()
        for proc in warpers(temperature, top_p):
            processed = proc(None, processed)
        expected = torch.softmax(processed, -1)
        ours = torch.zeros_like(logits)
        for rows, ids, weights in generation.nucleus(logits, temperature, top_p):
            ours[rows] = torch.zeros_like(logits[rows]).scatter(1, ids, weights)
        ours = ours / ours.sum(-1, keepdim=True)
        assert torch.equal(ours > 0, torch.isfinite(processed))
        torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)
    widths = {ids.shape[1] for _, ids, _ in generation.nucleus(mixed, temperature, top_p)}
    assert widths == {64, 1024, vocab}  # peaked rows from the top 64, medium from the top 1024, flat sorted


def test_nucleus_sampler_draws_from_the_nucleus():
    """The lean loop's sampler: draws only nucleus tokens, at their probabilities (10 000 draws)."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    choose = generation._samplers(1.0, 0.9)  # nucleus: the first three tokens (0.5 + 0.3 < 0.9)
    torch.manual_seed(0)
    draws = choose(logits.repeat(10_000, 1), 0)
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    assert freq[3] == 0
    torch.testing.assert_close(freq[:3], torch.tensor([0.5, 0.3, 0.15]) / 0.95, atol=0.02, rtol=0)


def test_greedy_identical_to_hf_with_token_budget(tiny):
    """Lean batches sized by a token budget (here: all prompts in one batch, or one prompt per batch)
    give HF's greedy outputs at batch_size 4."""
    model, tok, prompts = tiny
    hf = generate(model, tok, prompts, max_new_tokens=16, batch_size=4, engine="hf")
    for budget in (10_000, 1):
        assert _as_tuples(generate(model, tok, prompts, max_new_tokens=16, batch_size=4, engine="lean",
                                   batch_tokens=budget)) == _as_tuples(hf)


def test_token_budget_batches():
    lengths = [10, 10, 20, 30, 100]
    batches = generation._batches([0, 1, 2, 3, 4], lengths, batch_size=2, batch_tokens=100, k=1, max_new_tokens=10)
    assert batches == [[0, 1, 2], [3], [4]]  # 3 x (20 + 10) fits, 4 x (30 + 10) does not; too long still runs
    assert generation._batches([0, 1, 2], lengths, batch_size=2, batch_tokens=0, k=1, max_new_tokens=10) == [[0, 1], [2]]
    assert generation._batches([0, 1], lengths, batch_size=9, batch_tokens=40, k=2, max_new_tokens=10) == [[0], [1]]


def test_greedy_identical_to_hf_when_batches_decode_together(tiny, monkeypatch):
    """Prefill batches of one prompt each (different lengths) or of three (with a shared prefix), their caches
    merged and decoded as one batch: HF's greedy outputs at batch_size 4, and every batch was merged."""
    model, tok, prompts = tiny
    merged = []
    real = generation.merge
    monkeypatch.setattr(generation, "merge", lambda states, **kw: merged.append(len(states)) or real(states, **kw))
    hf = generate(model, tok, prompts, max_new_tokens=16, batch_size=4, engine="hf")
    for budget, batches in ((1, 6), (3 * (max(len(tok(p)["input_ids"]) for p in prompts) + 16), 2)):
        merged.clear()
        lean = generate(model, tok, prompts, max_new_tokens=16, batch_size=4, engine="lean", batch_tokens=budget,
                        decode_tokens=100_000)
        assert merged == [batches] and _as_tuples(lean) == _as_tuples(hf)


@pytest.mark.parametrize("temperature,top_p", [(0.9, 0.95), (1.0, 1.0)])
def test_merged_prefills_distribution_matches_hf(tiny, temperature, top_p):
    """Two prefilled batches (two prompts with their shared start as `prefix`, then a longer prompt alone)
    merged into one: teacher-forced on HF's samples of the three prompts left-padded together, every
    position's processed log-probs equal HF's, k samples per prompt."""
    model, tok, prompts = tiny
    chosen = [prompts[4], prompts[1], prompts[3]]  # "Why?" and two longer ones: the merge left-pads the first
    enc = [tok(p, add_special_tokens=False)["input_ids"] for p in chosen]
    input_ids, attention = _left_padded(tok, chosen)
    k, steps = 2, 10
    out, forced, seen, choose = _hf_samples_to_force(model, tok, input_ids, attention, temperature, top_p, k, steps)
    shared = generation.shared_prefix_length(enc[:2])
    assert shared >= generation.MIN_SHARED_PREFIX
    with torch.no_grad():
        rest_ids, rest_mask = generation._left_pad([e[shared:] for e in enc[:2]], tok.pad_token_id)
        first = generation.prefill(model, rest_ids, rest_mask, k=k, reserve=steps, prefix=torch.tensor(enc[0][:shared]))
        ids, mask = generation._left_pad(enc[2:], tok.pad_token_id)
        second = generation.prefill(model, ids, mask, k=k, reserve=steps)
        assert first.attention.shape[1] < second.attention.shape[1]
        state = generation.merge([first, second], reserve=steps)
        tokens = generation.decode(model, state, max_new_tokens=steps, stop=set(), choose=choose)
    assert tokens == forced.tolist()
    _assert_same_distributions(seen, out.scores)


def test_decode_groups():
    lengths = [10, 10, 20, 30, 100]
    groups = generation._groups([[0, 1], [2], [3], [4]], lengths, k=2, max_new_tokens=10, decode_tokens=240)
    # 2 prompts x 2 x (10 + 10) = 80, +[2]: 3 x 2 x 30 = 180 fits, +[3]: 4 x 2 x 40 = 320 does not
    assert groups == [[[0, 1], [2]], [[3]], [[4]]]
    assert generation._groups([[0], [1]], lengths, k=1, max_new_tokens=10, decode_tokens=0) == [[[0]], [[1]]]


def test_shared_prefix_length():
    assert generation.shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert generation.shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # each row keeps a token of its own
    assert generation.shared_prefix_length([[7, 2], [1, 2]]) == 0


@pytest.mark.parametrize("temperature,top_p", [(0.9, 0.95), (1.0, 1.0)])
def test_shared_prefix_distribution_matches_hf(tiny, temperature, top_p):
    """With the prompts' common start prefilled once (`prefix`), teacher-forced on HF's samples of the
    whole left-padded prompts, every position's processed log-probs equal HF's."""
    model, tok, prompts = tiny
    enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts[:3]]
    shared = generation.shared_prefix_length(enc)
    assert shared >= generation.MIN_SHARED_PREFIX  # the chat template's system turn
    input_ids, attention = _left_padded(tok, prompts[:3])
    k, steps = 2, 10
    out, forced, seen, choose = _hf_samples_to_force(model, tok, input_ids, attention, temperature, top_p, k, steps)
    rest_ids, rest_mask = generation._left_pad([e[shared:] for e in enc], tok.pad_token_id)
    with torch.no_grad():
        tokens = lean_decode(model, rest_ids, rest_mask, max_new_tokens=steps, k=k, stop=set(), choose=choose,
                             prefix=torch.tensor(enc[0][:shared]))
    assert tokens == forced.tolist()
    _assert_same_distributions(seen, out.scores)


def test_engine_switch(tiny, monkeypatch):
    model, tok, prompts = tiny
    assert generation.resolve_engine(model) == "lean"  # the CPU default
    calls = []
    real = generation._hf_batch
    monkeypatch.setattr(generation, "_hf_batch", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    generation.use_engine("hf")
    try:
        generate(model, tok, prompts[:2], max_new_tokens=2)
    finally:
        generation.use_engine("lean")
    assert calls
    with pytest.raises(ValueError):
        generation.use_engine("vllm")


def test_generation_copy_leaves_the_training_model_alone(tiny):
    """A bf16 copy for generating: LoRA merged, the trained model keeps its dtype, adapters and mode."""
    from peft import LoraConfig, get_peft_model

    model, tok, prompts = tiny
    assert generation.generation_copy(model, torch.float32) is model  # same dtype: no copy
    peft = get_peft_model(__import__("copy").deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a non-zero adapter, so merging matters
    peft.train()
    clone = generation.generation_copy(peft, torch.bfloat16)
    assert not hasattr(clone, "peft_config") and not clone.training
    assert {p.dtype for p in clone.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in peft.parameters()} == {torch.float32} and peft.training and hasattr(peft, "peft_config")
    ids = torch.tensor([tok(prompts[1], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        want, got, base = (torch.softmax(m(input_ids=ids).logits.float(), -1) for m in (peft, clone, model))

    def tv(p, q):  # the largest total-variation distance over positions
        return float(0.5 * (p - q).abs().sum(-1).max())

    # the copy follows the adapted model (merged), within bf16 rounding; not the base
    assert tv(got, want) < 0.1 and tv(base, want) > 3 * tv(got, want), (tv(got, want), tv(base, want))


def test_merge_lora_generates_float32_with_a_merged_copy_of_the_adapters(tiny):
    """merge_lora: a float32 LoRA policy generates with a kept copy whose adapters are merged (what
    `merge_and_unload` gives), refreshed after a training step; without it, with the adapter model itself."""
    from peft import LoraConfig, get_peft_model

    model, tok, prompts = tiny
    peft = get_peft_model(__import__("copy").deepcopy(model),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    assert generation.generation_copy(peft, torch.float32) is peft
    copies = []
    for _ in range(2):
        with torch.no_grad():  # a training step moves the adapters
            for name, p in peft.named_parameters():
                if "lora_" in name:
                    p.add_(torch.randn_like(p) * 0.3)
        clone = generation.generation_copy(peft, torch.float32, merge_lora=True)
        copies.append(clone)
        assert not hasattr(clone, "peft_config") and {p.dtype for p in clone.parameters()} == {torch.float32}
        merged = __import__("copy").deepcopy(peft).merge_and_unload()
        assert all(torch.equal(clone.state_dict()[k], v) for k, v in merged.state_dict().items())
        kw = dict(max_new_tokens=8, engine="hf", cpu_dtype="float32")
        ours = [g[0].text for g in generate(peft, tok, prompts, merge_lora=True, **kw)]
        assert ours == [g[0].text for g in generate(merged, tok, prompts, **kw)]
    assert copies[0] is copies[1] and hasattr(peft, "peft_config")  # one kept copy; the policy keeps its adapters
    for merge in (False, True):  # generate makes (and keeps) the copy only when asked
        other = get_peft_model(__import__("copy").deepcopy(model), LoraConfig(r=4, target_modules=["q_proj"]))
        generate(other, tok, prompts[:1], max_new_tokens=2, cpu_dtype="float32", merge_lora=merge)
        assert (other in generation._copies) is merge


def test_cpu_dtype_auto_follows_native_bf16(tiny, monkeypatch):
    import neat.models

    model, tok, prompts = tiny
    for native, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(neat.models, "native_bf16", lambda device, native=native: native)
        assert generation.resolve_cpu_dtype(model, "auto") == want
    assert generation.resolve_cpu_dtype(model, "bfloat16") == torch.bfloat16
    assert generation.resolve_cpu_dtype(model, "float32") == torch.float32
    assert generation.resolve_cpu_dtype(model) == torch.float32  # no stage set it: the exact path


def test_bf16_generation_keeps_the_distribution(tiny):
    """Teacher-forced on the float32 path's own greedy tokens, the bf16 copy's next-token distributions
    stay close to float32's at every position (what `generation.cpu_dtype: bfloat16` trades for speed)."""
    model, tok, prompts = tiny
    fp32 = generate(model, tok, prompts, max_new_tokens=12, batch_size=3, cpu_dtype="float32")
    bf16 = generate(model, tok, prompts, max_new_tokens=12, batch_size=3, cpu_dtype="bfloat16")
    assert [len(g) for g in bf16] == [1] * len(prompts) and model.dtype == torch.float32
    clone = generation.generation_copy(model, torch.bfloat16)
    tv = []  # total variation distance per position
    for prompt, gens in zip(prompts, fp32):
        ids = torch.tensor([tok(prompt + gens[0].text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            p32 = torch.softmax(model(input_ids=ids).logits.float(), -1)
            p16 = torch.softmax(clone(input_ids=ids).logits.float(), -1)
        tv += (0.5 * (p32 - p16).abs().sum(-1)).flatten().tolist()
    # (the random tiny model's large weights magnify rounding; unrelated distributions are ~0.5-1 apart)
    assert sum(tv) / len(tv) < 0.05 and max(tv) < 0.2, (sum(tv) / len(tv), max(tv))


@pytest.mark.slow
def test_greedy_identical_to_hf_smollm2():
    from neat.data import read_preferences
    from neat.encoding import render_prompt
    from neat.models import load_policy

    model, tok = load_policy("builtin:smollm2-135m-instruct", cache_dir=CACHE, device="cpu", dtype="float32")
    path = ROOT.parent / "shared/data/hh-rlhf/harmless-base-test.first1000.jsonl.gz"
    if path.exists():
        prompts = [render_prompt(tok, p.prompt) for p in read_preferences(path).pairs[:8]]
    else:
        prompts = [render_prompt(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]
    kw = dict(max_new_tokens=40, batch_size=4)
    assert _as_tuples(generate(model, tok, prompts, engine="lean", **kw)) == \
        _as_tuples(generate(model, tok, prompts, engine="hf", **kw))


def test_generation_copy_is_kept_and_refreshed_to_the_current_weights(tiny):
    """The second call returns the same copy object, rewritten in place: bit for bit what a fresh
    deepcopy + merge_and_unload + cast gives from the model's weights as they are now."""
    from peft import LoraConfig, get_peft_model

    model, tok, prompts = tiny
    peft = get_peft_model(__import__("copy").deepcopy(model),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    first = generation.generation_copy(peft, torch.bfloat16)
    before = {k: v.clone() for k, v in first.state_dict().items()}
    with torch.no_grad():  # what a training step does: adapters and a trainable non-LoRA weight move
        for name, p in peft.named_parameters():
            if "lora_" in name or "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    again = generation.generation_copy(peft, torch.bfloat16)
    assert again is first
    fresh = generation._fresh_copy(peft, torch.bfloat16)
    now, want = again.state_dict(), fresh.state_dict()
    assert now.keys() == want.keys()
    assert all(torch.equal(now[k], want[k]) for k in want)
    assert any(not torch.equal(now[k], before[k]) for k in want if "q_proj" in k)
    assert any(not torch.equal(now[k], before[k]) for k in want if "norm" in k)
    out_again = generate(again, tok, prompts[:2], max_new_tokens=6, cpu_dtype="bfloat16")
    out_fresh = generate(fresh, tok, prompts[:2], max_new_tokens=6, cpu_dtype="bfloat16")
    assert [g[0].text for g in out_again] == [g[0].text for g in out_fresh]


def test_generation_copy_falls_back_to_a_fresh_copy_when_weights_cannot_be_mapped(tiny):
    from peft import LoraConfig, get_peft_model

    model, tok, prompts = tiny
    peft = get_peft_model(__import__("copy").deepcopy(model),
                          LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    first = generation.generation_copy(peft, torch.bfloat16)
    second = generation.generation_copy(peft, torch.bfloat16)
    assert second is not first  # lm_head lives under modules_to_save: no in-place refresh
    want = generation._fresh_copy(peft, torch.bfloat16).state_dict()
    assert all(torch.equal(second.state_dict()[k], v) for k, v in want.items())
