"""The optional vLLM generation backend, on CPU with a fake `vllm` module.

The fake mirrors the vLLM 0.33 API surface the backend uses (`LLM(...)`, `LLM.generate(prompts,
sampling_params, use_tqdm=...)`, `SamplingParams`, `TokensPrompt`, `RequestOutput.outputs[j]` with
`.index`, `.token_ids`, `.finish_reason`; the v1 engine-core shutdown and the parallel-state cleanup
helpers), records what it is given, and answers deterministically from the prompt ids: it echoes
tokens of the prompt, then a stop id, and stops the way vLLM's `check_stop` does (a stop id ends
the response with "stop", `max_tokens` with "length"). The last test runs the real vLLM and is
skipped without it and a CUDA GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import neat.vllm_backend as vb
from neat.config import validate_params
from neat.errors import ModelError
from neat.generation import batch_seed, generate
from tests.conftest import ROOT, former_defaults

CACHE = ROOT / ".cache" / "neat"
TINY = "builtin:tiny-random"
FAKE_VERSION = "0.33.0"


# ---------------------------------------------------------------------- the fake vllm


class FakeSamplingParams:
    def __init__(self, n=1, temperature=1.0, top_p=1.0, top_k=0, seed=None, max_tokens=16, stop_token_ids=None,
                 detokenize=True, skip_special_tokens=True, min_tokens=0):
        if temperature < 1e-5 and n > 1:  # vLLM's _verify_greedy_sampling
            raise ValueError(f"n must be 1 when using greedy sampling, got {n}.")
        self.n, self.temperature, self.top_p, self.top_k, self.seed = n, temperature, top_p, top_k, seed
        self.max_tokens, self.stop_token_ids, self.detokenize = max_tokens, list(stop_token_ids or []), detokenize
        self.skip_special_tokens, self.min_tokens = skip_special_tokens, min_tokens


class FakeCompletion:
    def __init__(self, index, token_ids, finish_reason):
        self.index, self.token_ids, self.finish_reason = index, token_ids, finish_reason
        self.text = ""  # detokenize=False


class FakeRequestOutput:
    def __init__(self, prompt_token_ids, outputs):
        self.prompt_token_ids, self.outputs, self.finished = prompt_token_ids, outputs, True


def fake_response(prompt_ids: list[int], seed: int | None, params: FakeSamplingParams) -> tuple[list[int], str]:
    """Deterministic in (prompt ids, seed): some prompt tokens, then a stop id; cut as vLLM's check_stop."""
    offset = 0 if seed is None else seed % 5
    length = (sum(prompt_ids) + 3 * offset) % 11
    raw = [prompt_ids[(7 * k + offset) % len(prompt_ids)] for k in range(length)] + [min(params.stop_token_ids)]
    out: list[int] = []
    for token in raw:
        out.append(token)
        if token in params.stop_token_ids:
            return out, "stop"
        if len(out) >= params.max_tokens:
            return out, "length"
    raise AssertionError("unreachable")


class FakeEngineCore:
    def __init__(self, log):
        self.log = log

    def shutdown(self):
        self.log.append("engine_core.shutdown")


class FakeLLM:
    registry: list["FakeLLM"] = []
    log: list[str] = []

    def __init__(self, model, **kwargs):
        self.model, self.kwargs, self.calls = model, kwargs, []
        self.llm_engine = types.SimpleNamespace(engine_core=FakeEngineCore(self.log))
        self.registry.append(self)

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None):
        prompts = list(prompts)
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        assert len(params) == len(prompts)
        self.calls.append({"prompts": prompts, "params": params, "use_tqdm": use_tqdm})
        outputs = []
        for prompt, sp in zip(prompts, params):
            ids = prompt["prompt_token_ids"]
            completions = []
            for j in range(sp.n):  # vLLM's parallel sampling: child j gets seed + j
                tokens, reason = fake_response(ids, None if sp.seed is None else sp.seed + j, sp)
                completions.append(FakeCompletion(j, tokens, reason))
            outputs.append(FakeRequestOutput(list(ids), completions[::-1]))  # any order: index says which
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch):
    """A fake `vllm` importable, and CUDA reported available to the backend."""
    module = types.ModuleType("vllm")
    module.__version__ = FAKE_VERSION
    module.LLM = type("LLM", (FakeLLM,), {"registry": [], "log": []})
    module.SamplingParams = FakeSamplingParams
    module.TokensPrompt = lambda **fields: dict(fields)  # a TypedDict in vLLM
    distributed = types.ModuleType("vllm.distributed")
    state = types.ModuleType("vllm.distributed.parallel_state")
    state.destroy_model_parallel = lambda: module.LLM.log.append("destroy_model_parallel")
    state.destroy_distributed_environment = lambda: module.LLM.log.append("destroy_distributed_environment")
    distributed.parallel_state = state
    module.distributed = distributed
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.distributed", distributed)
    monkeypatch.setitem(sys.modules, "vllm.distributed.parallel_state", state)
    monkeypatch.setattr(vb, "_cuda_available", lambda: True)
    return module


