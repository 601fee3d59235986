"""YAML with line numbers: a config file loads into plain values plus where each value was written.

PyYAML's safe loader is used for parsing only; values are built here from its node tree so that:

* every mapping key and sequence item remembers its line (``Document.line_of(path)``), and an
  error deep inside (``routes[2].match.did``) names the line it is on;
* duplicate keys are errors (PyYAML silently keeps the last one);
* numbers keep the text they were written as (:class:`YamlInt`, :class:`YamlFloat`): a DID written
  ``+4930123`` or ``0044`` must not become the integer 4930123 or the octal 36;
* ``${VAR}`` references in strings are expanded from the environment (:func:`expand_env`);
* mapping keys are always strings (``0:`` in a DTMF map is the key ``"0"``);
* a document is bounded: an alias that contains itself, nesting deeper than
  :data:`MAX_DEPTH` or aliases expanding to more than :data:`MAX_VALUES` values (a "billion
  laughs" file) are errors, not a hang or a crash.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, TypeVar

import yaml

from sipbot.errors import ConfigError
from sipbot.secret import expand_env

Path = tuple[str | int, ...]
T = TypeVar("T")

_INT_TAG: Final = "tag:yaml.org,2002:int"
_FLOAT_TAG: Final = "tag:yaml.org,2002:float"
_STR_TAG: Final = "tag:yaml.org,2002:str"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
MAX_DEPTH: Final = 64  # nested mappings/sequences; a dialplan needs fewer than 10
MAX_VALUES: Final = 20_000  # values built, aliases expanded; a large dialplan has a few 1000


class YamlInt(int):
    """An integer that remembers how it was written (``text``)."""

    text: str


class YamlFloat(float):
    """A float that remembers how it was written (``text``)."""

    text: str


def source_text(value: Any) -> str | None:
    """The text a YAML scalar was written as, for numbers that should have been strings."""
    text = getattr(value, "text", None)
    return text if isinstance(text, str) else None


def format_path(path: Path) -> str:
    """``("routes", 2, "match", "did")`` → ``routes[2].match.did``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass(frozen=True, slots=True)
class Document:
    """A loaded YAML document: its plain value and the 1-based line of every key and item."""

    data: Any
    filename: str
    lines: Mapping[Path, int]

    def line_of(self, path: Path) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None

    def error(self, path: Path, message: str) -> ConfigError:
        """A :class:`ConfigError` for ``path`` with this document's file and line.

        The message is made one line (an imported tool module's exception may span several).
        """
        return ConfigError(
            " ".join(message.split()),
            file=self.filename,
            line=self.line_of(path),
            field=format_path(path) or None,
        )


