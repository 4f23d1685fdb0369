"""`neat` command line: one subcommand per stage, plus tools such as `neat data inspect`."""

from __future__ import annotations

import argparse
import json
import os
import sys

from neat.failures import describe, write_outcome


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter for this run, e.g. -S train.lr=1e-5 (repeatable)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    from neat.stages import STAGES

    from neat import __version__

    parser = argparse.ArgumentParser(prog="neat", description="Negative-prompt-driven alignment pipeline",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"neat {__version__}")
    from neat.logs import LEVELS

    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true",
                           help="only warnings and errors on stderr, no progress bars (JSON summaries still print)")
    verbosity.add_argument("--log-level", default="INFO", type=str.upper, choices=LEVELS,
                           help="messages on stderr from this level up (default: INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="inspect preference data").add_subparsers(dest="data_command", required=True)
    inspect = data.add_parser("inspect", help="rows read/kept, skip reasons, token length percentiles")
    inspect.add_argument("path", help="HH or TRL .jsonl/.jsonl.gz/.json, or hub:<dataset id>")
    inspect.add_argument("--format", default="auto", choices=["auto", "hh", "trl"])
    inspect.add_argument("--tokenizer", default=None,
                         help="model reference whose tokenizer counts tokens (default: policy.model from params)")
    inspect.add_argument("--no-tokens", action="store_true", help="skip token counts (no model needed)")
    inspect.add_argument("--json", action="store_true", help="print the figures as JSON")
    _add_common(inspect)

    for stage in STAGES.values():
        stage_parser = sub.add_parser(stage.name, help=stage.help, description=stage.describe(),
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
        if stage.resumable:
            stage_parser.add_argument("--resume", action="store_true",
                                      help="continue from the last checkpoint of the same inputs and params")
        if stage.name == "compare":
            stage_parser.add_argument(
                "--variants", default=None,
                help="comma-separated variants to run (of neat,rrhf,sft,neat_pro,dpo,online_dpo,rlcd), each with "
                     "its seeds in compare.variants or else `seed` (default: the keys of compare.variants)")
        if stage.foreach:
            stage_parser.add_argument(stage.foreach[1], required=True, metavar="NAME",
                                      help=f"the key of `{stage.foreach[0]}` to run (one DVC stage instance each)")
        _add_common(stage_parser)

    rollback = sub.add_parser("rollback", help="move the registry's production pointer back one version")
    _add_common(rollback)
    promote = sub.add_parser(
        "promote", help="publish <out>/policy as the registry's candidate; make it production if the gate passes",
        description="Publish this checkout's evaluated policy (<out>/policy with metrics/evaluate.json) to the "
                    "registry as the `candidate`, and move `production` to it if the gate (params `gate`) "
                    "passes. The scheduled retraining flow runs the same after its pipeline run.")
    _add_common(promote)
    status = sub.add_parser(
        "registry", help="show the production and candidate aliases (metrics, lineage), or move one",
        description="Show the registry's two aliases, `production` (the champion) and `candidate` (the latest "
                    "challenger the gate judged), each with its metrics, lineage and history:\n\n"
                    "  neat registry\n\nor point an alias at a published version (logged; nothing is deleted):\n\n"
                    "  neat registry alias production v20240501T120000123456Z\n  neat registry alias candidate v2",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    status.add_argument("words", nargs="*", metavar="alias NAME VERSION",
                        help="`alias production|candidate VERSION` moves that alias; nothing shows both")
    _add_common(status)

    hub = sub.add_parser("push-to-hub", help="upload a policy (or its LoRA adapter) with its model card to the HF Hub",
                         description="Upload <out>/policy, or a registry version, to a Hugging Face Hub model repo "
                                     "(created if needed), with its README.md model card. The token comes from "
                                     "HF_TOKEN or `hf auth login`.")
    hub.add_argument("repo_id", help="hub repo, e.g. me/neat-smollm2")
    hub.add_argument("--adapter", action="store_true", help="push the LoRA adapter alone (policy/adapter/)")
    hub.add_argument("--version", default=None, help="push this registry version instead of <out>/policy")
    hub.add_argument("--alias", default=None, choices=["production", "candidate"],
                     help="push the registry version this alias points at")
    hub.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    _add_common(hub)

    deps = sub.add_parser("dvc-yaml", aliases=["dvc-deps"],
                          help="write dvc.yaml and compare/dvc.yaml from the stage manifest (neat/stages.py) and "
                               "each stage's imports")
    deps.add_argument("--check", action="store_true",
                      help="only check: exit 1 if either file differs from what the manifest and the code generate")
    deps.add_argument("--dvc-yaml", default="dvc.yaml",
                      help="the pipeline's file to check or rewrite, compare/dvc.yaml beside it (default: dvc.yaml)")
    deps.add_argument("--debug", action="store_true", help="show tracebacks")

    show = sub.add_parser("params", help="print the validated parameters (with overrides applied)")
    _add_common(show)
    return parser


def _cmd_inspect(args) -> int:
    from neat.data import format_inspection, inspect_preferences, read_preferences

    tokenizer = None
    if not args.no_tokens:
        from neat.config import load_params
        from neat.models import load_tokenizer

        ref = args.tokenizer
        cache = None
        if ref is None or os.path.exists(args.params):
            params = load_params(args.params, args.overrides) if os.path.exists(args.params) else None
            ref = ref or (params.policy.model if params else "builtin:smollm2-135m-instruct")
            cache = params.paths.cache if params else None
        tokenizer = load_tokenizer(ref, cache_dir=cache)
    result = read_preferences(args.path, args.format)
    stats = inspect_preferences(result)
    if tokenizer is not None:
        from neat.encoding import token_lengths

        stats |= token_lengths(tokenizer, result.pairs)
    print(json.dumps(stats, indent=2) if args.json else format_inspection(stats))
    return 0


def _cmd_dvc_yaml(args) -> int:
    from pathlib import Path

    from neat.codedeps import sync_all

    changes = sync_all(Path(args.dvc_yaml), write=not args.check)
    for stage, change in changes.items():
        words = [f"+{d}" for d in change.get("add", [])] + [f"-{d}" for d in change.get("remove", [])]
        words += [f"~{field}" for field in change.get("fields", [])] + ([change["layout"]] if "layout" in change else [])
        print(f"{stage}: {' '.join(words)}")
    if args.check and changes:
        print(f"{args.dvc_yaml} or compare/dvc.yaml beside it: differs from the stage manifest and the stages' "
              "imports; run `neat dvc-yaml`", file=sys.stderr)
        return 1
    return 0


def _cmd_registry(args, params) -> int:
    from neat import registry
    from neat.errors import ConfigError

    store = registry.open_store(params.registry)
    if not args.words:
        print(json.dumps(registry.status(store), indent=2, default=str))
        return 0
    if len(args.words) != 3 or args.words[0] != "alias":
        raise ConfigError(f"neat registry {' '.join(args.words)}: expected `neat registry` or "
                          "`neat registry alias production|candidate VERSION`")
    _, name, version = args.words
    print(json.dumps({name: registry.set_alias(store, name, version)}, indent=2))
    return 0


def _cmd_push_to_hub(args, params) -> int:
    import tempfile
    from pathlib import Path

    from neat.hub import push_to_hub

    if args.version or args.alias:
        from neat import registry

        store = registry.open_store(params.registry)
        version = args.version
        if args.alias:
            pointer = registry.alias(store, args.alias)
            if pointer is None:
                raise registry.RegistryError(f"the registry has no {args.alias} version yet")
            version = pointer["version"]
        with tempfile.TemporaryDirectory(prefix="neat-push-") as tmp:
            policy = registry.fetch_policy(store, registry.check_version(version), Path(tmp))
            result = push_to_hub(policy, args.repo_id, adapter=args.adapter, private=not args.public,
                                 commit_message=f"NEAT registry version {version}")
    else:
        result = push_to_hub(params.out("policy"), args.repo_id, adapter=args.adapter, private=not args.public)
    print(json.dumps(result, indent=2))
    return 0


def dispatch(args) -> int:
    from neat.config import load_params, params_to_dict
    from neat.stages import STAGES, run_stage

    if args.command == "data":
        return _cmd_inspect(args)
    if args.command in ("dvc-yaml", "dvc-deps"):
        return _cmd_dvc_yaml(args)
    params = load_params(args.params, args.overrides)
    if args.command == "params":
        import yaml

        print(yaml.safe_dump(params_to_dict(params), sort_keys=False), end="")
        return 0
    if args.command == "rollback":
        from neat import registry

        from pathlib import Path

        from neat.workspace import stage_lock

        with stage_lock(Path(args.params).resolve().parent):  # it writes the registry: one writer per checkout
            pointer = registry.rollback(registry.open_store(params.registry))
        print(json.dumps(pointer, indent=2))
        return 0
    if args.command == "promote":
        from pathlib import Path

        from neat.promotion import promote_if_better
        from neat.workspace import stage_lock

        project = Path(args.params).resolve().parent
        with stage_lock(project):  # it writes the registry: one writer per checkout
            decision = promote_if_better(project, params)
        print(json.dumps(decision, indent=2, default=str))
        return 0
    if args.command == "registry":
        return _cmd_registry(args, params)
    if args.command == "push-to-hub":
        return _cmd_push_to_hub(args, params)
    if args.command in STAGES:
        options = {"resume": True} if getattr(args, "resume", False) else {}
        if getattr(args, "variants", None):
            options["variants"] = args.variants.split(",")
        if getattr(args, "variant", None):
            options["variant"] = args.variant
        from pathlib import Path

        from neat.output_sets import recover
        from neat.workspace import stage_lock

        with stage_lock(Path(args.params).resolve().parent):  # the checkout whose params.yaml this is
            recover(params.out())  # finish an output set a killed stage left half-committed
            summary = run_stage(args.command, params, **options)
        if summary and os.environ.get("RANK", "0") == "0":  # once under accelerate launch / torchrun
            print(json.dumps(summary, indent=2, default=str))
        return 0
    raise AssertionError(args.command)


def _where(args) -> str:
    """The command and its input, named in an error that carries no file of its own."""
    if args.command == "data":
        return f"neat data inspect {args.path}"
    return f"neat {args.command} (params {args.params})"


def main(argv: list[str] | None = None) -> int:
    """Run one command; any failure ends as one `neat: error:` line (exit 2: bad input, 3: internal error)."""
    args = build_parser().parse_args(argv)
    from neat.logs import configure

    configure(args.log_level, quiet=args.quiet)
    try:
        code = dispatch(args)
    except KeyboardInterrupt as exc:
        _close_progress_bars()
        print("neat: interrupted", file=sys.stderr)
        write_outcome(args.command, 130, exc, "interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - the top-level guard: every failure becomes one line
        code, line = describe(exc, _where(args))
        write_outcome(args.command, code, exc, line)
        if args.debug:
            raise
        _close_progress_bars()
        print(f"neat: error: {line}", file=sys.stderr)
        return code
    write_outcome(args.command, code)
    return code


def _close_progress_bars() -> None:
    """End any progress bar left open by the failed stage, so the error starts on a line of its own."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - best effort, the error message matters more
            pass


if __name__ == "__main__":
    sys.exit(main())
