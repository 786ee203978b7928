"""Reading YAML that users write (params, MLmodel files): plain data, one meaning per text.

PyYAML's safe loader still speaks YAML 1.1: `yes`/`no`/`on`/`off` are booleans,
`017` is octal 15, `1e-4` is a string, a duplicated key silently keeps the last
value and aliases can expand a few lines into gigabytes ("billion laughs").
`StrictLoader` resolves plain scalars by YAML 1.2's core schema instead (only
`true`/`false` are booleans, `null`/`~`/empty is null, decimal/`0x`/`0o` ints,
floats with an exponent), refuses a number with a leading zero (YAML 1.1 and 1.2
read it differently), a duplicated key (naming it and both lines), and anchors
and aliases altogether: params are small files, written out in full.
PyYAML is kept for parsing (no other kept library does 1.2 with these checks);
only the scalar resolution and the mapping construction are ours.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node

from trtflow.errors import ParamsError, TrtflowError

_AMBIGUOUS_INT = "tag:trtflow,2026:ambiguous-int"
# Size limits, checked before the rest is parsed: params and MLmodel files are small,
# hand-written files; a huge one is a mistake (or an attack) and would cost gigabytes
# of memory to parse (a 50 MB list took 5.8 GB).
MAX_FILE_BYTES = 1 << 20  # 1 MiB
MAX_STRING_CHARS = 4096  # a path or a name; PATH_MAX on Linux
MAX_LIST_ITEMS = 10_000


class YamlRefused(yaml.YAMLError):
    """YAML that parses but is refused: its `line` (1-based) and what was wrong."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line, self.problem = line, problem


class StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core scalars, no duplicate keys, no anchors or aliases."""

    yaml_implicit_resolvers: dict[str, list[tuple[str, re.Pattern[str]]]] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        line = event.start_mark.line + 1 if event.start_mark is not None else 0
        if isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_STRING_CHARS:
            raise YamlRefused(line,
                              f"a value of {len(event.value):,} characters; at most "
                              f"{MAX_STRING_CHARS:,} are accepted (names and paths)")
        if isinstance(index, int) and index >= MAX_LIST_ITEMS:
            raise YamlRefused(line,
                              f"a list of more than {MAX_LIST_ITEMS:,} items; params lists "
                              "are short (batch sizes, shapes, precisions)")
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            kind, name = ("alias *", event.anchor) if isinstance(event, yaml.AliasEvent) \
                else ("anchor &", event.anchor)
            raise YamlRefused(event.start_mark.line + 1,
                              f"YAML anchors and aliases are refused ({kind}{name}): they can "
                              "expand a small file into a huge one; write the value out in full")
        return super().compose_node(parent, index)  # type: ignore[no-any-return]

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # a list or mapping as a key
                raise YamlRefused(line, "a mapping key must be a plain value") from None
            if first is not None:
                raise YamlRefused(line, f"duplicate key {key!r} (first set on line {first}); "
                                  "each key may appear once per mapping")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


def _ambiguous_int(loader: StrictLoader, node: Node) -> Any:
    text = str(node.value)
    raise YamlRefused(node.start_mark.line + 1,
                      f"the number {text} has a leading zero, which YAML 1.1 reads as octal "
                      f"and YAML 1.2 as decimal; write {int(text)} (or quote it for a string)")


def _add(tag: str, pattern: str, first: str) -> None:
    StrictLoader.add_implicit_resolver(tag, re.compile(pattern, re.X), list(first))


# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution), plus the
# leading-zero refusal; the order matters: the first matching resolver wins.
_add("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", "~nN")
StrictLoader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^$"), None)
_add("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF")
_add(_AMBIGUOUS_INT, r"^[-+]?0[0-9]+$", "-+0")
_add("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789")
_add("tag:yaml.org,2002:float",
     r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
          |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", "-+0123456789.")
StrictLoader.add_constructor(_AMBIGUOUS_INT, _ambiguous_int)


def _int_1_2(loader: StrictLoader, node: Node) -> int:
    text = str(loader.construct_scalar(node))  # type: ignore[arg-type]
    if text.startswith(("0o", "0x")):
        return int(text, 0)
    return int(text)


def _float_1_2(loader: StrictLoader, node: Node) -> float:
    text = str(loader.construct_scalar(node)).lower()  # type: ignore[arg-type]
    if text.endswith(".inf"):
        return float("-inf") if text.startswith("-") else float("inf")
    if text == ".nan":
        return float("nan")
    return float(text)


StrictLoader.add_constructor("tag:yaml.org,2002:int", _int_1_2)
StrictLoader.add_constructor("tag:yaml.org,2002:float", _float_1_2)
# explicit 1.1-only tags a file might name (`!!timestamp`, `!!set`, ...) stay refused
for _tag in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:set",
             "tag:yaml.org,2002:omap", "tag:yaml.org,2002:pairs", "tag:yaml.org,2002:binary"):
    StrictLoader.add_constructor(_tag, StrictLoader.construct_undefined)  # type: ignore[type-var]


def parse_yaml(text: str, source: str, error: type[TrtflowError] = ParamsError) -> Any:
    """Parse `text` strictly; any problem is `error` naming `source` and the line."""
    if len(text) > MAX_FILE_BYTES:
        raise error(f"{source}: {len(text):,} characters; a YAML file trtflow reads may have "
                    f"at most {MAX_FILE_BYTES:,} (1 MiB)")
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except YamlRefused as exc:
        raise error(f"{source}: line {exc.line}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None


def load_yaml(path: Path, error: type[TrtflowError] = ParamsError) -> Any:
    """Read and parse a YAML file a user wrote; errors name the file (and line)."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise error(f"{path}: {size:,} bytes; a YAML file trtflow reads may have at most "
                        f"{MAX_FILE_BYTES:,} (1 MiB): expected a small hand-written file")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}): expected a YAML file") \
            from None
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror})") from None
    return parse_yaml(text, str(path), error)


class _PlainDumper(yaml.SafeDumper):
    """SafeDumper that writes a value shared by two keys out twice instead of as an
    anchor and alias, which `StrictLoader` refuses."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(data: Any) -> str:
    """YAML text that `load_yaml` reads back: no anchors, keys in the given order."""
    return yaml.dump(data, Dumper=_PlainDumper, sort_keys=False)
