"""Incoming data for retraining, found and fetched through the registry's `Store` (S3 prefix or folder)."""

from __future__ import annotations

import os
import time

import pytest

from neat.config import load_params
from neat.errors import DataError
from neat.retrain import fetch_incoming, newest_incoming
from tests.conftest import ROOT

DEMO = (ROOT / "data/demo/hh_demo.jsonl").read_bytes()


def params_with(incoming: str, data: str = "data/demo/hh_demo.jsonl"):
    return load_params(ROOT / "params.yaml", {"retrain.incoming": incoming, "paths.data": data})


def test_newest_file_of_an_s3_prefix_is_fetched(tmp_path, monkeypatch):
    from moto import mock_aws

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        import boto3

        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="incoming")
        s3.put_object(Bucket="incoming", Key="prefs/batch-001.jsonl", Body=DEMO)
        s3.put_object(Bucket="incoming", Key="prefs/notes.txt", Body=b"not data")  # newer, not a data file
        params = params_with("s3://incoming/prefs")
        location, _ = newest_incoming(params)
        assert location == "s3://incoming/prefs/batch-001.jsonl"
        assert fetch_incoming(params, tmp_path) == "data/incoming/batch-001.jsonl"
    assert (tmp_path / "data/incoming/batch-001.jsonl").read_bytes() == DEMO


def test_newest_file_of_a_folder_wins_and_a_missing_folder_names_the_key(tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for i, name in enumerate(["b.jsonl", "a.jsonl"]):  # a.jsonl is written last: it is the newest
        (incoming / name).write_bytes(DEMO)
        os.utime(incoming / name, (time.time() + i, time.time() + i))
    (incoming / "z.txt").write_text("not data")
    assert newest_incoming(params_with(str(incoming)))[0] == f"{incoming}/a.jsonl"
    assert fetch_incoming(params_with(str(incoming)), tmp_path / "project") == "data/incoming/a.jsonl"
    with pytest.raises(DataError, match="retrain.incoming: .*no-such-folder: folder not found"):
        newest_incoming(params_with(str(tmp_path / "no-such-folder")))