@pytest.fixture(scope="module")
def tiny_dir():
    from neat.models import policy_dir_for_engine

    return policy_dir_for_engine(TINY, cache_dir=CACHE, seed=0)


@pytest.fixture(scope="module")
def tokenizer():
    from neat.models import load_tokenizer

    return load_tokenizer(TINY, cache_dir=CACHE)


def rendered(tokenizer, questions):
    from neat.encoding import render_prompt

    return [render_prompt(tokenizer, [{"role": "user", "content": q}], system=None) for q in questions]


QUESTIONS = ["How do I bake bread?", "What is the capital of France?", "Tell me a joke.",
             "Why is the sky blue?", "How can I learn Python quickly?"]


# ---------------------------------------------------------------------- the engine


def test_engine_passes_our_prompt_tokens_and_sampling_settings(fake_vllm, tiny_dir, tokenizer):
    engine = vb.VllmEngine(tiny_dir, dtype="float32", gpu_memory_utilization=0.25, enforce_eager=True, seed=3)
    llm = fake_vllm.LLM.registry[-1]
    assert llm.model == tiny_dir
    assert llm.kwargs == {"dtype": "float32", "gpu_memory_utilization": 0.25, "enforce_eager": True, "seed": 3,
                          "trust_remote_code": False, "skip_tokenizer_init": True}
    prompts = rendered(tokenizer, QUESTIONS)
    done = []
    gens = engine.generate(tokenizer, prompts, max_new_tokens=5, temperature=0.8, top_p=0.9,
                           num_return_sequences=3, seed=7, min_tokens=2, on_batch=done.append)
    (call,) = llm.calls
    assert call["use_tqdm"] is False and sum(done) == len(prompts)
    for prompt, request, sp in zip(prompts, call["prompts"], call["params"]):
        assert request == {"prompt_token_ids": tokenizer(prompt, add_special_tokens=False)["input_ids"]}
        assert (sp.n, sp.temperature, sp.top_p, sp.max_tokens, sp.detokenize, sp.min_tokens) == (3, 0.8, 0.9, 5, False, 0)
        assert tokenizer.eos_token_id in sp.stop_token_ids
        assert sp.seed == batch_seed(7, prompt)
    assert [len(g) for g in gens] == [3] * len(prompts)


def test_greedy_is_temperature_zero_with_one_request_repeated(fake_vllm, tiny_dir, tokenizer):
    engine = vb.VllmEngine(tiny_dir)
    prompts = rendered(tokenizer, QUESTIONS[:2])
    gens = engine.generate(tokenizer, prompts, max_new_tokens=8, temperature=0.0, top_p=0.5, num_return_sequences=2)
    sp = fake_vllm.LLM.registry[-1].calls[-1]["params"][0]
    assert (sp.temperature, sp.n, sp.top_p, sp.seed) == (0.0, 1, 1.0, None)
    for pair in gens:
        assert len(pair) == 2 and pair[0] == pair[1] and pair[0] is not pair[1]


