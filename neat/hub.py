"""`neat push-to-hub`: share a policy on the Hugging Face Hub, with its model card.

Pushes the merged checkpoint (the default) or the LoRA adapter alone (`--adapter`, what people usually
share), from this run's `<out>/policy` or from a registry version (`--version`, `--alias`). The card
(README.md) goes with either. The token comes from the environment (`HF_TOKEN`) or `hf auth login`,
never from params.yaml.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from neat.errors import NeatError
from neat.modelcard import CARD_NAME
from neat.models import ADAPTER_DIR


class HubError(NeatError):
    """The hub refused the upload or cannot be reached."""


def staged_folder(policy_dir: Path, adapter: bool, tmp: Path) -> Path:
    """The folder to upload: the policy as is, or its adapter plus the policy's card."""
    policy_dir = Path(policy_dir)
    if not (policy_dir / "config.json").is_file():
        raise NeatError(f"{policy_dir}: not a saved policy (no config.json); run `neat train` first")
    if not adapter:
        return policy_dir
    source = policy_dir / ADAPTER_DIR
    if not (source / "adapter_config.json").is_file():
        raise NeatError(f"{policy_dir}: has no LoRA adapter ({ADAPTER_DIR}/); it was trained with "
                        "policy.lora.enabled: false, so push the merged model (without --adapter)")
    target = tmp / "adapter"
    shutil.copytree(source, target)
    if (policy_dir / CARD_NAME).is_file():
        shutil.copy2(policy_dir / CARD_NAME, target / CARD_NAME)
    return target


def push_to_hub(policy_dir: str | Path, repo_id: str, *, adapter: bool = False, private: bool = True,
                commit_message: str | None = None) -> dict:
    """Create `repo_id` if needed and upload the policy (or its adapter) with its card; returns the commit."""
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory(prefix="neat-hub-") as tmp:
        folder = staged_folder(Path(policy_dir), adapter, Path(tmp))
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        api = HfApi()
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                       commit_message=commit_message or
                                       f"NEAT policy{' adapter' if adapter else ''} from {policy_dir}")
        except NeatError:
            raise
        except Exception as exc:  # noqa: BLE001 - network, auth, quota: one line naming the repo
            raise HubError(f"push to hub repo {repo_id} failed ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); is HF_TOKEN set?") from None
    return {"repo_id": repo_id, "adapter": adapter, "files": files,
            "commit": str(getattr(commit, "commit_url", commit))}
