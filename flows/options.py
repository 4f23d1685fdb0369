"""The flows' `overrides` parameter as a typed model, so the Prefect UI shows a form, not a JSON box.

`ParamOverrides` mirrors params.yaml's schema (neat.config.Params): one sub-form per section, each
key typed as the schema types it and described, every one optional (left empty: the file's value).
It also takes the dotted form, {"train.lr": 1e-5}, as `-S`, `dvc exp run -S` and older callers pass it.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from neat.config import Params

_KEEP = "empty: the params.yaml value"


def _optional_copy(model: type[BaseModel], prefix: str) -> type[BaseModel]:
    """`model` with every field optional (default None), described, nested sections copied likewise."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            doc = f"params.yaml section `{dotted}`"
            fields[name] = (Optional[_optional_copy(kind, f"{dotted}.")], Field(None, description=doc))
        else:
            doc = f"`{dotted}`: {info.description}" if info.description else f"`{dotted}`"
            default = info.get_default(call_default_factory=True)
            fields[name] = (Optional[kind], Field(None, description=f"{doc} ({_KEEP}; default {default!r})"))
    title = "".join(part.capitalize() for part in prefix.rstrip(".").split(".")) or "Params"
    return create_model(f"{title}Overrides", __config__=ConfigDict(extra="forbid"), **fields)


_Sections = _optional_copy(Params, "")


def _also_dotted_keys(schema: dict[str, Any]) -> None:
    # the server checks a deployment run's parameters against this schema: let dotted keys through
    schema.pop("additionalProperties", None)
    schema["patternProperties"] = {r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$": {}}


class ParamOverrides(_Sections):
    """Parameters of params.yaml for this run only; empty fields keep the file's values."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_also_dotted_keys)

    @model_validator(mode="before")
    @classmethod
    def _nest_dotted_keys(cls, data: Any) -> Any:
        """{"train.lr": 1e-5} → {"train": {"lr": 1e-5}}; a null value sets nothing, so it is refused."""
        if not isinstance(data, dict) or not any("." in str(k) for k in data):
            return data
        nested: dict[str, Any] = {}
        for key, value in data.items():
            if value is None:
                raise ValueError(f"override '{key}': null is no override (it means: keep the params.yaml value); "
                                 "edit params.yaml to set a key to null")
            *sections, leaf = str(key).split(".")
            node = nested
            for part in sections:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ValueError(f"override '{key}': '{part}' is a value, not a section")
            node[leaf] = value
        return nested

    def dotted(self) -> dict[str, Any]:
        """{"train.lr": 1e-5, ...}: the fields that were filled in, as `set_params_in_file` takes them."""
        flat: dict[str, Any] = {}

        def walk(node: BaseModel, prefix: str) -> None:
            as_json = node.model_dump(mode="json")  # a list of gate metrics as plain dicts, as YAML holds them
            for name in type(node).model_fields:
                value = getattr(node, name)
                if isinstance(value, BaseModel):  # a section (each leaf is a value, a list or None)
                    walk(value, f"{prefix}{name}.")
                elif value is not None:
                    flat[f"{prefix}{name}"] = as_json[name]

        walk(self, "")
        return flat