def test_outputs_in_input_order_and_seeds_independent_of_the_batch(fake_vllm, tiny_dir, tokenizer):
    engine = vb.VllmEngine(tiny_dir)
    prompts = rendered(tokenizer, QUESTIONS)
    kw = dict(max_new_tokens=6, temperature=0.9, top_p=0.95, num_return_sequences=2, seed=11)
    together = engine.generate(tokenizer, prompts, **kw)
    reordered = engine.generate(tokenizer, [prompts[3], prompts[0], prompts[4]], **kw)
    alone = engine.generate(tokenizer, [prompts[4]], **kw)
    assert reordered == [together[3], together[0], together[4]] and alone == [together[4]]
    calls = fake_vllm.LLM.registry[-1].calls
    seeds = {json.dumps(r["prompt_token_ids"]): sp.seed for c in calls for r, sp in zip(c["prompts"], c["params"])}
    assert len(seeds) == len(prompts)  # one seed per prompt, whatever the batch
    # each output is the fake's answer to *its* prompt and seed (so nothing was shuffled)
    for prompt, gens in zip(prompts, together):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        sp = FakeSamplingParams(max_tokens=6, stop_token_ids=[tokenizer.eos_token_id])
        for j, gen in enumerate(gens):
            tokens, _ = fake_response(ids, batch_seed(11, prompt) + j, sp)
            body = tokens[:-1] if tokens[-1] == tokenizer.eos_token_id else tokens
            assert gen.text == tokenizer.decode(body, skip_special_tokens=True).strip()


def test_finished_truncated_and_quality_flags(fake_vllm, tiny_dir, tokenizer):
    engine = vb.VllmEngine(tiny_dir)
    prompts = rendered(tokenizer, QUESTIONS * 2)
    gens = engine.generate(tokenizer, prompts, max_new_tokens=4, temperature=0.7, num_return_sequences=3, seed=1,
                           min_tokens=3)
    assert len(fake_vllm.LLM.registry[-1].calls[-1]["prompts"]) == len(prompts)
    seen = set()
    for prompt, per_prompt in zip(prompts, gens):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for j, gen in enumerate(per_prompt):
            tokens, reason = fake_response(ids, batch_seed(1, prompt) + j,
                                           FakeSamplingParams(max_tokens=4, stop_token_ids=[tokenizer.eos_token_id]))
            finished = reason == "stop"
            seen.add(finished)
            assert gen.finished is finished
            assert gen.n_tokens == len(tokens) - finished  # the stop token is not part of the response
            assert ("truncated" in gen.flags) is (not finished)
            if gen.text and gen.n_tokens < 3:
                assert "short" in gen.flags and gen.degenerate
            if not gen.text:
                assert "empty" in gen.flags
    assert seen == {True, False}  # both endings were exercised


def test_generation_generate_delegates_to_an_engine(fake_vllm, tiny_dir, tokenizer):
    engine = vb.VllmEngine(tiny_dir)
    prompts = rendered(tokenizer, QUESTIONS[:3])
    kw = dict(max_new_tokens=5, temperature=0.9, top_p=0.95, num_return_sequences=2, seed=4, min_tokens=2)
    done = []
    via_generate = generate(engine, tokenizer, prompts, batch_size=1, on_batch=done.append, **kw)
    assert via_generate == engine.generate(tokenizer, prompts, **kw) and sum(done) == 3
    assert len(fake_vllm.LLM.registry[-1].calls[0]["prompts"]) == 3  # batch_size is left to vLLM's scheduler


def test_close_releases_the_engine_once(fake_vllm, tiny_dir, tokenizer):
    with vb.VllmEngine(tiny_dir) as engine:
        assert engine.llm is not None
    assert engine.llm is None
    assert fake_vllm.LLM.log == ["engine_core.shutdown", "destroy_model_parallel", "destroy_distributed_environment"]
    engine.close()
    assert len(fake_vllm.LLM.log) == 3
    with pytest.raises(RuntimeError, match="after close"):
        engine.generate(tokenizer, ["x"], max_new_tokens=1)


def test_close_leaves_a_callers_process_group_alone(fake_vllm, tiny_dir, monkeypatch):
    import torch

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    vb.VllmEngine(tiny_dir).close()
    assert fake_vllm.LLM.log == ["engine_core.shutdown", "destroy_model_parallel"]


def test_engine_start_failure_is_one_line(fake_vllm, tiny_dir, monkeypatch):
    def refuse(self, model, **kwargs):
        raise ValueError("Free memory on device (10.0/80.0 GiB) on startup is less than desired GPU memory "
                         "utilization (0.9, 72.0 GiB).\nDecrease GPU memory utilization")

    monkeypatch.setattr(fake_vllm.LLM, "__init__", refuse)
    with pytest.raises(vb.BackendUnavailable) as info:
        vb.VllmEngine(tiny_dir, gpu_memory_utilization=0.9)
    message = str(info.value)
    assert "\n" not in message and "Free memory on device" in message
    assert "vllm_gpu_memory_utilization is 0.9" in message


