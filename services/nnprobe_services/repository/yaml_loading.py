"""YAML from clients, bounded: ``load`` reads one document with PyYAML's safe loader (plain data, no Python
objects) that also refuses aliases (``*name``, merge keys ``<<: *name`` included), nesting deeper than
``MAX_DEPTH`` and duplicate keys in a mapping.

Aliases are refused because a few hundred bytes of nested aliases ("billion laughs") expand into billions of
nodes when the document is used or printed; without them a document holds at most as many nodes as its text
has characters. Every failure of the text, whatever the parser raises, is ``InvalidArgument`` naming
``field`` with a message of bounded length that says where (line and column).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from nnprobe_services.errors import InvalidArgument
from nnprobe_services.repository.quoting import cap, quote

#: The deepest nesting of lists and mappings accepted (the config's own schema needs 3).
MAX_DEPTH = 16


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without aliases, with a nesting limit and without duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ComposerError(
                None,
                None,
                f"uses the alias *{cap(str(event.anchor), 40)}; aliases (and merge keys) are not accepted: "
                "write the value out",
                event.start_mark,
            )
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise ComposerError(
                    None,
                    None,
                    f"nests lists or mappings deeper than {MAX_DEPTH}",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        mapping = super().construct_mapping(node, deep=deep)
        if len(mapping) != len(node.value):  # a key given twice (equal values, merge keys included)
            seen: set[Any] = set()
            repeated: Any = ""
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    repeated = key
                    break
                seen.add(key)
            raise ConstructorError(None, None, f"repeats the key {quote(repeated)}", node.start_mark)
        return mapping


def _where(error: Exception) -> str:
    mark = getattr(error, "problem_mark", None)
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def load(text: str, field: str) -> Any:
    """The one YAML document in ``text``; ``InvalidArgument`` naming ``field`` for anything that fails."""
    try:
        return yaml.load(text, Loader=BoundedLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        problem = " ".join(part for part in (error.context, error.problem) if part)
        raise InvalidArgument(f"is not valid YAML: {cap(problem, 160)}{_where(error)}", field=field) from None
    except Exception as error:  # whatever else a parser raises for client text (values it cannot convert)
        raise InvalidArgument(
            f"is not valid YAML: {type(error).__name__}: {cap(str(error), 160)}", field=field
        ) from None
