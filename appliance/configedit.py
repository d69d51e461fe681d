"""Edit the node's config file for the user, keeping it theirs: comments, key order, spelling.

``appliance models add|remove|set`` change a few keys of ``appliance.yaml``; the file stays the
one source of truth and must still read like the file the user wrote. So it is round-tripped
with ruamel.yaml (PyYAML drops comments), and a key is edited in whichever spelling the file
already uses: ``model.name: a,b`` at the top level, nested ``model: {name: a,b}``, or a mix
(``models: {resnet: {batching.enabled: true}}``); config.py flattens them all to the same
dotted key. A key the file does not have yet goes next to its dotted siblings when the file
spells that part dotted, else nested (``models:`` / ``resnet:`` / ``batching:``).

Comments stay with the lines they were written above: a key added after another takes over the
comment lines that followed it, and a deleted key's following lines go to the key before it;
only a deleted key's own end-of-line comment goes with it.

Values are written so that the node's own reader (PyYAML, YAML 1.1) reads back what was meant:
a string PyYAML would take for something else (``on``, ``1:30``) is quoted.

:func:`replace_checked` installs the new text atomically, keeping the file's mode and owner, and
only after a check of the exact bytes about to be installed has passed.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark, YAMLError as RuamelError
from ruamel.yaml.scalarstring import ScalarString, SingleQuotedScalarString
from ruamel.yaml.tokens import CommentToken
from ruamel.yaml.util import load_yaml_guess_indent

from .errors import ConfigError

#: A new config file holds credentials sooner or later (s3.*.key): private from the start.
NEW_FILE_MODE = 0o600
_INTEGER = re.compile(r"-?\d+")


def typed_value(text: str) -> Any:
    """A command-line ``VALUE`` as YAML will hold it: true/false, an integer, else the string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if _INTEGER.fullmatch(text):
        return int(text)
    return text


def _yaml_scalar(value: Any) -> Any:
    """Quote a string whose plain spelling the node's reader (PyYAML) would read otherwise."""
    if isinstance(value, str):
        try:
            plain = yaml.safe_load(value)
        except yaml.YAMLError:
            plain = None
        if plain != value:
            return SingleQuotedScalarString(value)
    return value


def _same_style(old: Any, value: Any) -> Any:
    """``value`` quoted the way the file quoted the value it replaces (``'a,b'`` stays quoted)."""
    if isinstance(value, (CommentedSeq, CommentedMap)):
        return value
    if isinstance(value, str) and isinstance(old, ScalarString):
        return type(old)(value)
    return _yaml_scalar(value)


def _segments(key: str) -> list[str]:
    parts = key.split(".")
    if not key or any(not part for part in parts):
        raise ValueError(f"{key!r} is not a dotted key name")
    return parts


def _mapping_indent(text: str) -> int:
    """The file's indentation step of nested mappings (its smallest one), 2 when it has none."""
    steps = [len(line) - len(line.lstrip(" ")) for line in text.splitlines()
             if line.startswith(" ") and not line.lstrip().startswith(("-", "#"))]
    return min([step for step in steps if step], default=2)


