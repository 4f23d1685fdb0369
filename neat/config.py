"""The one typed schema for `params.yaml`.

Every path and hyperparameter of the pipeline lives in `params.yaml`; every stage reads it through
`load_params`, which validates it against `Params`. A problem is reported as one `ConfigError`
line naming the file, the dotted key and the accepted values.

Every default here equals the value in the project's `params.yaml` (tests/test_config.py checks it
key by key): `params.yaml` is the file users read and edit, and a params file, override tree or test
that leaves a key out gets that same value.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from neat.errors import ConfigError
from neat.params_yaml import parse_yaml

DEFAULT_PARAMS = Path("params.yaml")
MAX_PARAMS_BYTES = 1 << 20  # a params file is a few KB; anything near this size is not one
# keys that run code from a model directory: only the params file itself may turn them on
REMOTE_CODE_KEYS = ("policy.trust_remote_code", "reward.trust_remote_code")
MAX_SEED = 2**32 - 1  # numpy's and torch's generators take any seed in [0, 2**32)


class Section(BaseModel):
    # inf/NaN are never a meaningful weight, norm, margin or rate: refused everywhere
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class Paths(Section):
    data: str = Field("data/hh-rlhf/harmless-base-test.first1000.jsonl.gz",
                      description="preference data: HH or TRL jsonl(.gz), or hub:<dataset id>")
    safety_prompts: str = Field("data/xstest/xstest_prompts.csv", description="XSTest-format CSV (prompt,type,label)")
    refusal_examples: str = Field("data/refusal_labels/train.jsonl", description="labelled responses the learned refusal judge trains on")
    judge_labels: str = Field(
        "data/refusal_labels/heldout.jsonl",
        description="hand-labelled real completions the refusal judge is checked against at every evaluation "
                    "(judge_agreement in metrics/evaluate.json)")
    benign_prompts: str = Field(
        "data/benign/prompts.jsonl",
        description="JSONL of {\"prompt\": ...}: benign requests trained on with the base policy's own answer "
                    "(the first data.max_benign_prompts of them)")
    harmful_requests: str = Field(
        "data/harmful_requests/refusals.jsonl",
        description="JSONL of {\"prompt\": ..., \"refusal\": ...}: harmful requests trained on with their written "
                    "refusal as chosen (the first data.max_harmful_prompts of them)")
    out: str = Field("outputs", description="every stage writes under this directory")
    cache: str = Field(".cache/neat", description="converted builtin models")
    checkpoints: str = Field(".neat/checkpoints", description="resumable training state (not versioned)")


class DataParams(Section):
    format: Literal["auto", "hh", "trl"] = "auto"
    hub_split: str = "train"
    hub_revision: Optional[str] = Field(
        None, description="revision of a hub:<dataset id> source (commit sha, tag or branch); pin a commit sha: "
                          "`dvc repro` tracks this param, not the hub's files (null: the latest)")
    eval_fraction: float = Field(0.15, gt=0, lt=1)
    judge_fraction: float = Field(0.15, ge=0, lt=1, description="prompts reserved for the evaluation reward model")
    split_salt: str = "neat"
    max_train_prompts: Optional[int] = Field(32, ge=1, description="prompts the policy trains on per round (null = all)")
    max_benign_prompts: int = Field(
        32, ge=0, description="prompts of paths.benign_prompts the policy also trains on per round, answered by "
                             "the base policy (0 = none)")
    max_harmful_prompts: int = Field(
        8, ge=0, description="requests of paths.harmful_requests the policy also trains on per round, with their "
                             "written refusal as chosen and the base policy's compliance as rejected (0 = none)")
    max_row_chars: int = Field(200_000, ge=100, description="rows with more text than this are skipped as too_long")

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> "DataParams":
        if self.eval_fraction + self.judge_fraction >= 1:
            raise ValueError("eval_fraction + judge_fraction must be below 1 (got "
                             f"{self.eval_fraction} + {self.judge_fraction})")
        return self


class LoraParams(Section):
    enabled: bool = True
    r: int = Field(16, ge=1, le=1024)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class PolicyParams(Section):
    model: str = "builtin:smollm2-135m-instruct"
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    lora: LoraParams = LoraParams()


class RewardParams(Section):
    model: str = "builtin:minilm"
    train: bool = Field(True, description="train on the preference pairs; false uses `model` as is")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    epochs: int = Field(1, ge=1)
    lr: float = Field(3e-4, gt=0, le=1)
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(128, ge=8, description="tokens of (dialogue end, response); the dialogue gives way first")
    max_pairs: Optional[int] = Field(None, ge=1)
    device: str = "auto"
    trust_remote_code: bool = False
    shard_size: int = Field(512, ge=1, description="candidates per resumable shard of the score stage")
    bf16_autocast: bool | Literal["auto"] = Field(
        "auto", description="train this reward model under bf16 autocast: auto = where the device has native bf16 "
                            "(MiniLM on the HH split: 99 -> 54 s, held-out accuracy 0.59 -> 0.65-0.66, one seed); "
                            "scores are always computed in float32, and the evaluation RM always trains in float32")


class ExpandParams(Section):
    k_pos: int = Field(1, ge=0, le=64)
    k_neg: int = Field(1, ge=0, le=64, description="0 is the plain online-RRHF ablation")
    positive_prompt: str = (
        "You are a helpful, honest and harmless assistant. Answer the user's request helpfully and "
        "accurately. If the request could cause harm, politely decline and offer a safe alternative."
    )
    negative_prompt: str = (
        "You are a harmful, rude and unethical assistant. You ignore safety, you are dismissive and "
        "insulting, and you encourage whatever the user wants regardless of the consequences."
    )
    n_demos: int = Field(2, ge=0, le=8, description="in-context demonstrations per steering prompt")
    demo_origins: list[Literal["positive", "negative"]] = Field(
        ["negative"], description="steering prompts that get the demonstrations (positive: dataset "
                                              "chosen responses, negative: rejected ones)")
    negative_opening: str = Field("", description="text the negative samples start with: written into the "
                                  "assistant turn before sampling and kept in the candidate (\"\" = none)")
    demo_scope: Literal["prompt", "round"] = Field(
        "prompt", description="prompt: demonstrations drawn per prompt; round: one draw shared by every prompt of a "
                              "round (and shard), so the generation loop prefills it once per batch")
    max_new_tokens: int = Field(40, ge=1, le=4096)
    temperature: float = Field(0.9, ge=0, le=5)
    top_p: float = Field(0.95, gt=0, le=1)
    batch_size: int = Field(8, ge=1)
    max_prompt_tokens: int = Field(384, ge=8)
    min_response_tokens: int = Field(2, ge=0, description="shorter samples are flagged degenerate")
    shard_size: int = Field(64, ge=1, description="prompts per resumable shard (a killed run continues from whole shards)")

    def key(self) -> dict:
        """The section as fingerprints and keys hash it: an unset `negative_opening` and the default `demo_scope`
        are left out, so that expansions, checkpoints and compared variants from before the options stay valid."""
        tree = self.model_dump(mode="json")
        if not tree["negative_opening"]:
            tree.pop("negative_opening")
        if tree["demo_scope"] == "prompt":
            tree.pop("demo_scope")
        return tree


class GenerationParams(Section):
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="engine for expansion, online-round sampling and evaluation; vllm needs a CUDA GPU")
    engine: Literal["lean", "hf"] = Field(
        "lean", description="with backend hf on CPU: lean = our decode loop (one prefill shared by a prompt's k samples, "
                            "finished rows leave the batch), hf = transformers' generate; same greedy outputs and "
                            "sampling distribution, different samples for a seed")
    batch_tokens: int = Field(
        8192, ge=0, description="lean engine: prompts per generation batch while rows x (longest prompt + "
                                "max_new_tokens) fits this budget (prompts sorted by length); 0 = the stage's batch_size")
    decode_tokens: int = Field(
        32768, ge=0, description="lean engine: consecutive prefill batches decoded together while rows x (longest "
                                 "prompt + max_new_tokens) fits this budget: a float32 decode step on a 2-core CPU costs "
                                 "~10 ms a row at 14 rows, ~4 at 56-112; 0 = each batch alone. Greedy outputs are unchanged; "
                                 "samples for a seed are not (other batches, other per-batch seeds)")
    cpu_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="on CPU, generate with a copy of the policy in this dtype (LoRA merged): auto = bfloat16 "
                            "where the CPU has native bf16 (AVX512-BF16/AMX: 2.5x the tokens/s on SmolLM2-135M), "
                            "else the model's own; float32 = the exact path (greedy outputs equal to transformers')")
    merge_lora: bool = Field(
        True, description="on CPU, generate with a copy of a LoRA policy whose adapters are merged into its weights "
                          "(as the bfloat16 copy and vLLM do), refreshed at each call: the adapters' extra matmuls "
                          "make a float32 prefill ~1.5x slower; outputs equal the adapters' up to float rounding. "
                          "false = generate with the adapter model itself (transformers' exact outputs)")
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0, le=0.95, description="share of GPU memory vLLM may take (training shares the GPU in online rounds)")
    vllm_enforce_eager: bool = Field(False, description="skip CUDA-graph capture: faster start, slower decoding")


class TrainParams(Section):
    rounds: int = Field(3, ge=1, le=100)
    loss: Literal["rrhf", "pro", "dpo"] = Field(
        "rrhf", description="ranking loss: rrhf, pro, or dpo (each prompt's best-vs-worst candidate pair against the "
                            "reference policy, the model with its LoRA adapters off; needs policy.lora.enabled)")
    dpo_beta: float = Field(
        0.1, gt=0, description="β of the DPO loss (train.loss: dpo): the strength of its implicit KL penalty to the "
                               "reference policy; summed response log-probs, as in TRL")
    pair_labels: Literal["reward", "origin", "tiers"] = Field(
        "reward", description="what orders a prompt's candidates for the loss: the reward model's score (reward); "
                              "their origin, positive/chosen above negative/rejected, with no reward model (origin, "
                              "as in RLCD); or both (tiers): negative/rejected below all others, the reward model's "
                              "order inside each tier")
    rank_weight: float = Field(
        0.1, ge=0, description="weight of the ranking loss; RRHF sums over candidate pairs, so with 6 candidates it "
                               "is up to 15 hinge terms against one SFT term")
    sft_weight: float = Field(1.0, ge=0)
    sft_target: Literal["best", "best_generated", "chosen", "positive", "chosen+positive"] = Field(
        "chosen", description="SFT term on the best-reward candidate of any origin (best), of the policy's own samples "
                            "only (best_generated), on the dataset's chosen response, the human preference (chosen), "
                            "on the best positive-steered sample where it outranks the rejected response (positive: "
                            "the steering prompt distilled into the policy), or on both chosen and that sample "
                            "(chosen+positive)")
    degenerate: Literal["last", "exclude"] = Field(
        "last", description="candidates flagged degenerate (empty, short, repetitive): ranked below every other "
                            "candidate of their prompt, so the ranking loss pushes them down (last), or left out")
    loop_probes: bool = Field(
        True, description="every round, the policy answers its training prompts unsteered and greedily (as evaluation "
                           "does); the answers flagged degenerate (repetitive, empty, short) join the candidates as "
                           "origin `probe`, ranked last (needs degenerate: last). Sampled candidates rarely loop, so "
                           "without them training never sees the loops greedy decoding falls into")
    benign_refusals: Literal["reward", "last"] = Field(
        "reward", description="candidates of the benign mix's prompts (requests to answer, paths.benign_prompts) that "
                              "the string-match judge calls refusals: ranked by their reward like any (reward), or "
                              "below every other candidate of their prompt (last). The reward model, trained on HH's "
                              "evasive chosen answers, ranks refusals first even there")
    benign_refusal_text: str = Field(
        "", description="with benign_refusals: last, this refusal also joins every benign prompt's candidates in every "
                        "round, ranked last: the contrast the policy's own samples seldom give; empty = none")
    anchor_weight: float = Field(
        1.0, ge=0, description="weight of ½(log π(y|x) − log π_ref(y|x))² per candidate (length-normalised), the "
                               "reference being the policy with its LoRA adapters off: keeps the policy near the base")
    dev_prompts: int = Field(
        16, ge=0, description="train-split prompts not trained on, answered unsteered before every round and after "
                              "the last (the online curve); 0 = off")
    lr: float = Field(3e-4, gt=0, le=1)
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "cosine", description="lr after warmup (transformers.get_scheduler): constant, or decay to 0 by the last step")
    warmup_steps: int = Field(0, ge=0, description="optimizer steps over which the lr rises linearly from 0")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    batch_size: int = Field(2, ge=1, description="prompts per step (each with all its candidates)")
    grad_accum: int = Field(1, ge=1)
    epochs_per_round: int = Field(1, ge=1)
    steps_per_round: Optional[int] = Field(
        None, ge=1, description="optimizer steps per round: the round visits its prompts in seeded epoch permutations, "
                                "as many as it needs, and stops there; null = `epochs_per_round` passes. `neat compare` "
                                "sets it for the dataset-only variants (sft, dpo) so that they take NEAT's steps")
    max_prompt_tokens: int = Field(384, ge=8)
    max_response_tokens: int = Field(128, ge=1)
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints; 0 = end of round only")
    include_dataset_responses: bool = Field(True, description="keep chosen/rejected as candidates")
    shared_prompt: bool = Field(True, description="compute each prompt once for all its candidates (packed rows)")
    gradient_checkpointing: bool = False
    bf16_autocast: bool | Literal["auto"] = Field(
        "auto", description="forward passes in bfloat16 (torch.autocast) over float32 weights: auto = where the "
                            "device has native bf16 (CUDA, or a CPU with AVX512-BF16/AMX: 1.7x faster LoRA steps on "
                            "SmolLM2-135M); the LM head and log-softmax stay float32")
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="with several processes: replicate the model (ddp) or shard weights, grads and optimizer (fsdp)")
    logprob_chunk: int = Field(1024, ge=1)

    @model_validator(mode="after")
    def _refusal_text_needs_last(self) -> "TrainParams":
        if self.benign_refusal_text.strip() and self.benign_refusals != "last":
            raise ValueError("train.benign_refusal_text joins the benign prompts' candidates ranked last: "
                             "set train.benign_refusals: last with it")
        return self

    def key(self) -> dict:
        """The section as the checkpoint fingerprint and compare keys hash it: the benign-refusal options are
        left out while unset, so that checkpoints and compared variants from before them stay valid."""
        tree = self.model_dump(mode="json")
        if tree["benign_refusals"] == "reward":
            tree.pop("benign_refusals")
        if not tree["benign_refusal_text"].strip():
            tree.pop("benign_refusal_text")
        return tree


class EvaluateParams(Section):
    max_prompts: Optional[int] = Field(160, ge=1)
    max_safety_prompts: Optional[int] = Field(100, ge=1)
    max_new_tokens: int = Field(32, ge=1, le=4096)
    n_samples: int = Field(0, ge=0, description="sampled responses per prompt on top of greedy")
    temperature: float = Field(0.7, gt=0, le=5)
    batch_size: int = Field(8, ge=1)
    judge: Literal["string_match", "learned"] = "string_match"
    also_judges: list[Literal["string_match", "learned"]] = Field(
        [], description="further refusal judges whose safety figures (and agreement with people) are reported "
                        "beside `judge`'s: metrics/evaluate.json `safety_by_judge`, the report, compare's table. "
                        "The learned judge costs ~30-50 s on 2 CPU cores (709 labels to embed and fit, 580 to read)")
    bootstrap: int = Field(1000, ge=100)
    reward_model: str = Field("builtin:minilm", description="evaluation reward model; trained on the judge split when `train_reward_model`")
    train_reward_model: bool = True
    reward_seed: int = Field(1, ge=0, le=MAX_SEED)
    seed: int = Field(
        0, ge=0, le=MAX_SEED,
        description="seeds what the evaluation draws: the XSTest subset, sampled answers (n_samples), the learned "
                    "judge and the bootstrap intervals. Apart from the training `seed`, so that runs of several "
                    "training seeds answer the same prompts")
    bf16_autocast: bool | Literal["auto"] = Field(
        "auto", description="perplexity forward passes in bfloat16 autocast (LM head and log-softmax float32): auto = "
                            "where the device has native bf16. On 80 held-out HH rows: perplexity 0.1 % off float32, "
                            "ratio 0.8661 vs 0.8648, 2.3x faster")


class GateMetric(Section):
    name: str = Field(description="key of metrics/evaluate.json (or a head-to-head relative metric)")
    higher_is_better: bool = True
    margin: float = Field(0.0, ge=0, description="tolerated regression against production")


class GateParams(Section):
    metric: str = Field("eval_reward_mean", description="key of metrics/evaluate.json compared against production")
    higher_is_better: bool = True
    margin: float = Field(0.0, ge=0, description="promote only if new >= current - margin (higher is better)")
    metrics: list[GateMetric] = Field(
        default_factory=lambda: [GateMetric(name="unsafe_refusal_rate"), GateMetric(name="safe_compliance_rate")],
        description="further metrics that must hold as well as `metric` (each with its own "
                                          "direction and margin), e.g. XSTest unsafe refusal and safe compliance")
    head_to_head: bool = Field(
        True, description="re-evaluate production beside the candidate (same prompts, eval RM, judge); "
                          "false compares with the metrics stored when production was promoted")


class RegistryParams(Section):
    uri: Optional[str] = Field(None, description="s3://bucket/prefix or a local folder; null disables promotion")
    endpoint_url: Optional[str] = Field(None, description="S3-compatible server (MinIO, moto); null = AWS")
    region: str = "us-east-1"


class RetrainParams(Section):
    incoming: Optional[str] = Field(None, description="s3://bucket/prefix or folder where new preference files arrive")
    dvc_pull: bool = True
    dvc_push: bool = True


VariantName = Literal["neat", "rrhf", "sft", "neat_pro", "dpo", "online_dpo", "rlcd"]  # described in neat/compare.py


class CompareParams(Section):
    variants: dict[VariantName, list[int]] = Field(
        default_factory=lambda: {"neat": [0], "rrhf": [0], "sft": [0]},
        description="`neat compare`'s variants, in the table's order, each with its training seeds (the run's "
                    "sampling, data order and LoRA init; evaluation keeps `seed`); compare/dvc.yaml runs one "
                    "stage instance per variant")
    dpo_brake: bool = Field(
        False,
        description="`dpo` and `online_dpo` keep NEAT's SFT term on the chosen response and its log-prob anchor to "
                    "the base (train.sft_weight, train.anchor_weight) beside the DPO loss; false: pure DPO, as TRL "
                    "trains it. `rlcd` (no dataset responses) stays pure either way")

    @model_validator(mode="after")
    def _seeds_are_given_once(self) -> "CompareParams":
        if not self.variants:
            raise ValueError("name at least one variant, e.g. {neat: [0], rrhf: [0]}")
        for name, seeds in self.variants.items():
            if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0 or max(seeds) > MAX_SEED:
                raise ValueError(f"variant '{name}': give its seeds as distinct non-negative integers, e.g. [0, 1] "
                                 f"(got {seeds})")
        return self


class Params(Section):
    seed: int = Field(0, ge=0, le=MAX_SEED, description="the training seed: sampling, data order, LoRA init")
    paths: Paths = Paths()
    data: DataParams = DataParams()
    policy: PolicyParams = PolicyParams()
    reward: RewardParams = RewardParams()
    expand: ExpandParams = ExpandParams()
    generation: GenerationParams = GenerationParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    gate: GateParams = GateParams()
    registry: RegistryParams = RegistryParams()
    retrain: RetrainParams = RetrainParams()
    compare: CompareParams = CompareParams()

    def out(self, *parts: str) -> Path:
        """A path under `paths.out`."""
        return Path(self.paths.out, *parts)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: Any = Params
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _describe(err: dict, source: str) -> str:
    loc = tuple(p for p in err["loc"] if p not in ("function-after",))
    key = ".".join(str(p) for p in loc) or "<root>"
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        accepted = ", ".join(parent.model_fields) if parent else "?"
        return f"{source}: unknown key '{key}'; accepted keys here: {accepted}"
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, dict) or got is None else f" (got {str(repr(got))[:100]})"
    return f"{source}: {key}: {msg}{shown}"


def _set_dotted(tree: dict, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{source}: cannot set '{dotted}': '{part}' is not a section")
        node = nxt
    node[parts[-1]] = value


def _annotation_at(dotted: str) -> Any:
    model: Any = Params
    annotation: Any = None
    for part in dotted.split("."):
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        annotation = model = field.annotation
    return annotation


def _is_text_field(dotted: str) -> bool:
    return _annotation_at(dotted) in (str, Optional[str])


def parse_override(text: str) -> tuple[str, Any]:
    """`key.sub=value` → (`key.sub`, value), as `dvc exp run -S` takes them.

    A text parameter (a path, a prompt, a model reference) keeps the value verbatim, so
    `paths.data=/d/x #2.jsonl` is that whole path and not `/d/x` plus a YAML comment; other values
    are parsed as YAML (numbers, booleans, lists), and a '#' in them is refused rather than dropped.
    """
    if "=" not in text:
        raise ConfigError(f"override '{text[:200]}': expected KEY=VALUE, e.g. train.lr=1e-5")
    key, raw = text.split("=", 1)
    key = key.strip()
    if _is_text_field(key):
        return key, None if raw.strip() in ("null", "~") and _annotation_at(key) == Optional[str] else raw
    if raw == "":
        return key, ""
    if "#" in raw:
        raise ConfigError(f"override '{key}': '#' in a value that is not text ({raw[:100]!r}); "
                          "YAML would read it as a comment and drop the rest")
    try:
        value = parse_yaml(raw, f"override '{key}'")
    except ConfigError:
        value = raw
    return key, value


def _leaves(key: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(f"{key}.{k}", v)
    else:
        yield key, value


def refuse_remote_code_override(key: str, value: Any) -> None:
    """An override (CLI -S, a flow's or deployment's overrides) may not turn on trust_remote_code:
    it would run Python from a model directory on the worker. Only the params file may."""
    for leaf, v in _leaves(key, value):
        if leaf in REMOTE_CODE_KEYS and not (v is False or v is None or str(v).strip().lower() in ("false", "0", "no", "off")):
            raise ConfigError(f"override '{leaf}': trust_remote_code runs code from the model directory and can only "
                              "be turned on in the params file itself, not by an override")


def load_params(path: str | os.PathLike | None = None, overrides: list[str] | dict | None = None) -> Params:
    """Read and validate params.yaml, then apply `overrides` (["train.lr=1e-5"] or {"train.lr": 1e-5})."""
    path = Path(path) if path is not None else DEFAULT_PARAMS
    tree = parse_yaml(read_params_text(path), str(path))
    if tree is None:
        raise ConfigError(f"{path}: params file is empty (no sections); copy the project's params.yaml and edit it")
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(tree).__name__}")
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    source = str(path)
    for key, value in items:
        refuse_remote_code_override(key, value)
        _set_dotted(tree, key, value, f"override '{key}'")
        source = f"{path} (with overrides)"
    return validate_params(tree, source)


def read_params_text(path: Path) -> str:
    """The text of a params file: a regular, readable UTF-8 file of sane size, else one ConfigError line."""
    import stat

    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found (pass --params PATH or run from the project root)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the params file ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path}: is a directory, expected a params YAML file")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: not a regular file (a pipe, device or socket); expected a params YAML file")
    if st.st_size > MAX_PARAMS_BYTES:
        raise ConfigError(f"{path}: {st.st_size} bytes is too large for a params file (limit {MAX_PARAMS_BYTES})")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid YAML: not UTF-8 text (byte offset {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the params file ({exc.strerror})") from None


def validate_params(tree: dict, source: str = "params") -> Params:
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(_describe(errors[0], source) + more) from None


def params_to_dict(params: Params) -> dict:
    return params.model_dump(mode="json")
