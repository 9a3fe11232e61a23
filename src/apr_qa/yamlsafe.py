"""YAML input files (golden prompts, playbooks) read with yaml.safe_load's types, minus aliases.

An alias (`*name`) repeats a node without writing it again: nine nested levels of ten aliases make
a 400-byte file that expands to 10^9 nodes for whatever walks, validates or prints it (jsonschema
formats the offending value into its message). Our config files need no aliases, so a file with
one is refused, as is nesting deeper than Python's recursion limit.
"""

from __future__ import annotations

from typing import Any

import yaml


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def load(text: str) -> Any:
    """The document in `text`; yaml.YAMLError for bad YAML, an alias or too deep nesting."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise yaml.YAMLError("nesting too deep") from None