class ConfigDocument:
    """A YAML config file held round-trip; get, set and delete dotted keys in any spelling."""

    def __init__(self, text: str, source: str = "") -> None:
        self._yaml = YAML()
        self._yaml.preserve_quotes = True
        self._yaml.width = 4096          # never re-wrap a user's long line
        self._prefix = ""                # a file of comments only: kept above what is added
        try:
            tree = self._yaml.load(text)
            _, sequence, offset = load_yaml_guess_indent(text) if tree else (None, None, None)
        except RuamelError as exc:
            # Line and column only: a line of the file may be a secret.
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError([("(file)", f"not valid YAML{where}")], source) from None
        if tree is None:
            self._prefix = text if not text or text.endswith("\n") else text + "\n"
            tree = CommentedMap()
        if not isinstance(tree, CommentedMap):
            raise ConfigError([("(file)", "the top level must be a mapping of keys")], source)
        # ruamel re-indents the whole file: use the file's own steps.
        mapping = _mapping_indent(text)
        self._yaml.indent(mapping=mapping, sequence=sequence if offset is not None else mapping,
                          offset=offset or 0)
        self.tree = tree

    def text(self) -> str:
        if not self.tree:
            return self._prefix
        out = io.StringIO()
        self._yaml.dump(self.tree, out)
        return self._prefix + out.getvalue()

    # ------------------------------------------------------------------ lookup

    def _spellings(self, key: str) -> list[tuple[CommentedMap, Any]]:
        """Every (mapping, key of it) that spells ``key`` in the document."""
        return list(_walk(self.tree, _segments(key), 0))

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` in the file; the last spelling wins, as in config.flatten."""
        found = [mapping[name] for mapping, name in self._spellings(key)]
        return found[-1] if found else default

    # ------------------------------------------------------------------ edits

    def set(self, key: str, value: Any) -> None:
        """Set ``key`` where the file spells it; a new key goes where :func:`_insert` says."""
        spellings = self._spellings(key)
        for mapping, name in spellings:
            mapping[name] = _same_style(mapping[name], value)
        if not spellings:
            _insert(self.tree, _segments(key), _yaml_scalar(value))

    def delete(self, key: str) -> bool:
        """Drop ``key`` and every key below it, in every spelling; prune mappings left empty."""
        found, homeless = _delete(self.tree, _segments(key), 0)
        if homeless:
            self._prefix += homeless.lstrip("\n")
        return found


def _walk(mapping: CommentedMap, path: list[str], done: int) -> Iterator[tuple[CommentedMap, Any]]:
    """Keys of ``mapping`` (reached with ``path[:done]`` consumed) that spell ``path[done:]``."""
    rest = path[done:]
    for key, value in mapping.items():
        parts = str(key).split(".")
        if parts == rest:
            yield mapping, key
        elif rest[:len(parts)] == parts and isinstance(value, CommentedMap):
            yield from _walk(value, path, done + len(parts))


def _deepest(mapping: CommentedMap, path: list[str]) -> tuple[CommentedMap, list[str]]:
    """The deepest mapping of the file on ``path``, and the part of the path below it."""
    best: tuple[CommentedMap, list[str]] = (mapping, path)
    for key, value in mapping.items():
        parts = str(key).split(".")
        if isinstance(value, CommentedMap) and path[:len(parts)] == parts and len(parts) < len(path):
            inner = _deepest(value, path[len(parts):])
            if len(inner[1]) < len(best[1]):
                best = inner
    return best


def _insert(root: CommentedMap, path: list[str], value: Any) -> None:
    """Add a key the file does not have, in the spelling its neighbourhood uses.

    Under the deepest mapping on the path: dotted right after the last key that spells the
    same next part dotted (``models.resnet.platform`` beside ``models.resnet.versions``), else
    nested mappings at the end (``models:`` / ``resnet:`` / ``platform:``). The comment lines
    that followed the key it now follows move down with it: they were about what comes next.
    """
    mapping, rest = _deepest(root, path)
    siblings = [i for i, key in enumerate(mapping) if str(key).startswith(rest[0] + ".")]
    position = siblings[-1] + 1 if siblings else len(mapping)
    new_key = ".".join(rest) if siblings else rest[0]
    if not siblings:
        for part in reversed(rest[1:]):
            value = CommentedMap([(part, value)])
    following = _split_tail(mapping, list(mapping)[position - 1]) if position else ""
    mapping.insert(position, new_key, value)
    _append_tail(mapping, new_key, following)


def _delete(mapping: CommentedMap, path: list[str], done: int) -> tuple[bool, str]:
    """Delete ``path[done:]`` and below from ``mapping``, pruning mappings left empty.

    Returns whether anything was deleted, and comment lines that found no key to stay with
    (the mapping emptied): the caller places them.
    """
    rest, found, homeless = path[done:], False, ""
    for key, value in list(mapping.items()):
        parts = str(key).split(".")
        if parts[:len(rest)] == rest:
            found = True
            homeless = _remove(mapping, key, homeless)
        elif rest[:len(parts)] == parts and isinstance(value, CommentedMap):
            below, carried = _delete(value, path, done + len(parts))
            found = found or below
            homeless = _remove(mapping, key, homeless + carried) if not value else homeless + carried
    return found, homeless


def _remove(mapping: CommentedMap, key: Any, carried: str) -> str:
    """Delete ``key``; the comment lines after it stay, with the key before it. Returns what is
    left to place when no key of ``mapping`` can hold them."""
    index = list(mapping).index(key)
    following = _split_tail(mapping, key) + carried
    del mapping[key]
    if index > 0:
        _append_tail(mapping, list(mapping)[index - 1], following)
        return ""
    if mapping and following.strip():   # lines above the mapping's new first key
        token = CommentToken(following.lstrip("\n"), CommentMark(0), None)
        if mapping.ca.comment and mapping.ca.comment[1]:
            mapping.ca.comment[1].append(token)
        else:
            mapping.ca.comment = [None, [token]]
        return ""
    return following


def _last_leaf(mapping: CommentedMap, key: Any) -> tuple[CommentedMap, Any]:
    """The last key of ``key``'s subtree: the comments after the subtree hang there."""
    value = mapping[key]
    if isinstance(value, CommentedMap) and value:
        return _last_leaf(value, list(value)[-1])
    return mapping, key


def _split_tail(mapping: CommentedMap, key: Any) -> str:
    """Take the lines that follow ``key``'s subtree (blank lines, comments about the next key),
    leaving the comment at the end of its own line."""
    holder, leaf = _last_leaf(mapping, key)
    slot = holder.ca.items.get(leaf)
    if not slot or slot[2] is None:
        return ""
    own, _, following = slot[2].value.partition("\n")
    slot[2].value = own + "\n"
    return following


def _append_tail(mapping: CommentedMap, key: Any, lines: str) -> None:
    if not lines:
        return
    holder, leaf = _last_leaf(mapping, key)
    slot = holder.ca.items.setdefault(leaf, [None, None, None, None])
    if slot[2] is None:
        slot[2] = CommentToken("\n" + lines, CommentMark(0), None)
    else:
        slot[2].value += lines


# ---------------------------------------------------------------------- writing


def read_document(path: Path) -> ConfigDocument:
    """The config file as a document; an absent file is an empty one (the edit creates it)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise ConfigError([("(file)", f"cannot read {path}: {exc.strerror}")], str(path)) from None
    return ConfigDocument(text, str(path))


def replace_checked(path: Path, text: str, check: Callable[[Path], None]) -> bool:
    """Install ``text`` as ``path`` only if ``check(temp file)`` passes; keep mode and owner.

    The bytes checked are the bytes installed: a temp file in the same directory gets the
    file's mode and owner, ``check`` reads it (the node's own loader), then ``os.replace``. A
    check that raises leaves ``path`` untouched. Returns False when the text is unchanged.
    """
    try:
        stat = path.stat()
        if path.read_text(encoding="utf-8") == text:
            return False
        mode, owner = stat.st_mode & 0o7777, (stat.st_uid, stat.st_gid)
    except FileNotFoundError:
        mode, owner = NEW_FILE_MODE, None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(fd, mode)
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(fd, *owner)
                except PermissionError:
                    raise ConfigError([("(file)", f"cannot keep its owner (uid {owner[0]}, gid "
                                       f"{owner[1]}): run as root or as that user")],
                                      str(path)) from None
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        check(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True