# ---------------------------------------------------------------------- checkpoints for the engine


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft on transformers 5
def test_policy_dir_for_engine(tmp_path, tiny_dir):
    from neat.models import apply_lora, load_policy, policy_dir_for_engine, save_model

    assert Path(tiny_dir) == CACHE / "tiny-random-seed0" and (Path(tiny_dir) / "config.json").is_file()
    assert policy_dir_for_engine(tiny_dir, cache_dir=CACHE) == tiny_dir  # an HF directory is itself
    assert policy_dir_for_engine("HuggingFaceTB/SmolLM2-135M-Instruct", cache_dir=CACHE) == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(ModelError, match="reward model"):
        policy_dir_for_engine("builtin:minilm", cache_dir=CACHE)

    import torch

    probe = torch.arange(1, 9).unsqueeze(0)
    model, tok = load_policy(TINY, cache_dir=CACHE, device="cpu", seed=0)
    with torch.no_grad():
        base_logits = model(probe).logits
    lora = apply_lora(model, r=4, alpha=8, dropout=0.0)  # wraps `model` in place
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # a non-trivial adapter
    lora.save_pretrained(tmp_path / "adapter")  # adapter only; base_model_name_or_path is the tiny cache dir
    cache = tmp_path / "cache"
    merged = policy_dir_for_engine(str(tmp_path / "adapter"), cache_dir=cache, seed=0)
    assert Path(merged).parent == cache and Path(merged).name.startswith("merged-")
    assert (Path(merged) / "config.json").is_file() and not (Path(merged) / "adapter_config.json").exists()
    assert (Path(merged) / "tokenizer_config.json").is_file()
    stamp = (Path(merged) / "model.safetensors").stat().st_mtime_ns
    assert policy_dir_for_engine(str(tmp_path / "adapter"), cache_dir=cache, seed=0) == merged  # once
    assert (Path(merged) / "model.safetensors").stat().st_mtime_ns == stamp
    reference, _ = load_policy(str(tmp_path / "adapter"), cache_dir=cache, device="cpu", dtype="float32")
    reloaded, _ = load_policy(merged, cache_dir=cache, device="cpu", dtype="float32")
    with torch.no_grad():
        assert torch.allclose(reference(probe).logits, reloaded(probe).logits, atol=1e-5)
        assert not torch.allclose(base_logits, reloaded(probe).logits, atol=1e-3)
    save_model(reference, tok, tmp_path / "plain")
    assert policy_dir_for_engine(str(tmp_path / "plain"), cache_dir=cache) == str(tmp_path / "plain")


def test_smollm2_engine_dir_is_the_converted_cache(tmp_path):
    """The engine loads the directory `load_policy` converts the GGUF into, and never converts twice."""
    from neat.models import _MARKER, SMOLLM2, _fingerprint, _smollm2_gguf, policy_dir_for_engine

    cache = tmp_path / "cache"
    converted = cache / SMOLLM2
    converted.mkdir(parents=True)  # a published conversion (what load_policy leaves behind)
    (converted / _MARKER).write_text(json.dumps(_fingerprint(_smollm2_gguf()), sort_keys=True) + "\n")
    before = sorted(p.name for p in converted.iterdir())
    assert policy_dir_for_engine("builtin:smollm2-135m-instruct", cache_dir=cache) == str(converted)
    assert sorted(p.name for p in converted.iterdir()) == before  # used as is, not rebuilt


def test_engine_for_trained_policy_saves_merged_and_cleans_up(fake_vllm, tmp_path):
    from peft import PeftModel

    from neat.models import apply_lora, load_policy

    params = validate_params(former_defaults({"seed": 5, "generation": {"backend": "vllm", "vllm_gpu_memory_utilization": 0.2,
                                                        "vllm_enforce_eager": True}}))
    model, tok = load_policy(TINY, cache_dir=CACHE, device="cpu", seed=0)
    model = apply_lora(model, r=4, alpha=8, dropout=0.0)
    workdir = tmp_path / "round-engine"
    with vb.engine_for_trained_policy(model, tok, params, workdir) as engine:
        llm = fake_vllm.LLM.registry[-1]
        assert llm.model == str(workdir) and engine.llm is llm
        assert llm.kwargs["gpu_memory_utilization"] == 0.2 and llm.kwargs["enforce_eager"] is True
        assert llm.kwargs["seed"] == 5
        assert (workdir / "config.json").is_file() and (workdir / "tokenizer_config.json").is_file()
        assert not (workdir / "adapter_config.json").exists()  # merged: vLLM loads a plain checkpoint
        gens = generate(engine, tok, rendered(tok, QUESTIONS[:2]), max_new_tokens=3, temperature=0.9,
                        num_return_sequences=2, seed=0)
        assert [len(g) for g in gens] == [2, 2]
    assert engine.llm is None and "engine_core.shutdown" in fake_vllm.LLM.log
    assert not workdir.exists() and isinstance(model, PeftModel)  # the training model stays a LoRA model


