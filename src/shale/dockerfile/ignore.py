""".dockerignore reading and matching, as moby/patternmatcher (and its ``ignorefile``) do.

Reading (``read_dockerignore``): a UTF-8 BOM is dropped; a line starting with ``#`` in
column 1 is a comment; lines are trimmed and blank ones skipped; a leading ``!`` marks an
exception (blanks after it trimmed); the pattern is ``path.Clean``-ed and one leading ``/``
removed, so ``/foo``, ``./foo`` and ``foo/`` are the same pattern.

Matching (``Matcher.matches``): patterns are relative to the context root; ``*`` and ``?``
never cross ``/``; ``[...]`` classes and ``\\`` escapes work as in Go's ``filepath.Match``;
``**`` matches any number of directories, zero included (``dir/**`` does not match ``dir``
itself). A pattern also matches a path when it matches one of the path's parent
directories, so ``logs`` excludes ``logs/1.txt``. Patterns are evaluated in order and the
last one that applies wins: an exception (``!``) re-includes what earlier lines excluded.

``Matcher.may_skip_dir`` tells a context walker it can prune a directory: it is excluded and
no exception pattern can re-include anything below it. Unlike the classic builder's prefix
test, this also keeps directories that ``!**/*.go``-style exceptions reach.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable

from shale.dockerfile._go import clean_path, trim_space
from shale.errors import InvalidArgument
from shale.record import field, record

__all__ = ["Matcher", "Pattern", "read_dockerignore"]

_BAD_PATTERN = "syntax error in pattern"
# Regex characters with no meaning in filepath.Match, so escaped (patternmatcher's set).
_ESCAPED = frozenset(".+()|{}$")


def read_dockerignore(text: str) -> list[str]:
    """The patterns of a .dockerignore file (moby's ``ignorefile.ReadAll``)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out: list[str] = []
    for number, raw in enumerate(lines):
        line = raw.removesuffix("\r")
        if number == 0:
            line = line.removeprefix("\ufeff")
        if line.startswith("#"):
            continue
        pattern = trim_space(line)
        if pattern == "":
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = trim_space(pattern[1:])
        if pattern:
            pattern = clean_path(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        out.append("!" + pattern if invert else pattern)
    return out


# -- filepath.Match syntax check ---------------------------------------------------------------


def _scan_chunk(pattern: str) -> tuple[str, str]:
    """Go's ``scanChunk`` without the star flag: the next chunk and the rest."""
    pattern = pattern.lstrip("*")
    in_range = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 < len(pattern):
                i += 1
        elif c == "[":
            in_range = True
        elif c == "]":
            in_range = False
        elif c == "*" and not in_range:
            break
        i += 1
    return pattern[:i], pattern[i:]


def _get_esc(chunk: str, i: int) -> int:
    if i >= len(chunk) or chunk[i] in "-]":
        raise ValueError(_BAD_PATTERN)
    if chunk[i] == "\\":
        i += 1
        if i >= len(chunk):
            raise ValueError(_BAD_PATTERN)
    i += 1
    if i >= len(chunk):
        raise ValueError(_BAD_PATTERN)
    return i


def _check_class(chunk: str, i: int) -> int:
    """Validate a ``[...]`` class starting after its ``[``; returns the index after ``]``."""
    if i < len(chunk) and chunk[i] == "^":
        i += 1
    ranges = 0
    while not (i < len(chunk) and chunk[i] == "]" and ranges > 0):
        i = _get_esc(chunk, i)
        if chunk[i] == "-":
            i = _get_esc(chunk, i + 1)
        ranges += 1
    return i + 1


def _check_syntax(pattern: str) -> None:
    """Raise ValueError if Go's ``filepath.Match`` would return ErrBadPattern."""
    rest = pattern
    while rest:
        chunk, rest = _scan_chunk(rest)
        i = 0
        while i < len(chunk):
            if chunk[i] == "[":
                i = _check_class(chunk, i + 1)
            elif chunk[i] == "\\":
                if i + 1 >= len(chunk):
                    raise ValueError(_BAD_PATTERN)
                i += 2
            else:
                i += 1


# -- one pattern -------------------------------------------------------------------------------

_EXACT, _PREFIX, _SUFFIX, _REGEXP = "exact", "prefix", "suffix", "regexp"


def _compile(pattern: str) -> tuple[str, re.Pattern[str] | None]:
    """patternmatcher's ``compile``: the match kind and, for regexp matches, the regex."""
    out = ["^"]
    kind = _EXACT
    i, n, token = 0, len(pattern), 0
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*" and i < n and pattern[i] == "*":
            i += 1
            if i < n and pattern[i] == "/":
                i += 1  # "**/" is treated as "**"
            if i == n:
                # A trailing "**" accepts everything, as in .gitignore.
                if kind == _EXACT:
                    kind = _PREFIX
                else:
                    out.append(".*")
                    kind = _REGEXP
            else:
                out.append("(.*/)?")
                kind = _REGEXP
            if token == 0:
                kind = _SUFFIX
        elif ch == "*":
            out.append("[^/]*")
            kind = _REGEXP
        elif ch == "?":
            out.append("[^/]")
            kind = _REGEXP
        elif ch in _ESCAPED:
            out.append("\\" + ch)
        elif ch == "\\":
            if i < n:
                out.append("\\" + pattern[i])
                i += 1
                kind = _REGEXP
            else:
                out.append("\\")
        else:
            if ch in "[]":
                kind = _REGEXP
            out.append(ch)
        token += 1
    if kind != _REGEXP:
        return kind, None
    with warnings.catch_warnings():
        # Python warns about "[[" that Go reads literally, as Python does too.
        warnings.simplefilter("ignore", FutureWarning)
        return kind, re.compile("".join(out) + "$")


@record
class Pattern:
    """One cleaned pattern (without its ``!``), compiled on first use."""

    text: str
    exclusion: bool = False
    dirs: list[str] = field(default_factory=list)
    _kind: str = ""
    _regex: re.Pattern[str] | None = None

    def match(self, path: str) -> bool:
        """Whether the slash-separated ``path`` itself matches (no parent logic)."""
        if not self._kind:
            try:
                self._kind, self._regex = _compile(self.text)
            except re.error:
                raise InvalidArgument(f"{_BAD_PATTERN}: {self.text!r}") from None
        if self._kind == _EXACT:
            return path == self.text
        if self._kind == _PREFIX:
            return path.startswith(self.text[:-2])
        if self._kind == _SUFFIX:
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix.startswith("/") and path == suffix[1:])
        assert self._regex is not None
        return self._regex.match(path) is not None


def _parent(path: str) -> str:
    head, sep, _ = path.rpartition("/")
    return clean_path(head) if sep else "."


class Matcher:
    """A compiled pattern list (patternmatcher's ``PatternMatcher``)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        """Compile ``patterns`` (already read, e.g. by ``read_dockerignore``). Raises
        InvalidArgument for a bare ``!`` or a malformed pattern."""
        self.patterns: list[Pattern] = []
        self.exclusions = False
        for raw in patterns:
            text = trim_space(raw)
            if text == "":
                continue
            text = clean_path(text)
            exclusion = text.startswith("!")
            if exclusion:
                if text == "!":
                    raise InvalidArgument('illegal exclusion pattern: "!"')
                text = text[1:]
                self.exclusions = True
            try:
                _check_syntax(text)
            except ValueError:
                raise InvalidArgument(f"{_BAD_PATTERN}: {text!r}") from None
            self.patterns.append(Pattern(text, exclusion, text.split("/")))

    @classmethod
    def from_dockerignore(cls, text: str) -> Matcher:
        return cls(read_dockerignore(text))

    def matches(self, relpath: str) -> bool:
        """Whether ``relpath`` (relative to the context, ``/``-separated) is excluded.

        The path is cleaned first and a leading ``/`` ignored; the context root itself is
        never excluded. This is patternmatcher's ``MatchesOrParentMatches``."""
        path = clean_path(relpath).lstrip("/") or "."
        if path == ".":
            return False
        parent = _parent(path)
        parents = parent.split("/") if parent != "." else []
        matched = False
        for pat in self.patterns:
            if pat.exclusion != matched:
                continue  # only an exception can undo a match, only an inclusion can make one
            hit = pat.match(path) or any(
                pat.match("/".join(parents[: i + 1])) for i in range(len(parents))
            )
            if hit:
                matched = not pat.exclusion
        return matched

    def may_skip_dir(self, reldir: str) -> bool:
        """True if the directory is excluded and nothing below it can be re-included, so a
        walker need not descend into it."""
        path = clean_path(reldir).lstrip("/") or "."
        if not self.matches(path):
            return False
        segments = path.split("/")
        return not any(_reaches_below(p, segments) for p in self.patterns if p.exclusion)


def _reaches_below(pat: Pattern, segments: list[str]) -> bool:
    """Whether an exception pattern could match some path strictly below ``segments``
    without matching the directory itself (only such a pattern can re-include anything
    below an excluded directory). Errs towards True."""
    if "**" not in pat.text and len(pat.dirs) <= len(segments):
        return False  # it sees a path below exactly as it sees the directory
    for i, seg in enumerate(segments):
        if i >= len(pat.dirs) or "**" in pat.dirs[i]:
            return True
        try:
            if not Pattern(pat.dirs[i]).match(seg):
                return False
        except InvalidArgument:
            return True
    return True
