"""Missing or refused S3 credentials are named as such (with the variables to check), never blamed on the
endpoint, and no message carries the secret (issue 12)."""

from __future__ import annotations

import logging
import subprocess

import pytest

from neat import registry
from neat.cli import main
from neat.config import validate_params
from neat.registry import RegistryError
from neat.s3_errors import dvc_failure_message
from tests.conftest import former_defaults

SECRET = "super-secret-value-1234"
HINT = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"

# built at run time so no tracked file holds a string shaped like an AWS key id (a test scans for them)
WRONG_KEY_ID = "AKIA" + "WRONG" * 3 + "0"


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _store(endpoint="http://127.0.0.1:9"):
    params = validate_params(former_defaults({"registry": {"uri": "s3://models/x", "endpoint_url": endpoint}}))
    store = registry.open_store(params.registry)
    store.client.meta.config.retries = {"max_attempts": 1}
    return store


def test_missing_credentials_are_not_blamed_on_the_endpoint(no_credentials):
    with pytest.raises(RegistryError) as info:
        registry.production(_store())
    message = str(info.value)
    assert "s3://models/x" in message and "NoCredentialsError" in message and HINT in message
    assert "endpoint" not in message


def test_refused_credentials_name_the_variables_without_the_secret(monkeypatch):
    import moto.settings
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", WRONG_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with mock_aws():
        import boto3

        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="models")
        monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto checks keys from now on
        store = registry.S3Store("s3://models/neat", None, "us-east-1")
        with pytest.raises(RegistryError) as info:
            registry.production(store)
    message = str(info.value)
    assert HINT in message and "InvalidAccessKeyId" in message
    assert SECRET not in message and "endpoint" not in message


def test_an_unreachable_endpoint_is_not_called_a_credentials_problem(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with pytest.raises(RegistryError) as info:
        registry.production(_store())
    message = str(info.value)
    assert "cannot reach the S3 endpoint" in message and HINT not in message and SECRET not in message


def test_neat_registry_without_credentials_is_one_line_exit_2(no_credentials, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("registry:\n  uri: s3://models/x\n  endpoint_url: http://127.0.0.1:9\n")
    assert main(["registry", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("neat: error: s3://models/x") and HINT in err
    assert "Traceback" not in err


@pytest.mark.parametrize("output", ["ERROR: unexpected error - Forbidden",
                                    "ERROR: failed to push: An error occurred (403) when calling the HeadObject "
                                    "operation: Forbidden",
                                    "ERROR: InvalidAccessKeyId: The AWS Access Key Id you provided does not exist"])
def test_dvc_credentials_failures_get_a_hint_and_no_secret(output, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    message = dvc_failure_message("dvc push", 1, f"using key {SECRET}\n{output}")
    assert HINT in message and SECRET not in message and "***" in message


def test_dvc_connection_failures_get_no_credentials_hint():
    message = dvc_failure_message("dvc pull", 1, "ERROR: failed to connect to s3 (http://minio:9000): Connection refused")
    assert "Connection refused" in message and HINT not in message


def test_retrain_flow_names_the_credentials_when_dvc_pull_is_forbidden(tmp_path, monkeypatch):
    """The flow's own failure message (what Prefect shows) carries the hint, and not the secret."""
    import flows.pipeline as fp

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    (tmp_path / "params.yaml").write_text("retrain:\n  dvc_pull: true\n")
    calls = []

    def fake_run(cmd, cwd, env=None):
        calls.append(cmd[1:])
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr=f"ERROR: unexpected error - Forbidden {SECRET}")

    monkeypatch.setattr(fp, "run", fake_run)
    monkeypatch.setattr(fp, "get_run_logger", lambda: logging.getLogger("test"))
    with pytest.raises(RuntimeError) as info:
        fp.neat_retrain.fn(str(tmp_path))
    assert calls == [["pull", "--allow-missing"]]
    assert "dvc pull failed" in str(info.value) and HINT in str(info.value) and SECRET not in str(info.value)


def test_refused_upload_names_the_credentials(monkeypatch, tmp_path):
    """boto3's upload_file wraps the service's answer in S3UploadFailedError (it used to escape as exit 3)."""
    import moto.settings
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", WRONG_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    (tmp_path / "f").write_text("x")
    with mock_aws():
        import boto3

        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="models")
        monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
        store = registry.S3Store("s3://models/neat", None, "us-east-1")
        with pytest.raises(RegistryError) as info:
            store.put("versions/v1/policy/f", tmp_path / "f")
    assert HINT in str(info.value) and SECRET not in str(info.value)
