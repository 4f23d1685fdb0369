"""YAML for params files and overrides: safe, strict, and refusing what silently goes wrong.

* a key written twice in one mapping is an error (plain YAML keeps the last and drops the first);
* aliases (`*name`) are refused: params need none, and nested ones expand exponentially (alias bombs);
* a parse failure is one ConfigError line with the line number, quoting at most a few characters.
"""

from __future__ import annotations

from typing import Any

import yaml

from neat.errors import ConfigError


class _StrictLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, f"alias '*{str(event.anchor)[:40]}' is not allowed in params (aliases can expand "
                "exponentially)", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{str(key)[:60]}' appears twice in one section (first at line "
                    f"{seen[key].line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    """The YAML document in `text`, parsed strictly; `source` names it in errors."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}: not valid YAML{where}: {str(problem)[:200]}") from None
    except (ValueError, RecursionError) as exc:  # a 5000-digit integer, nesting deeper than Python's stack
        raise ConfigError(f"{source}: not valid YAML: {type(exc).__name__}: {str(exc)[:150]}") from None