def test_engine_for_trained_policy_cleans_up_after_a_failure(fake_vllm, tmp_path):
    from neat.models import load_policy

    params = validate_params(former_defaults({"generation": {"backend": "vllm"}}))
    model, tok = load_policy(TINY, cache_dir=CACHE, device="cpu", seed=0)
    with pytest.raises(KeyError):
        with vb.engine_for_trained_policy(model, tok, params, tmp_path / "w"):
            raise KeyError("boom")
    assert not (tmp_path / "w").exists() and fake_vllm.LLM.log[0] == "engine_core.shutdown"


def test_online_rounds_sample_through_an_engine_on_the_current_policy(fake_vllm, tmp_path):
    """`neat train` round 2 with generation.backend: vllm: an engine on a saved copy of the policy as
    trained in round 1, its samples in the round data, the copy removed afterwards."""
    from neat.steering import select_prompts
    from neat.training.trainer import Trainer, load_trainable_policy
    from tests.test_train import fake_scorer, make_params, synthetic_rows

    params = make_params(tmp_path, rounds=2)
    params = params.model_copy(update={"generation": params.generation.model_copy(update={"backend": "vllm"})})
    pairs, rows = synthetic_rows(4)
    model, tokenizer = load_trainable_policy(params)
    seen = {}

    def scorer(round_rows):
        engines = fake_vllm.LLM.registry
        seen["engines"] = [(e.model, Path(e.model).exists()) for e in engines]
        return fake_scorer(round_rows)

    trainer = Trainer(params, model, tokenizer, out_dir=params.out("train"), progress=False, scorer=scorer,
                      state_dir=tmp_path / "ckpt" / "train")
    trainer.run(rows, select_prompts(pairs, 4), pairs, fingerprint_="vllm")
    (engine_dir, existed_while_sampling), = seen["engines"]
    assert Path(engine_dir) == tmp_path / "ckpt" / "vllm-policy" and existed_while_sampling is False  # closed
    assert not Path(engine_dir).exists()
    llm = fake_vllm.LLM.registry[0]
    assert llm.calls and "engine_core.shutdown" in fake_vllm.LLM.log
    from neat.candidates import read_candidates

    sampled = [r for r in read_candidates(params.out("train", "rounds", "round_2.parquet"))
               if r["origin"] in ("positive", "negative")]
    assert len(sampled) == 4 * 2  # k_pos = k_neg = 1 per prompt, all from the engine
    assert sum(len(c["prompts"]) for c in llm.calls) == 4 * 2
    assert len(trainer.log) == 4  # 2 steps per round, round 2 trained on the engine's samples


def test_train_checks_vllm_before_round_one(monkeypatch, tmp_path):
    from neat.train import train
    from tests.test_train import make_params

    monkeypatch.setattr(vb, "_unavailable_reason", lambda: "vllm is not installed")
    params = make_params(tmp_path, rounds=2)
    params = params.model_copy(update={"generation": params.generation.model_copy(update={"backend": "vllm"})})
    with pytest.raises(vb.BackendUnavailable, match="generation.backend: vllm"):
        train(params)  # fails before reading any input: nothing was trained for an hour first
    monkeypatch.setattr(vb, "_unavailable_reason", lambda: None)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under accelerate launch
    with pytest.raises(vb.BackendUnavailable, match="single-process training only; this run has 2 processes"):
        train(params)


# ---------------------------------------------------------------------- the stages


