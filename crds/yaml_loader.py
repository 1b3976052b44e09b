"""Read YAML the way kubectl does, with bounds on what a file may cost.

kubectl parses manifests with go-yaml v2 (YAML 1.1) through sigs.k8s.io/yaml, and PyYAML differs
from it on plain scalars. This loader resolves them as kubectl does:

- booleans: y/Y/yes/on/true and n/N/no/off/false in their three casings (PyYAML lacks y and n);
- integers: decimal, 0x, 0o, 0b and leading-0 octal, `_` ignored (PyYAML lacks 0o, and reads
  `1:30` as the base-60 integer 90, where kubectl keeps the string);
- floats: `1e3` is a float (PyYAML needs a dot and a signed exponent);
- timestamps stay strings (go-yaml v2 keeps them as strings for an untyped target);
- keys become JSON strings as sigs.k8s.io/yaml makes them (`y:` is the key "true");
- a key repeated in one mapping is an error, as with `kubectl apply --validate=strict`.

Bounds (the same loader reads `aistack validate`, `aistack run` and the gateway's `--agents`
files): at most MAX_FILE_BYTES per file, regular files only, and at most MAX_EXPANDED_NODES
nodes per document once aliases are expanded, so an alias bomb ("billion laughs") fails in
milliseconds instead of expanding in the validator. Messages are one line and short.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 4 * 1024 * 1024  # the API server takes at most 3 MiB per request
MAX_EXPANDED_NODES = 100_000  # a large real CR has a few thousand
MAX_MESSAGE_VALUE = 80


class YamlLoadError(ValueError):
    """A file that cannot be read as manifests: one line, naming the file and the place."""


def short(value: Any, limit: int = MAX_MESSAGE_VALUE) -> str:
    """repr(value), cut to `limit` characters: messages never carry a whole document."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 14]}... ({len(text):,} chars)"


def short_text(value: str, limit: int = MAX_MESSAGE_VALUE) -> str:
    """A string as `short` gives it, without repr's quotes (the closing one is cut with the rest)."""
    text = short(value, limit)
    return text[1:-1] if len(text) == len(repr(value)) else text[1:]


_BOOL = re.compile(
    r"^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$"
)
_TRUE = {"y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"}
_INT = re.compile(r"^[-+]?(?:[0-9][0-9_]*|0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+)$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_SPECIAL_FLOAT = re.compile(r"^(?:[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")


class _Resolver(yaml.resolver.Resolver):
    """go-yaml v2's resolution of plain scalars (PyYAML's YAML 1.1 table, corrected)."""


_Resolver.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag.rsplit(":", 1)[-1] in ("null", "merge")]
    for first, resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items()
}
_Resolver.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("yYnNtTfFoO"))
_Resolver.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_Resolver.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+.0123456789"))
_Resolver.add_implicit_resolver("tag:yaml.org,2002:float", _SPECIAL_FLOAT, list("-+."))


def _json_key(key: Any) -> Any:
    """Keys as sigs.k8s.io/yaml turns them into JSON: `y: 1` is {"true": 1}."""
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    return str(key) if isinstance(key, int | float) else key


class _Constructor(yaml.constructor.SafeConstructor):
    def construct_yaml_bool(self, node: yaml.ScalarNode) -> bool:
        return str(self.construct_scalar(node)) in _TRUE

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = str(self.construct_scalar(node)).replace("_", "")
        sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text.lstrip("+"))
        if re.fullmatch(r"0[0-7]+", digits):  # YAML 1.1 octal, as Go's ParseInt(s, 0, 64)
            return sign * int(digits, 8)
        try:
            return sign * int(digits, 0)
        except ValueError:  # e.g. 09: not an octal integer, so Go reads it as the float 9
            return sign * float(digits)  # type: ignore[return-value]

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        text = str(self.construct_scalar(node)).lower()
        if text.endswith("inf"):
            return float("-inf") if text.startswith("-") else float("inf")
        return float("nan") if text.endswith("nan") else float(text)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """String keys (as JSON has), and a repeated key is an error; merge keys (`<<`) still merge."""
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self._key(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {short(key)} in a mapping", key_node.start_mark
                )
            seen.add(key)
        self.flatten_mapping(node)
        return {self._key(k): self.construct_object(v, deep=deep) for k, v in node.value}

    def _key(self, key_node: yaml.Node) -> Any:
        key = self.construct_object(key_node, deep=True)
        if isinstance(key, list | dict):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a scalar", key_node.start_mark
            )
        return _json_key(key)


