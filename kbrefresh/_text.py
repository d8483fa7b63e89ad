"""Small text helpers, written once: markdown escaping, numbers, redaction, slugs,
token estimates, and reading a YAML/TOML file into a mapping.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
import unicodedata
from pathlib import Path
from typing import Any

import yaml

from kbrefresh.errors import ConfigError

__all__ = [
    "SETTINGS_SUFFIXES",
    "escape_markdown",
    "load_settings_file",
    "load_yaml",
    "num",
    "redact_url",
    "scrub",
    "short_hash",
    "slug",
    "tokens_for_chars",
]

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")
_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")
_CLEAN_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
# Policy and settings files: the suffix picks the parser.
SETTINGS_SUFFIXES = (".toml", ".yaml", ".yml")


def escape_markdown(text: object) -> str:
    """Return ``text`` safe inside a markdown paragraph or table cell (one line)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text)).replace("\r", " ").replace("\n", " ")


def num(value: float | None, spec: str = ".4g", *, missing: str = "-") -> str:
    """Format ``value`` with the format ``spec``; ``missing`` when it is None."""
    return missing if value is None else format(value, spec)


def redact_url(url: str) -> str:
    """Return ``url`` (or any text holding URLs) with passwords replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1***@", url)


def scrub(text: str, secret: str | None) -> str:
    """Return ``text`` with every occurrence of ``secret`` replaced by ``***``."""
    return text.replace(secret, "***") if secret else text


def short_hash(text: str) -> str:
    """Return 8 hex digits of the SHA-256 of ``text``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def slug(name: str, max_chars: int = 40) -> str:
    """Return ``name`` as lowercase letters, digits and dashes: the same for every use.

    A name that is already such a slug (and short enough) is kept; any other gets
    an ASCII slug plus a short hash of the original, so two names that slugify
    alike still differ.
    """
    if len(name) <= max_chars and _CLEAN_SLUG.fullmatch(name):
        return name
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    base = _NOT_SLUG.sub("-", ascii_name.lower()).strip("-")[:max_chars].strip("-")
    return f"{base}-{short_hash(name)}" if base else short_hash(name)


def tokens_for_chars(chars: int) -> int:
    """Return a rough token count for ``chars`` characters: 4 per token, rounded up.

    An estimate for budgets and progress reports, not a tokenizer count (no
    tokenizer files are downloaded); English prose is usually within ±25%.
    """
    return math.ceil(chars / 4)


# Nesting deeper than this is no policy or front matter anyone writes by hand, and the
# pure-Python composer would hit Python's recursion limit (a traceback) a few hundred
# levels down. (Text that goes through libyaml is limited by libyaml itself, at 1,000.)
MAX_YAML_DEPTH = 64


class _StrictLoader(yaml.SafeLoader):
    """The safe loader without aliases (no "billion laughs") and with a depth limit."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None,
                f"found alias '*{event.anchor}'; YAML aliases are not accepted",
                event.start_mark)
        if self._depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_YAML_DEPTH} levels deep",
                self.peek_event().start_mark)  # type: ignore[no-untyped-call]
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(text: str) -> Any:
    """Parse YAML safely: no aliases, at most ``MAX_YAML_DEPTH`` levels of nesting.

    An alias can make a few hundred bytes expand to a billion values (a "YAML bomb")
    in every consumer that walks the data. Text without ``*`` cannot hold an alias and
    goes through libyaml (~10x faster); its errors are re-raised by the pure loader,
    which words them better.

    Raises:
        yaml.YAMLError: invalid YAML, an alias, or nesting too deep.
    """
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None and "*" not in text:
        try:
            return yaml.load(text, Loader=fast)
        except yaml.YAMLError:
            pass
    return yaml.load(text, Loader=_StrictLoader)


def load_settings_file(
    path: str | Path, *, what: str = "policy", suffixes: tuple[str, ...] = SETTINGS_SUFFIXES
) -> Any:
    """Parse a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file; an empty file gives ``{}``.

    Raises:
        ConfigError: the file's suffix is not in ``suffixes``, it cannot be read, or it
            does not parse.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        raise ConfigError(
            f"unsupported {what} file {path.name!r}; expected one of: {', '.join(suffixes)}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {str(path)!r}: {exc.strerror}") from exc
    try:
        if suffix == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text) if suffix == ".toml" else load_yaml(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path.name}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: invalid TOML ({exc})") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(f"{path.name}{where}: invalid YAML ({problem})") from exc
    return {} if data is None else data
