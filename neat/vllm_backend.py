"""Optional vLLM generation backend (`generation.backend: vllm`).

`VllmEngine` wraps `vllm.LLM` and offers `generate(...)` with the contract of
`neat.generation.generate`, which delegates to it when it is passed one in place of a model; so
`neat expand`, the online rounds of `neat train` and `neat evaluate` run unchanged on top of it:

* prompts are the rendered strings the HF path gets; they are tokenized with *our* tokenizer
  (``add_special_tokens=False``) and handed to vLLM as token ids (``TokensPrompt``), so both
  backends condition on identical prompt tokens. vLLM's own tokenizer is never loaded
  (``skip_tokenizer_init=True``, ``detokenize=False``): responses are decoded with our tokenizer
  (``skip_special_tokens=True``, stripped), as in the HF path;
* temperature 0 is greedy (vLLM needs ``n=1`` there: the greedy response is repeated, which is what
  HF's greedy ``num_return_sequences`` gives too);
* every request carries its own seed, ``neat.generation.batch_seed(seed, prompt)`` (vLLM gives the
  i-th of ``n`` samples ``seed + i``), so a prompt's samples do not depend on which other prompts
  share the call. The logits themselves can still differ in the last bits with the batch
  composition unless vLLM runs batch-invariant (``VLLM_BATCH_INVARIANT=1``). The samples are *not*
  the HF backend's samples: the two backends draw from different random streams;
* generation stops at the tokenizer's EOS and the checkpoint's ``generation_config`` EOS ids (the
  same rule as the HF path, `neat.generation.eos_ids`); ``finished`` is ``finish_reason == "stop"``;
  flags come from `neat.generation.quality_flags`.

API followed: vLLM **0.33.0** (read from the wheel's source, `vllm/entrypoints/llm.py`,
`vllm/sampling_params.py`, `vllm/inputs/llm.py`, `vllm/outputs.py`,
`vllm/v1/engine/parallel_sampling.py`, `vllm/distributed/parallel_state.py`):
``LLM(model, dtype=, gpu_memory_utilization=, enforce_eager=, seed=, trust_remote_code=,
skip_tokenizer_init=)``, ``LLM.generate(prompts, sampling_params: list, use_tqdm=False) ->
list[RequestOutput]`` in input order, ``SamplingParams(n, temperature, top_p, seed, max_tokens,
stop_token_ids, detokenize)``, ``TokensPrompt(prompt_token_ids=...)``, ``RequestOutput.outputs[j]``
with ``.index``, ``.token_ids``, ``.finish_reason`` ("stop" | "length" | ...). Older releases with
the same names (TokensPrompt appeared in 0.4) should work; that is not tested.

GPU memory: vLLM reserves ``generation.vllm_gpu_memory_utilization`` of the *total* GPU memory
(weights plus KV cache) when an engine starts, and refuses to start when less than that is free.
In the online rounds of `neat train` the policy, its gradients and optimizer state stay on the GPU
while the round's engine runs (`engine_for_trained_policy`), so keep the share below what training
leaves free (the default 0.3 suits a small policy on one GPU). `neat expand` and `neat evaluate`
load no training state, so a larger share only makes their KV cache bigger.

The device is vLLM's current CUDA device (choose it with ``CUDA_VISIBLE_DEVICES``), whatever
`policy.device` says. Nothing here imports vllm until an engine is made, so the HF path and the
CPU test suite never need it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from neat.errors import NeatError
from neat.generation import Generation, batch_seed, eos_ids, quality_flags

VLLM_API_VERSION = "0.33.0"
# prompts per vLLM call: vLLM batches within a call; the chunks only drive the progress bar
PROGRESS_CHUNK = 256


class BackendUnavailable(NeatError):
    """generation.backend: vllm was asked for where vLLM cannot run."""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _unavailable_reason() -> str | None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vllm is not installed"
    except Exception as exc:  # noqa: BLE001 - a broken install (built for another torch/CUDA) fails in many ways
        return f"vllm cannot be imported: {type(exc).__name__}: {_first_line(exc)}"
    if not _cuda_available():
        return "no CUDA GPU is available"
    return None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def require_vllm() -> None:
    """Raise a one-line `BackendUnavailable` unless vllm imports and a CUDA GPU is visible."""
    reason = _unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(f"generation.backend: vllm needs the vllm package and a CUDA GPU ({reason}); "
                                 "set generation.backend: hf")


def _api() -> tuple[Any, Any, Any]:
    """(LLM, SamplingParams, TokensPrompt) from the installed vllm."""
    import vllm

    try:
        llm_cls, sampling_cls = vllm.LLM, vllm.SamplingParams
        tokens_prompt = getattr(vllm, "TokensPrompt", None)
        if tokens_prompt is None:
            from vllm.inputs import TokensPrompt as tokens_prompt
    except (AttributeError, ImportError) as exc:
        raise BackendUnavailable(
            f"vllm {getattr(vllm, '__version__', '?')} lacks LLM, SamplingParams or TokensPrompt "
            f"({_first_line(exc)}); this backend follows the vLLM {VLLM_API_VERSION} API; set generation.backend: hf"
        ) from None
    except Exception as exc:  # noqa: BLE001 - vllm.LLM imports the engine: CUDA/torch mismatches surface here
        raise BackendUnavailable(
            f"vllm {getattr(vllm, '__version__', '?')} cannot load its engine ({type(exc).__name__}: "
            f"{_first_line(exc)}); set generation.backend: hf"
        ) from exc
    return llm_cls, sampling_cls, tokens_prompt


def vllm_dtype(name: Any) -> str:
    """`policy.dtype` for vLLM: 'auto' resolves as the HF path does on CUDA (bf16 where supported, else fp16)."""
    key = str(name).strip().lower().removeprefix("torch.")
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    key = aliases.get(key, key)
    if key != "auto":
        return key
    try:
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    except Exception:  # noqa: BLE001 - no usable CUDA to ask: let vLLM choose
        return "auto"


def _checkpoint_eos(model: str) -> Any:
    """`eos_token_id` of a local checkpoint's generation_config.json (else config.json); None for hub ids."""
    path = Path(model)
    for name in ("generation_config.json", "config.json"):
        try:
            value = json.loads((path / name).read_text(encoding="utf-8")).get("eos_token_id")
        except (OSError, ValueError, AttributeError):
            continue
        if value is not None:
            return value
    return None