for _tag, _method in [
    ("tag:yaml.org,2002:bool", _Constructor.construct_yaml_bool),
    ("tag:yaml.org,2002:int", _Constructor.construct_yaml_int),
    ("tag:yaml.org,2002:float", _Constructor.construct_yaml_float),
    # an explicit !!timestamp is kept as text too: the API speaks JSON
    ("tag:yaml.org,2002:timestamp", yaml.constructor.SafeConstructor.construct_yaml_str),
]:
    _Constructor.add_constructor(_tag, _method)

try:
    from yaml.cyaml import CParser  # libyaml: about 10x faster than the pure-Python parser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    CParser = None


if CParser is not None:

    class _Loader(CParser, _Constructor, _Resolver):  # type: ignore[misc]
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _Constructor.__init__(self)
            _Resolver.__init__(self)

else:  # pragma: no cover - PyYAML built without libyaml

    class _Loader(  # type: ignore[no-redef]
        yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer,
        _Constructor, _Resolver,
    ):  # fmt: skip
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            yaml.composer.Composer.__init__(self)
            _Constructor.__init__(self)
            _Resolver.__init__(self)


def _check_expansion(root: yaml.Node, limit: int) -> None:
    """Count the document's nodes with aliases expanded (shared nodes counted once per use)."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise YamlLoadError(f"line {node.start_mark.line + 1}: an alias refers to its own anchor")
        open_.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children: list[yaml.Node] = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:
                raise YamlLoadError(
                    f"line {node.start_mark.line + 1}: more than {limit:,} nodes once aliases are "
                    "expanded (an alias bomb?)"
                )
        open_.discard(key)
        sizes[key] = total
        return total

    size(root)


def _one_line(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        return f"line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}: {exc.problem}"
    return " ".join(str(exc).split())[:200]


def load_documents(text: str, max_nodes: int = MAX_EXPANDED_NODES) -> list[Any]:
    """The documents of a YAML stream, as kubectl reads them (empty documents skipped)."""
    loader = _Loader(text)
    try:
        documents = []
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            _check_expansion(node, max_nodes)
            value = loader.construct_document(node)
            if value is not None:
                documents.append(value)
        return documents
    except yaml.YAMLError as exc:
        raise YamlLoadError(f"not valid YAML: {_one_line(exc)}") from None
    except RecursionError:
        raise YamlLoadError("nested too deeply") from None
    finally:
        loader.dispose()


def read_manifest_file(path: Path, max_bytes: int = MAX_FILE_BYTES) -> list[Any]:
    """The YAML documents of a file; YamlLoadError (one line, naming the file) if it cannot be one."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise YamlLoadError(f"{path}: not a regular file")
        if info.st_size > max_bytes:
            raise YamlLoadError(
                f"{path}: {info.st_size / 2**20:.1f} MiB is over the {max_bytes / 2**20:.0f} MiB limit"
            )
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise YamlLoadError(f"{path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise YamlLoadError(f"{path}: over the {max_bytes / 2**20:.0f} MiB limit")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise YamlLoadError(f"{path}: not UTF-8 (byte {exc.start})") from None
    try:
        return load_documents(text)
    except YamlLoadError as exc:
        raise YamlLoadError(f"{path}: {exc}") from None
