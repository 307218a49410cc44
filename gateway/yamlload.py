"""YAML loading that remembers where every value came from, so errors can say file:line.

Every configuration file enters the gateway here, so this is where hostile or broken input is
stopped (issue 7.2):

- only regular files are read (a FIFO, a device or a symlink to /dev/zero is refused without
  opening it for long: `os.stat` first, then `O_NONBLOCK`), and at most `max_bytes` of them;
- the text must be UTF-8 without NUL bytes (otherwise `file:line: yaml: not UTF-8 text ...`);
- duplicate keys in one mapping are errors (YAML parsers silently keep the last one);
- anchors and aliases are allowed (`<<: *defaults`), but the document they expand to is bounded
  (`MAX_EXPANDED_NODES`), so an alias bomb ("billion laughs") is refused before it grows, and a
  recursive alias is refused.

Parsing uses libyaml through PyYAML's C loader (`yaml.CSafeLoader`): about 50 times faster than a
pure-Python parser, which is what makes a configuration of thousands of meters load in seconds
(issue 8.5). Scalars are resolved with the YAML 1.2 core schema, so `yes`, `no`, `on`, `off` stay
strings and `017` is seventeen, as YAML 1.2 says.

Mappings and sequences come back as `LineDict` / `LineList`: a plain dict or list (what pydantic
validates) that also carries the 1-based line of itself and of each key or item.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import stat
from pathlib import Path
from typing import Any

try:
    import yaml
    import yaml.cyaml
except ImportError as _err:  # pragma: no cover - a venv installed before PyYAML became a dependency
    raise ImportError("PyYAML is a dependency of carbon-gateway: run `.venv/bin/pip install -e '.[test]'`") from _err

from gateway.errors import ConfigError

DEFAULT_MAX_FILE_BYTES = 1_000_000  # limits.max_config_file_bytes; gateway.yaml itself always uses this
MAX_EXPANDED_NODES = 1_000_000  # nodes a document may expand to through aliases (far above any real config)


class LineDict(dict):  # type: ignore[type-arg]
    """A dict that knows the line of itself (`line`) and of each of its keys (`key_lines`)."""

    __slots__ = ("key_lines", "line")

    def __init__(self, line: int | None = None) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Any, int] = {}


class LineList(list):  # type: ignore[type-arg]
    """A list that knows the line of itself (`line`) and of each item (`item_lines`)."""

    __slots__ = ("item_lines", "line")

    def __init__(self, line: int | None = None) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


# -- YAML 1.2 core schema on libyaml --------------------------------------------------------------

class _Resolver(yaml.resolver.BaseResolver):
    pass


_Resolver.yaml_implicit_resolvers = {}
_Resolver.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                list("tTfF"))
_Resolver.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                                list("-+0123456789"))
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))
_Resolver.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])
_Resolver.add_implicit_resolver(  # dates stay dates (calibration records), as in every YAML library
    "tag:yaml.org,2002:timestamp",
    re.compile(r"""^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?
                |[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?
                 (?:[Tt]|[ \t]+)[0-9][0-9]?
                 :[0-9][0-9] :[0-9][0-9] (?:\.[0-9]*)?
                 (?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$""", re.X),
    list("0123456789"))
_Resolver.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])


if yaml.__with_libyaml__:
    class _Loader(yaml.cyaml.CParser, yaml.constructor.SafeConstructor, _Resolver):  # type: ignore[misc]
        def __init__(self, stream: str) -> None:
            yaml.cyaml.CParser.__init__(self, stream)
            yaml.constructor.SafeConstructor.__init__(self)
            _Resolver.__init__(self)

        # libyaml calls these for every node: the generic versions cost a third of the parse time of a
        # large configuration. Same results (no path resolvers are used).
        def descend_resolver(self, current_node: Any, current_index: Any) -> None:
            pass

        def ascend_resolver(self) -> None:
            pass

        def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
            if kind is yaml.ScalarNode:
                if implicit[0]:
                    for tag, regexp in _IMPLICIT.get(value[:1], ()):
                        if regexp.match(value):
                            return tag  # type: ignore[no-any-return]
                return _STR
            return _SEQ if kind is yaml.SequenceNode else _MAP
else:  # pragma: no cover - PyYAML wheels ship libyaml; same results, slower
    class _Loader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser,  # type: ignore[no-redef]
                  yaml.composer.Composer, yaml.constructor.SafeConstructor, _Resolver):
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            _Resolver.__init__(self)


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    value = str(loader.construct_scalar(node))
    if value.startswith("0o"):
        return int(value[2:], 8)
    if value.startswith("0x"):
        return int(value[2:], 16)
    return int(value, 10)


def _construct_timestamp(loader: _Loader, node: yaml.ScalarNode) -> Any:
    try:
        return yaml.constructor.SafeConstructor.construct_yaml_timestamp(loader, node)
    except ValueError as err:  # 2026-02-30
        raise yaml.constructor.ConstructorError(None, None, f"'{node.value}' is not a valid date ({err})",
                                                node.start_mark) from None


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Any:
    data = LineDict(node.start_mark.line + 1)
    yield data
    loader.flatten_mapping(node)  # `<<` merge keys
    merged = getattr(node, "_merged", 0)
    own: set[Any] = set()
    for i, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=False)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a plain value",
                                                    key_node.start_mark) from None
        if i >= merged:  # the mapping's own keys may override merged ones, never each other
            if key in own:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
            own.add(key)
        data[key] = loader.construct_object(value_node, deep=False)
        data.key_lines[key] = key_node.start_mark.line + 1


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> Any:
    data = LineList(node.start_mark.line + 1)
    yield data
    for item in node.value:
        data.append(loader.construct_object(item, deep=False))
        data.item_lines.append(item.start_mark.line + 1)


_STR, _SEQ, _MAP = "tag:yaml.org,2002:str", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"
_IMPLICIT = {k: tuple(v) for k, v in _Resolver.yaml_implicit_resolvers.items()}
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def _flatten_with_count(self: _Loader, node: yaml.MappingNode) -> None:
    """SafeConstructor.flatten_mapping, remembering how many leading pairs came from `<<` merges
    (those may be overridden by the mapping's own keys; two own keys with one name may not)."""
    before = [k for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"]
    yaml.constructor.SafeConstructor.flatten_mapping(self, node)
    node._merged = len(node.value) - len(before)  # type: ignore[attr-defined]


_Loader.flatten_mapping = _flatten_with_count  # type: ignore[method-assign]


_MERGE = "tag:yaml.org,2002:merge"


def _build(loader: _Loader, node: yaml.Node) -> Any:
    """What construct_document builds (same types, lines, merge keys, duplicate-key errors), for a
    document without anchors, by plain recursion instead of PyYAML's generator-based constructor."""
    cls = node.__class__
    if cls is yaml.ScalarNode:
        return node.value if node.tag == _STR else loader.construct_object(node, deep=True)
    if cls is yaml.SequenceNode:
        if node.tag != _SEQ:
            return loader.construct_object(node, deep=True)
        seq = LineList(node.start_mark.line + 1)
        for item in node.value:
            seq.append(_build(loader, item))
            seq.item_lines.append(item.start_mark.line + 1)
        return seq
    if node.tag != _MAP:
        return loader.construct_object(node, deep=True)
    data = LineDict(node.start_mark.line + 1)
    merged = 0
    if any(k.tag == _MERGE for k, _ in node.value):
        loader.flatten_mapping(node)
        merged = node._merged  # type: ignore[attr-defined]
    own: set[Any] = set()
    for i, (key_node, value_node) in enumerate(node.value):
        key = _build(loader, key_node)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a plain value",
                                                    key_node.start_mark) from None
        if i >= merged:
            if key in own:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
            own.add(key)
        data[key] = _build(loader, value_node)
        data.key_lines[key] = key_node.start_mark.line + 1
    return data


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """Number of nodes the document has once every alias is expanded; raises ValueError above
    `limit` or on a recursive alias. Linear in the composed graph (memoised per node)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ValueError("recursive alias (a node contains itself)")
        total = 1
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            active.add(key)
            children = (c for pair in node.value for c in pair) if isinstance(node, yaml.MappingNode) else node.value
            for child in children:
                total += size(child)
                if total > limit:
                    raise ValueError(f"aliases expand the document to more than {limit:,} nodes")
            active.discard(key)
        sizes[key] = total
        return total

    return size(root)


# -- reading a file safely --------------------------------------------------------------------

def read_config_bytes(path: Path, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES, setting: str = "") -> bytes:
    """The bytes of a regular file of at most `max_bytes`, or a ConfigError naming the file."""
    limit_hint = f" (raise {setting})" if setting else ""
    try:
        st = os.stat(path)
    except OSError as err:
        raise ConfigError(f"cannot read file: {err.strerror}", file=str(path)) from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"not a regular file ({_kind(st.st_mode)}); configuration files must be regular files",
                          file=str(path))
    if st.st_size > max_bytes:
        raise ConfigError(f"file is {st.st_size:,} bytes, above the limit of {max_bytes:,}{limit_hint}", file=str(path))
    try:
        # O_NONBLOCK: if the path was swapped for a FIFO after the stat, open and read do not hang.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise ConfigError(f"cannot read file: {err.strerror}", file=str(path)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError("not a regular file; configuration files must be regular files", file=str(path))
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise ConfigError(f"file is above the limit of {max_bytes:,} bytes{limit_hint}", file=str(path))
            chunks.append(chunk)
    except OSError as err:
        raise ConfigError(f"cannot read file: {err.strerror}", file=str(path)) from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"


def decode_text(data: bytes, path: Path) -> str:
    """UTF-8 text without NUL bytes, or a ConfigError at the line of the first bad byte."""
    nul = data.find(b"\x00")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = err.start if nul < 0 else min(nul, err.start)
        line = data.count(b"\n", 0, bad) + 1
        what = "a NUL byte: a binary file, not YAML" if bad == nul else f"byte 0x{data[bad]:02x} is not UTF-8"
        raise ConfigError(f"not UTF-8 text ({what})", file=str(path), line=line, field="yaml") from None
    if nul >= 0:
        raise ConfigError("not UTF-8 text (a NUL byte: a binary file, not YAML)", file=str(path),
                          line=data.count(b"\n", 0, nul) + 1, field="yaml")
    return text


def parse_yaml(text: str, path: Path, *, max_nodes: int = MAX_EXPANDED_NODES) -> Any:
    """Parse YAML text into LineDict/LineList/scalars; every failure is a ConfigError with a line."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if "&" in text:  # no anchor, no alias: the composed graph is a tree of the file's own size
            try:
                _expanded_size(node, max_nodes)
            except ValueError as err:
                raise ConfigError(f"malformed YAML: {err}", file=str(path), line=node.start_mark.line + 1,
                                  field="yaml") from None
            except RecursionError:
                raise ConfigError("malformed YAML: nested too deeply", file=str(path), field="yaml") from None
        if "&" not in text:
            return _build(loader, node)  # a tree without shared nodes: built directly, twice as fast
        return loader.construct_document(node)
    except yaml.reader.ReaderError as err:  # a character YAML does not allow (control characters)
        line = text.count("\n", 0, err.position) + 1
        code = err.character if isinstance(err.character, int) else ord(str(err.character)[:1] or "\0")
        raise ConfigError(f"malformed YAML: character #x{code:04x} is not allowed in YAML ({err.reason})",
                          file=str(path), line=line, field="yaml") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = err.problem or err.context or "malformed YAML"
        raise ConfigError(f"malformed YAML: {problem}", file=str(path), line=line, field="yaml") from None
    except RecursionError:
        raise ConfigError("malformed YAML: nested too deeply", file=str(path), field="yaml") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"malformed YAML: {err}", file=str(path), field="yaml") from None
    except (ValueError, TypeError, OverflowError) as err:  # a scalar its constructor rejects (e.g. a bad date)
        raise ConfigError(f"malformed YAML: {err}", file=str(path), field="yaml") from None
    finally:
        loader.dispose()


def load_yaml(path: Path, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES, setting: str = "",
              cache: ParseCache | None = None) -> Any:
    """Read and parse one configuration file with every limit above.

    With a `cache`, a file parsed before (the same bytes) is taken from it instead of parsed."""
    data = read_config_bytes(path, max_bytes=max_bytes, setting=setting)
    if cache is not None:
        tree = cache.get(data)
        if tree is not _MISS:
            return tree
    tree = parse_yaml(decode_text(data, path), path)
    if cache is not None:
        cache.put(data, tree)
    return tree


# -- parse cache ----------------------------------------------------------------------------------

# Bump when LineDict/LineList or the scalar rules change: old entries are then simply not found.
_CACHE_FORMAT = f"carbon-gateway-parse-1 pyyaml-{yaml.__version__}".encode()
_MISS = object()


class ParseCache:
    """Parsed configuration files (LineDict/LineList trees, line numbers included) keyed by the SHA-256
    of their bytes, one pickle per file (issue 8.5: a 2,500-meter configuration parses in ~5 s of CPU;
    its cached trees load in ~0.4 s).

    Only successful parses are cached, so every error is still found by parsing. A pickle can run
    code when loaded, so entries are trusted only in a directory and files owned by this user and
    writable by nobody else (the same trust as the store beside them); anything else is ignored and
    the file is parsed. Any failure to read or write the cache falls back to parsing, silently.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.used: set[str] = set()
        self.wrote = False

    def _key(self, data: bytes) -> str:
        return hashlib.sha256(_CACHE_FORMAT + b"\0" + data).hexdigest()

    @staticmethod
    def _private(st: os.stat_result, is_dir: bool) -> bool:
        kind_ok = stat.S_ISDIR(st.st_mode) if is_dir else stat.S_ISREG(st.st_mode)
        return kind_ok and st.st_uid == os.geteuid() and not st.st_mode & 0o022

    def get(self, data: bytes) -> Any:
        key = self._key(data)
        self.used.add(key)
        entry = self.directory / f"{key}.pickle"
        try:
            if not (self._private(os.lstat(self.directory), True) and self._private(os.lstat(entry), False)):
                return _MISS
            with open(entry, "rb") as f:
                return pickle.load(f)  # a private directory: see the class docstring
        except Exception:  # noqa: BLE001 - a missing, truncated or foreign entry: parse instead
            return _MISS

    def put(self, data: bytes, tree: Any) -> None:
        key = self._key(data)
        self.used.add(key)
        try:
            parent = os.lstat(self.directory.parent)
            if not stat.S_ISDIR(parent.st_mode) or parent.st_uid != os.geteuid():
                # The store's directory is created by the first run, not by a cache; and an admin running
                # `validate` as root in the service's directory must not leave a cache the service cannot use.
                return
            self.directory.mkdir(mode=0o700, exist_ok=True)
            if not self._private(os.lstat(self.directory), True):
                return
            tmp = self.directory / f".{key}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                pickle.dump(tree, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, self.directory / f"{key}.pickle")
            self.wrote = True
        except (OSError, pickle.PicklingError, RecursionError):
            pass

    def prune(self) -> None:
        """Remove entries of file versions this load did not use (after a change was cached)."""
        if not self.wrote:
            return
        try:
            for entry in self.directory.glob("*.pickle"):
                if entry.stem not in self.used:
                    entry.unlink(missing_ok=True)
        except OSError:
            pass


def line_of(node: Any, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the deepest element of `loc` found in the parsed tree."""
    line: int | None = getattr(node, "line", None)
    current = node
    for key in loc:
        if isinstance(current, LineDict) and key in current:
            line = current.key_lines.get(key, line)
            current = current[key]
        elif isinstance(current, LineList) and isinstance(key, int) and 0 <= key < len(current):
            line = current.item_lines[key]
            current = current[key]
        else:
            break
    return line


def to_plain(node: Any) -> Any:
    """LineDict/LineList -> plain dicts/lists (string keys), for JSON and for pydantic."""
    if isinstance(node, dict):
        return {str(k): to_plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [to_plain(v) for v in node]
    return node
