"""Extract the TensorRT Python API (class, enum and member names) from NVIDIA's sources.

NVIDIA's TensorRT repository (github.com/NVIDIA/TensorRT) holds the pybind11 bindings
the `tensorrt` module is built from (`python/src/**/*.cpp`) and the Python wrapper
that adds `__version__` and `nptype` (`python/packaging/bindings_wheel/tensorrt/__init__.py`).
This script reads them at given commits of a local clone and writes the names as a
small JSON fixture (`tensorrt_python_api.json`, committed), which
tests/unit/test_tensorrt_backend.py checks every name of `typings/tensorrt` against.

    python typings/tensorrt_api/extract.py /path/to/TensorRT/.git \
        10.16.1=5302b288 11.1.0=82d1dca8 > typings/tensorrt_api/tensorrt_python_api.json

It is a reader of pybind11's chained `.def("name", ...)` calls, not a C++ parser: it
knows `py::class_<T, Bases...>(scope, "Name")`, `py::enum_<T>(scope, "Name")`
(`.value`, `.export_values()`), bindings held in a variable and extended later, and
module-level `m.def`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from typing import Any

BINDING_DIRS = ("python/src/",)
WRAPPER = "python/packaging/bindings_wheel/tensorrt/__init__.py"
DECL = re.compile(r"py::(class_|enum_)\s*<")
MEMBER = re.compile(r"\.\s*(def|def_property|def_property_readonly|def_readwrite|def_readonly|"
                    r"def_static|def_property_static|def_property_readonly_static|value)"
                    r"\s*\(\s*\"([A-Za-z_][A-Za-z0-9_]*)\"")
MODULE_DEF = re.compile(r"\bm\s*\.\s*def\s*\(\s*\"([A-Za-z_][A-Za-z0-9_]*)\"")
KWARG = re.compile(r"\"(\w+)\"_a")
CALLABLE = ("def", "def_static")
PY_DEF = re.compile(r"^def ([A-Za-z_][A-Za-z0-9_]*)\(", re.M)


def _git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", repo, *args], check=True, capture_output=True,
                          text=True).stdout


def _skip_string(text: str, i: int) -> int:
    """Index after the string literal starting at text[i] == '"' (raw strings: R"(...)")."""
    if text[i - 1] == "R" and text[i + 1] == "(":
        end = text.index(')"', i + 2)
        return end + 2
    i += 1
    while text[i] != '"':
        i += 2 if text[i] == "\\" else 1
    return i + 1


def _statement_end(text: str, i: int) -> int:
    """Index of the ';' ending the statement that starts at i (depth 0, strings skipped)."""
    depth = 0
    while i < len(text):
        c = text[i]
        if c == '"':
            i = _skip_string(text, i)
            continue
        if c == "'" and text[i + 2:i + 3] == "'":  # a char literal such as '('
            i += 3
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == ";" and depth <= 0:
            return i
        i += 1
    return i


def _template_args(text: str, i: int) -> tuple[list[str], int]:
    """The comma-separated template arguments from text[i] (just after '<')."""
    depth, start, args = 1, i, []
    while depth:
        c = text[i]
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "," and depth == 1:
            args.append(text[start:i].strip())
            start = i + 1
        i += 1
    args.append(text[start:i - 1].strip())
    return args, i


def _close_paren(text: str, i: int) -> int:
    """Index of the ')' closing the '(' at text[i]."""
    depth = 0
    while True:
        c = text[i]
        if c == '"':
            i = _skip_string(text, i)
            continue
        depth += c == "("
        depth -= c == ")"
        if depth == 0:
            return i
        i += 1


def _members(body: str) -> dict[str, list[str]]:
    """Member name -> keyword argument names (pybind11 `"name"_a`, every overload)."""
    members: dict[str, set[str]] = defaultdict(set)
    for m in MEMBER.finditer(body):
        call = body[m.start():_close_paren(body, body.index("(", m.start()))]
        members[m.group(2)] |= set(KWARG.findall(call)) if m.group(1) in CALLABLE else set()
    return {k: sorted(v) for k, v in members.items()}


def _bindings(sources: list[str]) -> dict[str, Any]:
    """{'classes': {Name: {'members': {name: [kwargs]}, 'bases': [...]}}, 'functions': [...]}."""
    found: list[dict[str, Any]] = []
    for text in sources:
        for match in DECL.finditer(text):
            args, after = _template_args(text, match.end())
            head = re.match(r"\s*([A-Za-z_]\w*)?\s*[({]\s*([A-Za-z_]\w*)\s*,\s*\"(\w+)\"",
                            text[after:])
            if head is None:
                continue
            var, scope, name = head.groups()
            end = _statement_end(text, after)
            body = text[after:end]
            found.append({"cpp": args[0], "args": args[1:], "var": var, "scope": scope,
                          "name": name, "enum": match.group(1) == "enum_", "body": body,
                          "text": text})
    cpp_to_name = {f["cpp"]: f["name"] for f in found}
    var_to_name = {f["var"]: f["name"] for f in found if f["var"]}
    classes: dict[str, dict[str, Any]] = defaultdict(lambda: {"members": {}, "bases": set()})
    for f in found:
        parent = var_to_name.get(f["scope"]) if f["scope"] != "m" else None
        qualified = f"{parent}.{f['name']}" if parent else f["name"]
        members = _members(f["body"])
        entry = classes[qualified]
        entry["members"].update(members)
        entry["bases"] |= {cpp_to_name[a] for a in f["args"] if a in cpp_to_name}
        if parent:
            classes[parent]["members"][f["name"]] = []
            if ".export_values()" in f["body"]:
                classes[parent]["members"].update(members)
        if f["var"]:  # later statements `var.def(...)` extend this binding
            for later in re.finditer(rf"\b{re.escape(f['var'])}\s*\.", f["text"]):
                end = _statement_end(f["text"], later.start())
                entry["members"].update(_members(f["text"][later.start() - 1:end]))
    functions = sorted({m.group(1) for text in sources for m in MODULE_DEF.finditer(text)})
    return {"classes": {k: {"members": dict(sorted(v["members"].items())),
                            "bases": sorted(v["bases"])} for k, v in sorted(classes.items())},
            "functions": functions}


def extract(repo: str, commit: str) -> dict[str, Any]:
    files = [p for p in _git(repo, "ls-tree", "-r", "--name-only", commit).splitlines()
             if p.startswith(BINDING_DIRS) and p.endswith(".cpp")]
    api = _bindings([_git(repo, "show", f"{commit}:{p}") for p in files])
    wrapper = _git(repo, "show", f"{commit}:{WRAPPER}")
    api["functions"] = sorted(set(api["functions"]) | set(PY_DEF.findall(wrapper)))
    api["module_attributes"] = sorted(set(re.findall(r"^(__\w+__)\s*=", wrapper, re.M)))
    api["commit"] = _git(repo, "rev-parse", commit).strip()
    api["files"] = sorted(files + [WRAPPER])
    return api


def main(argv: list[str]) -> None:
    repo, *versions = argv
    out = {"source": "https://github.com/NVIDIA/TensorRT", "generated_by":
           "typings/tensorrt_api/extract.py", "versions": {}}
    for item in versions:
        version, commit = item.split("=")
        out["versions"][version] = extract(repo, commit)
    # one line per class: a small fixture whose diffs read well
    text = json.dumps(out, indent=1, sort_keys=True)
    text = re.sub(r"\n\s+(?=[\]\}\"\w-])(?![^\n]*\": \{\n)", " ", text)
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