def stage_params(tmp_path, **sections):
    tree = {
        "seed": 0,
        "paths": {"out": str(tmp_path / "out"), "cache": str(CACHE), "checkpoints": str(tmp_path / "ckpt"),
                  "data": str(ROOT / "data/demo/hh_demo.jsonl"),
                  "safety_prompts": str(ROOT / "data/demo/safety_prompts.csv"),
                  "refusal_examples": str(ROOT / "data/demo/refusal_examples.jsonl")},
        "data": {"max_train_prompts": 4},
        "policy": {"model": TINY, "device": "cpu", "lora": {"enabled": False}},
        "expand": {"k_pos": 2, "k_neg": 1, "max_new_tokens": 6, "n_demos": 1, "batch_size": 4},
        "train": {"max_prompt_tokens": 96, "max_response_tokens": 16},
        "evaluate": {"max_prompts": 3, "max_safety_prompts": 4, "max_new_tokens": 4, "n_samples": 2,
                     "batch_size": 4, "bootstrap": 100},
    }
    for name, values in sections.items():
        tree.setdefault(name, {}).update(values)
    return validate_params(former_defaults(tree))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from neat.prepare import prepare

    root = tmp_path_factory.mktemp("vllm-stages")
    prepare(stage_params(root))
    return root


def _columns(rows):
    return {k: sorted({type(r[k]).__name__ for r in rows}) for k in rows[0]}


def test_expand_with_vllm_writes_what_hf_writes(prepared, fake_vllm, tmp_path):
    import shutil

    from neat.candidates import SAMPLED_COLUMNS, read_candidates
    from neat.expand import expand

    results = {}
    for backend in ("hf", "vllm"):
        root = tmp_path / backend
        shutil.copytree(prepared / "out", root / "out")
        params = stage_params(root, generation={"backend": backend})
        stats = expand(params)
        results[backend] = (stats, read_candidates(params.out("expand", "candidates.parquet")))
    (hf_stats, hf_rows), (v_stats, v_rows) = results["hf"], results["vllm"]
    assert set(v_stats) == set(hf_stats)
    assert {k: v for k, v in v_stats.items() if k in ("prompts", "prompts_too_long", "samples", "shards")} == \
        {k: v for k, v in hf_stats.items() if k in ("prompts", "prompts_too_long", "samples", "shards")}
    assert list(v_rows[0]) == list(hf_rows[0]) == list(SAMPLED_COLUMNS)
    assert _columns(v_rows) == _columns(hf_rows)
    key = [(r["prompt_id"], r["origin"], r["steering_prompt"], r["n_demos"], r["generation"], r["policy_id"])
           for r in hf_rows]
    assert [(r["prompt_id"], r["origin"], r["steering_prompt"], r["n_demos"], r["generation"], r["policy_id"])
            for r in v_rows] == key
    # the engine generated every sample, on the tiny checkpoint, and was closed
    (llm,) = fake_vllm.LLM.registry
    assert llm.model == str(CACHE / "tiny-random-seed0") and "engine_core.shutdown" in llm.log
    sampled = [r for r in v_rows if r["origin"] in ("positive", "negative")]
    assert sum(len(c["prompts"]) * c["params"][0].n for c in llm.calls) == len(sampled) == v_stats["samples"]
    assert {c["params"][0].n for c in llm.calls} == {2, 1}  # k_pos, k_neg


def test_expand_shards_are_not_shared_between_backends(prepared):
    from neat.expand import expand_fingerprint

    path = prepared / "out" / "data" / "train.jsonl"
    hf = stage_params(prepared)
    vllm = stage_params(prepared, generation={"backend": "vllm"})
    assert expand_fingerprint(hf, path, "p") != expand_fingerprint(vllm, path, "p")


def test_evaluate_generates_through_the_engine_and_caches_per_backend(prepared, fake_vllm, tmp_path):
    from neat.evaluate import _policy_outputs, held_out_prompts, safety_subset
    from neat.judges import read_safety_csv

    cache = tmp_path / "gen-cache"
    outs = {}
    for backend in ("vllm", "hf"):
        params = stage_params(prepared, generation={"backend": backend})
        held = held_out_prompts(params)
        safety = safety_subset(read_safety_csv(params.paths.safety_prompts), 4, 0)
        outs[backend] = _policy_outputs(params, TINY, held=held, safety=safety, seed_for_builtin=0, cache=cache,
                                        label="base", progress=False)
    (llm,) = fake_vllm.LLM.registry
    greedy, sampled, safety_call = llm.calls
    assert [sp.temperature for sp in greedy["params"]] == [0.0] * 3
    assert {(sp.n, sp.temperature) for sp in sampled["params"]} == {(2, 0.7)}
    assert len(safety_call["prompts"]) == 4 and llm.log[0] == "engine_core.shutdown"
    v, h = outs["vllm"], outs["hf"]
    assert not v["cached"] and not h["cached"]  # the hf run did not reuse the vLLM generations
    assert len(list(cache.glob("*.json"))) == 4  # held + safety, per backend
    assert [len(g["samples"]) for g in v["held"]] == [2, 2, 2] and len(v["safety"]) == 4
    assert v["nll"] == h["nll"] and v["tokens"] == h["tokens"]  # perplexity always from the HF model
    again = _policy_outputs(stage_params(prepared, generation={"backend": "vllm"}), TINY, held=held, safety=safety,
                            seed_for_builtin=0, cache=cache, label="base", progress=False)
    assert again["cached"] and again["held"] == v["held"] and len(fake_vllm.LLM.registry) == 1  # no engine started