class VllmEngine:
    """A vLLM engine on one checkpoint; `generate` follows `neat.generation.generate`. Close it (or use
    it as a context manager) to give its GPU memory back."""

    def __init__(self, model: str, *, dtype: Any = "auto", gpu_memory_utilization: float = 0.3,
                 enforce_eager: bool = False, seed: int = 0, trust_remote_code: bool = False):
        require_vllm()
        import torch

        llm_cls, self._sampling_cls, self._tokens_prompt = _api()
        self.model = str(model)
        self._checkpoint_eos = _checkpoint_eos(self.model)
        # vLLM's cleanup tears down torch.distributed; never do that to a process group the caller owns
        self._owns_dist = not (torch.distributed.is_available() and torch.distributed.is_initialized())
        try:
            self.llm = llm_cls(
                model=self.model, dtype=vllm_dtype(dtype), gpu_memory_utilization=float(gpu_memory_utilization),
                enforce_eager=bool(enforce_eager), seed=int(seed), trust_remote_code=bool(trust_remote_code),
                skip_tokenizer_init=True,
            )
        except (ValueError, RuntimeError, OSError, MemoryError) as exc:
            self.llm = None
            raise BackendUnavailable(
                f"vLLM could not start on '{self.model}': {type(exc).__name__}: {_first_line(exc)} "
                f"(generation.vllm_gpu_memory_utilization is {gpu_memory_utilization}; or set generation.backend: hf)"
            ) from exc

    # ------------------------------------------------------------------ generation

    def _sampling_params(self, *, max_new_tokens: int, temperature: float, top_p: float, n: int, seed: int | None,
                         stop: set[int]) -> Any:
        sample = temperature > 0
        return self._sampling_cls(
            n=n, temperature=float(temperature) if sample else 0.0, top_p=float(top_p) if sample else 1.0,
            seed=seed, max_tokens=int(max_new_tokens), stop_token_ids=sorted(stop), detokenize=False,
        )

    @staticmethod
    def _generation(tokenizer, completion: Any, stop: set[int], min_tokens: int) -> Generation:
        ids = list(completion.token_ids)
        cut = next((k for k, t in enumerate(ids) if t in stop), None)
        ids = ids if cut is None else ids[:cut]
        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
        finished = completion.finish_reason == "stop"
        return Generation(text, len(ids), finished, quality_flags(ids, text, finished, min_tokens))

    def generate(
        self,
        tokenizer,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        num_return_sequences: int = 1,
        seed: int = 0,
        min_tokens: int = 1,
        on_batch: Callable[[int], None] | None = None,
        batch_size: int | None = None,  # accepted for symmetry with the HF path; vLLM schedules itself
    ) -> list[list[Generation]]:
        """`num_return_sequences` responses per rendered prompt, in input order (see the module docstring)."""
        if self.llm is None:
            raise RuntimeError("VllmEngine.generate called after close()")
        if not prompts:
            return []
        stop = eos_ids(tokenizer.eos_token_id, self._checkpoint_eos)
        sample = temperature > 0
        n = num_return_sequences if sample else 1
        encoded = [list(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        results: list[list[Generation]] = []
        for start in range(0, len(prompts), PROGRESS_CHUNK):
            idx = range(start, min(start + PROGRESS_CHUNK, len(prompts)))
            requests = [self._tokens_prompt(prompt_token_ids=encoded[i]) for i in idx]
            params = [self._sampling_params(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                            n=n, seed=batch_seed(seed, prompts[i]) if sample else None, stop=stop)
                      for i in idx]
            outputs = self.llm.generate(requests, params, use_tqdm=False)
            if len(outputs) != len(requests):
                raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(requests)} prompts")
            for i, out in zip(idx, outputs):
                got = getattr(out, "prompt_token_ids", None)
                if got is not None and list(got) != encoded[i]:
                    raise RuntimeError("vLLM returned outputs out of prompt order")
                completions = sorted(out.outputs, key=lambda c: getattr(c, "index", 0))
                gens = [self._generation(tokenizer, c, stop, min_tokens) for c in completions]
                if not sample:  # greedy: the same response num_return_sequences times, as HF gives it
                    gens = [dataclasses.replace(gens[0], flags=list(gens[0].flags)) for _ in range(num_return_sequences)]
                if len(gens) != num_return_sequences:
                    raise RuntimeError(f"vLLM returned {len(gens)} samples for n={num_return_sequences}")
                results.append(gens)
            if on_batch:
                on_batch(len(idx))
        return results

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Stop the engine and give its GPU memory back (idempotent)."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        shutdown = getattr(engine_core, "shutdown", None)  # v1: stops the engine-core process
        if callable(shutdown):
            with contextlib.suppress(Exception):
                shutdown()
        del llm, engine_core, shutdown
        _release_vllm_state(self._owns_dist)

    def __enter__(self) -> "VllmEngine":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _release_vllm_state(owns_dist: bool) -> None:
    """vLLM's model-parallel groups (and its torch.distributed group when vLLM made it), then caches.

    Not `cleanup_dist_env_and_memory`: it destroys any torch.distributed process group, including a
    training run's (accelerate launch).
    """
    try:
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel
    except Exception:  # noqa: BLE001 - helpers moved or missing in this version: nothing to tear down
        destroy_model_parallel = destroy_distributed_environment = None
    if destroy_model_parallel is not None:
        with contextlib.suppress(Exception):
            destroy_model_parallel()
        if owns_dist:
            with contextlib.suppress(Exception):
                destroy_distributed_environment()
    from neat.models import release_gpu_memory

    release_gpu_memory()


# ---------------------------------------------------------------------- engines for the stages


def engine_options(params) -> dict:
    """VllmEngine keyword arguments from the validated params (generation + policy sections)."""
    g, p = params.generation, params.policy
    return {"dtype": p.dtype, "gpu_memory_utilization": g.vllm_gpu_memory_utilization,
            "enforce_eager": g.vllm_enforce_eager, "trust_remote_code": p.trust_remote_code}


def engine_for_policy(ref: str, params, *, seed: int) -> VllmEngine:
    """A VllmEngine on the policy reference `ref` (builtin, .gguf, HF or LoRA directory, hub id).

    `seed` selects seeded builtins (builtin:tiny-random) as `load_policy` does and seeds the engine.
    """
    from neat.models import policy_dir_for_engine

    require_vllm()
    path = policy_dir_for_engine(ref, cache_dir=params.paths.cache, seed=seed,
                                 trust_remote_code=params.policy.trust_remote_code)
    return VllmEngine(path, seed=seed, **engine_options(params))


@contextlib.contextmanager
def engine_for_trained_policy(model, tokenizer, params, workdir: Path) -> Iterator[VllmEngine]:
    """For the online rounds of `neat train`: a VllmEngine on the policy as it is now.

    Saves `model` (a PEFT/LoRA model merged into a copy; the training model is untouched; pass the
    unwrapped model, e.g. `accelerator.unwrap_model(...)` — a DDP wrapper is unwrapped here, an FSDP
    one must be gathered by the caller) with its tokenizer to `workdir`, atomically, yields an engine
    on it, and afterwards closes the engine and removes `workdir`. Only the main process should call
    it.

    GPU memory: the policy, gradients, optimizer state and the torch allocator's cache stay on the GPU
    while the engine runs, and vLLM claims `generation.vllm_gpu_memory_utilization` of the *total*
    GPU memory on top of them (it refuses to start when that much is not free). The allocator cache is
    emptied before the engine starts; keep the share below what training leaves free. The merged copy
    of a LoRA model briefly needs one more set of weights.
    """
    import torch

    from neat.models import release_gpu_memory, save_model

    require_vllm()
    workdir = Path(workdir)
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    shutil.rmtree(workdir, ignore_errors=True)
    engine = None
    try:
        save_model(model, tokenizer, workdir)
        release_gpu_memory()
        engine = VllmEngine(str(workdir), seed=params.seed, **engine_options(params))
        yield engine
    finally:
        if engine is not None:
            engine.close()
        shutil.rmtree(workdir, ignore_errors=True)
