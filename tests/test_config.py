import pytest
import yaml

from neat.config import Params, load_params, validate_params
from neat.errors import ConfigError
from tests.conftest import ROOT


def test_project_params_file_is_valid_and_complete():
    params = load_params(ROOT / "params.yaml")
    # every schema key is spelled out in params.yaml, so DVC's params lists can point at any of them
    tree = yaml.safe_load((ROOT / "params.yaml").read_text())

    def keys(node, prefix=""):
        for k, v in node.items():
            yield prefix + k
            if isinstance(v, dict):
                yield from keys(v, prefix + k + ".")

    assert set(keys(params.model_dump())) == set(keys(tree))


@pytest.mark.parametrize(
    "tree, expected",
    [
        ({"train": {"lrr": 1}}, "unknown key 'train.lrr'; accepted keys here: rounds, loss"),
        ({"bogus": 1}, "unknown key 'bogus'; accepted keys here: seed, paths"),
        ({"train": {"lr": -1}}, "train.lr: Input should be greater than 0 (got -1)"),
        ({"train": {"loss": "ppo"}}, "train.loss: Input should be 'rrhf', 'pro' or 'dpo' (got 'ppo')"),
        ({"expand": {"k_neg": "two"}}, "expand.k_neg: Input should be a valid integer"),
        ({"policy": {"lora": {"r": 0}}}, "policy.lora.r: Input should be greater than or equal to 1"),
        ({"data": {"eval_fraction": 0.6, "judge_fraction": 0.5}}, "eval_fraction + judge_fraction must be below 1"),
        ({"train": "fast"}, "train: Input should be a valid dictionary"),
    ],
)
def test_bad_values_give_one_line_naming_key(tree, expected):
    with pytest.raises(ConfigError) as info:
        validate_params(tree, "params.yaml")
    message = str(info.value)
    assert message.startswith("params.yaml: ")
    assert expected in message
    assert "\n" not in message


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_params(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(listy)


def test_overrides_are_typed_and_validated(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  lr: 0.001\n")
    params = load_params(path, ["train.lr=1e-5", "expand.k_neg=0", "policy.lora.enabled=false"])
    assert params.train.lr == pytest.approx(1e-5)
    assert params.expand.k_neg == 0 and params.policy.lora.enabled is False
    assert load_params(path).train.lr == pytest.approx(0.001)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_params(path, ["train.lr"])
    with pytest.raises(ConfigError, match="expand.k_pos: Input should be greater than or equal to 0"):
        load_params(path, ["expand.k_pos=-3"])


def test_defaults_round_trip():
    params = Params()
    assert validate_params(params.model_dump()) == params


def _leaves(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _leaves(v, prefix + k + ".")
        else:
            yield prefix + k, v


PROJECT_VALUES = dict(_leaves(yaml.safe_load((ROOT / "params.yaml").read_text())))
SCHEMA_DEFAULTS = dict(_leaves(Params().model_dump(mode="json")))


@pytest.mark.parametrize("key", sorted(PROJECT_VALUES))
def test_schema_default_equals_params_yaml(key):
    """One source of defaults: a tree that leaves `key` out gets what params.yaml says."""
    assert key in SCHEMA_DEFAULTS, f"params.yaml has '{key}', which neat/config.py's schema does not know"
    schema, project = SCHEMA_DEFAULTS[key], PROJECT_VALUES[key]
    assert schema == project, (f"'{key}': neat/config.py's default is {schema!r} but params.yaml says {project!r}; "
                               "make the schema default equal params.yaml")


def test_every_schema_key_is_in_params_yaml():
    missing = sorted(set(SCHEMA_DEFAULTS) - set(PROJECT_VALUES))
    assert not missing, f"keys with a schema default but no value in params.yaml: {missing}"
