"""Reads a user's YAML file into plain Python values, remembering where each value came from.

Support teams edit these files by hand, so every way a file can be wrong becomes a
`Problem` with a file, line and column instead of a traceback: not UTF-8, tabs, empty,
too large, nested too deep, YAML syntax, duplicate keys, aliases.

Scalars follow YAML 1.2's core schema rather than PyYAML's 1.1 defaults: `yes`, `no`, `on`
and `off` stay text (a customer typing "no" must not become False) and dates stay text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bot.errors import InvalidFiles, Problem

MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 16

Path_ = tuple[str | int, ...]


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and without implicit timestamps."""


# YAML 1.1 ones; 1.2 booleans are added below
_YAML_11_ONLY = (
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:timestamp",
)
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML_11_ONLY]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
# YAML 1.2 floats: `2e-4` is a number (PyYAML's 1.1 rule wants a dot).
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


@dataclass
class Document:
    """A parsed file: its value plus the position of every value and mapping key in it."""

    path: str
    value: Any
    marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def where(self, loc: Path_, *, key: bool = False) -> tuple[int, int]:
        """Position of the value (or its key) at `loc`; falls back to the nearest parent."""
        loc = tuple(loc)
        if key and loc in self.key_marks:
            return self.key_marks[loc]
        while loc not in self.marks and loc:
            loc = loc[:-1]
        return self.marks.get(loc, (1, 1))

    def problem(self, loc: Path_, message: str, *, key: bool = False) -> Problem:
        line, col = self.where(loc, key=key)
        return Problem(self.path, line, col, message)


def _pos(mark: yaml.Mark) -> tuple[int, int]:
    return mark.line + 1, mark.column + 1


def load(file: Path, display_path: str) -> Document:
    """Parse one YAML file; raises InvalidFiles with a single located problem if it can't."""
    return load_bytes(file.read_bytes(), display_path)


def load_bytes(data: bytes, display_path: str) -> Document:
    """Parse a YAML file's content (shown as `display_path` in problems)."""

    def fail(line: int, col: int, message: str) -> InvalidFiles:
        return InvalidFiles([Problem(display_path, line, col, message)])

    if len(data) > MAX_FILE_BYTES:
        raise fail(1, 1, f"file is {len(data):,} bytes; the limit is {MAX_FILE_BYTES:,}: split it into several files")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise fail(
            line, col, f"file is not UTF-8 text (byte 0x{data[e.start]:02x} can't be decoded): save it as UTF-8"
        ) from None
    text = text.removeprefix("\ufeff")

    for number, line_text in enumerate(text.splitlines(), start=1):
        indent = line_text[: len(line_text) - len(line_text.lstrip(" \t"))]
        if "\t" in indent:
            raise fail(number, indent.index("\t") + 1, "tab character in indentation: indent with spaces")

    try:
        depth = 0
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.AliasEvent):
                line, col = _pos(event.start_mark)
                raise fail(line, col, "aliases (*name) are not supported here: write the value out")
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    line, col = _pos(event.start_mark)
                    raise fail(line, col, f"nested more than {MAX_DEPTH} levels deep")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
        nodes = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = _pos(mark) if mark else (1, 1)
        detail = e.problem or "invalid YAML"
        if e.context:
            detail += f" {e.context}"
            if e.context_mark and e.context_mark is not mark:
                detail += " started at line {}:{}".format(*_pos(e.context_mark))
        raise fail(line, col, f"YAML syntax: {detail}") from None
    except yaml.reader.ReaderError as e:  # a character YAML does not allow in a file (control characters)
        before = text[: e.position]
        line, col = before.count("\n") + 1, e.position - (before.rfind("\n") + 1) + 1
        raise fail(
            line,
            col,
            f"character U+{e.character:04X} is not allowed in YAML: remove it, "
            "or write it escaped in a double-quoted text",
        ) from None

    if not nodes or nodes[0] is None:
        raise fail(1, 1, "file is empty")
    if len(nodes) > 1:
        raise fail(*_pos(nodes[1].start_mark), "more than one YAML document in the file (remove the '---')")
    doc = Document(display_path, None)
    doc.value = _convert(nodes[0], (), doc)
    return doc


_constructor = _Loader("")


def _convert(node: yaml.Node, loc: Path_, doc: Document) -> Any:
    doc.marks[loc] = _pos(node.start_mark)
    if isinstance(node, yaml.ScalarNode):
        return _constructor.construct_object(node)
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, loc + (i,), doc) for i, item in enumerate(node.value)]
    result: dict[str, Any] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise InvalidFiles([Problem(doc.path, *_pos(key_node.start_mark), "a key must be plain text")])
        key = str(_constructor.construct_object(key_node))
        if key in result:
            first = doc.key_marks[loc + (key,)]
            raise InvalidFiles(
                [Problem(doc.path, *_pos(key_node.start_mark), f"duplicate key '{key}' (first at line {first[0]})")]
            )
        doc.key_marks[loc + (key,)] = _pos(key_node.start_mark)
        result[key] = _convert(value_node, loc + (key,), doc)
    return result
