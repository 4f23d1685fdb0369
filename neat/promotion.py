"""The promotion gate of a pipeline run: publish `<out>/policy` as the registry's `candidate`, and move
`production` to it only if the gate passes (`neat promote`, and the retraining flow after its run).

The gate checks `gate.metric` and every entry of `gate.metrics` (each with its direction and margin)
against production: head to head (`gate.head_to_head`: production re-evaluated beside the candidate on
this run's prompts, eval RM and judge) or against production's stored metrics. The published version
carries a model card with this run's evaluation and the verdict.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path


def head_to_head(params, project: Path, store, production_version: str) -> dict:
    """Evaluate the candidate (`<out>/policy`) against the production version, on this run's prompts, eval
    reward model and judge: production's stored metrics came from another run's evaluation and are not
    comparable once any of those changed. Returns the evaluation's metrics (candidate = "trained")."""
    from neat import registry
    from neat.evaluate import evaluate

    with contextlib.chdir(project):  # params.yaml paths are relative to the project
        production_dir = registry.fetch_policy(store, production_version, Path(params.paths.checkpoints) / "registry")
        work = Path(params.paths.checkpoints) / "gate"  # not versioned, not a DVC output
        return evaluate(params, policy_dir=Path(params.paths.out) / "policy", tag="candidate",
                        base_policy=production_dir, out_dir=work, generation_cache=work / "cache", progress=False)


def promote_if_better(project: Path, params) -> dict:
    """Publish `<out>/policy` as the registry's `candidate` and move `production` to it if the gate passes.

    Returns the decision: {"promote", "reason"} plus "candidate" (the published version) and "version"
    (when production moved). Nothing is published without `registry.uri`, nor when the checkpoint is
    production already."""
    from neat import registry
    from neat.modelcard import card_facts, render
    from neat.models import checkpoint_id
    from neat.workspace import revision

    project = Path(project)
    if not params.registry.uri:
        return {"promote": False, "reason": "registry.uri not set"}
    out = project / params.paths.out
    candidate = json.loads((out / "metrics" / "evaluate.json").read_text())
    store = registry.open_store(params.registry)
    pointer = registry.production(store)
    ckpt = checkpoint_id(out / "policy")
    if pointer and (store.get_json(f"versions/{pointer['version']}/info.json") or {}).get("checkpoint") == ckpt:
        return {"promote": False, "reason": f"checkpoint {ckpt} is already production ({pointer['version']})"}
    g, head = params.gate, None
    if pointer and g.head_to_head:
        head = head_to_head(params, project, store, pointer["version"])
        verdict = registry.multi_head_to_head_gate(g, head)
    else:
        verdict = registry.multi_gate(g, candidate, registry.production_metrics(store))
    decision = {"promote": verdict.promote, "reason": verdict.reason}
    lineage = {"checkpoint": ckpt, "gate": verdict.reason, **revision(project)}
    version = registry.new_version()
    card = render(card_facts(params, project, evaluation=candidate,
                             extra={"gate": ("promoted: " if verdict.promote else "not promoted: ") + verdict.reason,
                                    "version": version}))
    version = registry.publish(store, out / "policy", candidate, out / "report", version=version, extra=lineage,
                               card=card)
    if head is not None:  # the evidence the decision rests on, beside the version
        store.put_json(f"versions/{version}/gate_head_to_head.json", head)
    registry.set_alias(store, "candidate", version)  # the challenger, promoted or not
    decision["candidate"] = version
    if verdict.promote:
        registry.promote(store, version)
        decision["version"] = version
    return decision