def load_yaml(text: str, filename: str, environ: Mapping[str, str] | None = None) -> Document:
    """Parse ``text`` (one YAML document) into a :class:`Document`.

    Args:
        text: the YAML source.
        filename: shown in errors.
        environ: where ``${VAR}`` references are looked up (default ``os.environ``).

    Raises:
        ConfigError: invalid YAML, a duplicate key, an unset environment variable.
    """
    deep = _too_deep(text)
    if deep is not None:  # PyYAML's scanner is quadratic in flow nesting: 1000 deep takes s
        raise ConfigError(
            f"invalid YAML: nested more than {MAX_DEPTH} deep", file=filename, line=deep
        )
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:  # PyYAML composes recursively: [[[[...]]]] thousands deep
        raise ConfigError(
            f"invalid YAML: nested more than {MAX_DEPTH} deep", file=filename
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "cannot parse"
        raise ConfigError(f"invalid YAML: {problem}", file=filename, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=filename) from None
    builder = _Builder(filename, environ)
    data = {} if root is None else builder.build(root, ())
    builder.lines.setdefault((), 1)
    return Document(data, filename, builder.lines)


def _too_deep(text: str) -> int | None:
    """The line where ``[``/``{`` nest more than :data:`MAX_DEPTH` deep, or None.

    A linear scan that skips quoted text and comments (close enough: brackets inside a plain
    block scalar count too, and nobody writes 64 of them unclosed).
    """
    depth, line, quote, comment, previous = 0, 1, "", False, " "
    for char in text:
        if char == "\n":
            line, comment = line + 1, False
        elif comment:
            pass
        elif quote:
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "#" and previous in " \t\n":
            comment = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return line
        elif char in "]}":
            depth = max(0, depth - 1)
        previous = char
    return None


class _Builder:
    def __init__(self, filename: str, environ: Mapping[str, str] | None) -> None:
        self.filename = filename
        self.environ = environ
        self.lines: dict[Path, int] = {}
        self._constructor = yaml.SafeLoader("")
        self._open: list[yaml.Node] = []  # the collections being built, outermost first
        self._values = 0

    def build(self, node: yaml.Node, path: Path) -> Any:
        self._values += 1
        if self._values > MAX_VALUES:
            message = f"more than {MAX_VALUES} values (aliases expanding without bound?)"
            raise self._error(path, node.start_mark.line + 1, message)
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if isinstance(node, yaml.MappingNode):
            return self._nested(node, path, lambda: self._mapping(node, path))
        assert isinstance(node, yaml.SequenceNode)
        return self._nested(node, path, lambda: self._sequence(node, path))

    def _nested(self, node: yaml.Node, path: Path, make: Callable[[], T]) -> T:
        """``make()`` for a collection node, unless it is already open (an alias inside the
        value it names) or too deep."""
        line = node.start_mark.line + 1
        if any(node is open_node for open_node in self._open):
            raise self._error(path, line, "an alias inside the value it names (recursive)")
        if len(self._open) >= MAX_DEPTH:
            raise self._error(path, line, f"nested more than {MAX_DEPTH} deep")
        self._open.append(node)
        try:
            return make()
        finally:
            self._open.pop()

    def _sequence(self, node: yaml.SequenceNode, path: Path) -> list[Any]:
        items = []
        for index, item in enumerate(node.value):
            self.lines.setdefault((*path, index), item.start_mark.line + 1)
            items.append(self.build(item, (*path, index)))
        return items

    def _mapping(self, node: yaml.MappingNode, path: Path, merging: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merges = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise self._error(path, key_node.start_mark.line + 1, "a key must be a string")
            key = str(key_node.value)
            key_path = (*path, key)
            if key in out:
                raise self._error(key_path, key_node.start_mark.line + 1, "duplicate key")
            if merging:
                self.lines.setdefault(key_path, key_node.start_mark.line + 1)
            else:
                self.lines[key_path] = key_node.start_mark.line + 1
            out[key] = self.build(value_node, key_path)
        for merge in merges:
            for key, value in self._merge_source(merge, path).items():
                out.setdefault(key, value)
        return out

    def _merge_source(self, node: yaml.Node, path: Path) -> dict[str, Any]:
        # ``<<: *defaults`` or ``<<: [*a, *b]``: explicit keys win, then earlier sources
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        merged: dict[str, Any] = {}
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                line = source.start_mark.line + 1
                raise self._error(path, line, "a merge key (<<) needs a mapping")
            mapping = self._nested(source, path, partial(self._mapping, source, path, True))
            for key, value in mapping.items():
                merged.setdefault(key, value)
        return merged

    def _scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        try:
            value = self._constructor.construct_object(node, deep=True)
        except (ValueError, yaml.YAMLError) as exc:  # e.g. a date 2025-13-01
            message = f"invalid value {node.value!r}: {exc}"
            raise self._error(path, node.start_mark.line + 1, message) from None
        if node.tag == _INT_TAG and isinstance(value, int) and not isinstance(value, bool):
            number = YamlInt(value)
            number.text = node.value
            return number
        if node.tag == _FLOAT_TAG and isinstance(value, float):
            real = YamlFloat(value)
            real.text = node.value
            return real
        if node.tag == _STR_TAG and isinstance(value, str):
            try:
                return expand_env(value, self.environ)
            except ConfigError as exc:
                raise self._error(path, node.start_mark.line + 1, exc.message) from None
        return value

    def _error(self, path: Path, line: int, message: str) -> ConfigError:
        return ConfigError(message, file=self.filename, line=line, field=format_path(path) or None)