# ---------------------------------------------------------------------- one-line errors through the CLI


def run_cli(capsys, tmp_path, stage):
    from neat.cli import main

    params = tmp_path / "params.yaml"
    params.write_text(f"paths:\n  out: {tmp_path / 'out'}\n  checkpoints: {tmp_path / 'ckpt'}\n", encoding="utf-8")
    code = main([stage, "--params", str(params), "-S", "generation.backend=vllm"])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("stage", ["expand", "evaluate"])
def test_cli_error_when_vllm_is_missing(capsys, monkeypatch, tmp_path, stage):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    code, err = run_cli(capsys, tmp_path, stage)
    assert code == 2 and err == ["neat: error: generation.backend: vllm needs the vllm package and a CUDA GPU "
                                 "(vllm is not installed); set generation.backend: hf"]
    assert not (tmp_path / "out").exists()  # failed before any work


def test_cli_error_when_cuda_is_missing(capsys, fake_vllm, monkeypatch, tmp_path):
    monkeypatch.setattr(vb, "_cuda_available", lambda: False)
    code, err = run_cli(capsys, tmp_path, "expand")
    assert code == 2 and err == ["neat: error: generation.backend: vllm needs the vllm package and a CUDA GPU "
                                 "(no CUDA GPU is available); set generation.backend: hf"]


def test_cli_subprocess_without_vllm_has_no_traceback(tmp_path):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    (tmp_path / "params.yaml").write_text("generation:\n  backend: vllm\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "neat.cli", "expand"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["neat: error: generation.backend: vllm needs the vllm package and "
                                                "a CUDA GPU (vllm is not installed); set generation.backend: hf"]


# ---------------------------------------------------------------------- the real vLLM (CUDA machines only)


def _real_vllm_ready() -> bool:
    import importlib.util

    import torch

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


@pytest.mark.skipif(not _real_vllm_ready(), reason="needs the vllm package and a CUDA GPU")
def test_real_vllm_greedy_matches_hf_on_tiny_random(tiny_dir, tokenizer):
    """Greedy decoding of the same prompt tokens: vLLM and HF agree on the first tokens (fp32 on both)."""
    from neat.models import load_policy

    prompts = rendered(tokenizer, QUESTIONS * 2)
    model, _ = load_policy(TINY, cache_dir=CACHE, device="cuda", dtype="float32", seed=0)
    hf = generate(model, tokenizer, prompts, max_new_tokens=8, temperature=0.0, batch_size=4)
    del model
    with vb.VllmEngine(tiny_dir, dtype="float32", gpu_memory_utilization=0.3, enforce_eager=True) as engine:
        fast = engine.generate(tokenizer, prompts, max_new_tokens=8, temperature=0.0)
        sampled = engine.generate(tokenizer, prompts[:2], max_new_tokens=8, temperature=0.9,
                                  num_return_sequences=2, seed=3)
        again = engine.generate(tokenizer, prompts[1::-1], max_new_tokens=8, temperature=0.9,
                                num_return_sequences=2, seed=3)

    def head(gen):
        return tokenizer(gen.text, add_special_tokens=False)["input_ids"][:4]

    same = sum(head(a[0]) == head(b[0]) for a, b in zip(hf, fast))
    assert same >= 0.8 * len(prompts), [(a[0].text, b[0].text) for a, b in zip(hf, fast)]
    assert [len(g) for g in sampled] == [2, 2] and again == sampled[::-1]  # seeded per request
