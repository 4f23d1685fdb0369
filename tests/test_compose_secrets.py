"""docker/compose.yaml: the worker signs in as a bucket-scoped MinIO user, not as root, and no secret
reaches a command line (issue 12). Parsed statically: there is no Docker engine in CI."""

from __future__ import annotations

import json
import re

import yaml

from tests.conftest import ROOT

DOCKER = ROOT / "docker"
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN", re.IGNORECASE)
VARIABLE = re.compile(r"\$\$?\{?([A-Za-z_][A-Za-z0-9_]*)")


def _env(service: str) -> dict:
    env = SERVICES[service].get("environment", {})
    return env if isinstance(env, dict) else dict(item.split("=", 1) for item in env)


def _argv_texts():
    """(service, text) of every command and entrypoint, and of the scripts an entrypoint runs."""
    for name, svc in SERVICES.items():
        for key in ("command", "entrypoint"):
            value = svc.get(key)
            if value is not None:
                yield name, value if isinstance(value, str) else " ".join(value)


def test_worker_keys_are_not_the_minio_root_user():
    env = _env("worker")
    key_id = str(env.get("AWS_ACCESS_KEY_ID", ""))
    assert key_id and "MINIO_ROOT" not in key_id
    assert "MINIO_ROOT" not in json.dumps(env) and "AWS_SECRET_ACCESS_KEY" not in env  # secret: a file, not env
    assert "minio_root_password" not in SERVICES["worker"].get("secrets", [])
    assert "minio_root_user" not in SERVICES["worker"].get("secrets", [])


def test_worker_user_is_created_with_a_policy_limited_to_the_buckets():
    init = (DOCKER / "minio" / "minio-init.sh").read_text()
    assert "mc admin user add local \"$NEAT_WORKER_ACCESS_KEY\"" in init
    assert "mc admin policy attach local neat-worker --user" in init
    policy = json.loads((DOCKER / "minio" / "worker-policy.json").read_text())
    resources = [r for st in policy["Statement"] for r in st["Resource"]]
    assert resources and all(re.fullmatch(r"arn:aws:s3:::neat-(dvc|models|incoming)(/\*)?", r) for r in resources)
    assert all(st["Effect"] == "Allow" and not any(a in ("*", "s3:*") or a.startswith("admin:") for a in st["Action"])
               for st in policy["Statement"])
    assert "minio-init" in SERVICES and SERVICES["minio-init"]["entrypoint"][-1] == "/etc/neat/minio-init.sh"
    assert SERVICES["worker"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


def test_no_secret_value_or_variable_appears_in_any_command():
    example = dict(line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert not [k for k in example if SECRET_NAME.search(k)], "secrets belong in docker/secrets, not .env"
    texts = list(_argv_texts())
    init = (DOCKER / "minio" / "minio-init.sh").read_text()
    assert texts
    for service, text in texts:
        named = [v for v in VARIABLE.findall(text) if SECRET_NAME.search(v) and not v.startswith("AWS_SECRET_ACCESS_KEY")]
        assert not named, (service, named)
        # the worker exports its secret key from the file, inside the shell (no process gets it as an argument)
        assert "AWS_SECRET_ACCESS_KEY=$$(cat /run/secrets/" in text or "AWS_SECRET_ACCESS_KEY" not in text
    # in the init script, root credentials travel in MC_HOST_local and the worker's key on stdin
    mc_lines = [ln for ln in init.splitlines() if ln.strip().startswith("mc ")]
    assert mc_lines and not [ln for ln in mc_lines if re.search(r"password|secret_key\b|root_user\b", ln)
                             and "< /run/secrets/" not in ln], mc_lines


def test_minio_reads_its_root_credentials_from_files():
    env = _env("minio")
    assert env.get("MINIO_ROOT_PASSWORD_FILE", "").startswith("/run/secrets/")
    assert env.get("MINIO_ROOT_USER_FILE", "").startswith("/run/secrets/")
    assert "MINIO_ROOT_PASSWORD" not in env and "MINIO_ROOT_USER" not in env
    for name, spec in COMPOSE["secrets"].items():
        assert spec["file"].startswith("./secrets/"), name
    assert "docker/secrets/" in (ROOT / ".gitignore").read_text().splitlines()
