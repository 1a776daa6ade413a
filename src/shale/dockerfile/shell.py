"""BuildKit's word expansion (``frontend/dockerfile/shell/lex.go``), ported rule for rule.

This is what the builder applies to the arguments of ADD, COPY, ENV, EXPOSE, FROM, LABEL,
STOPSIGNAL, USER, VOLUME, WORKDIR, ARG defaults and a few flags. It is not a shell: there is
no command substitution, globbing or tilde expansion, only quotes, escapes and parameters.

- ``'...'`` is literal (a single quote cannot be escaped inside it).
- ``"..."`` expands ``$``; only ``\\"``, ``\\$`` and the escape token itself are escapes there,
  any other escape character stays.
- Outside quotes the escape token escapes any character and is removed; a trailing lone
  escape token is dropped.
- ``$name`` / ``${name}``; a name starting with a digit is positional (all digits, always
  unset); ``@ * # ? - $ ! 0`` are special parameters (always unset); ``$`` followed by
  anything else is a literal ``$``.
- ``${v:-w} ${v-w} ${v:+w} ${v+w} ${v:?m} ${v?m}``, ``${v#p} ${v##p} ${v%p} ${v%%p}``,
  ``${v/p/r} ${v//p/r}`` (patterns: ``*``, ``?``, ``\\`` escapes; no bracket classes).

``process_word`` keeps inner whitespace; ``process_words`` splits the result on unquoted
whitespace (after expansion). Every lookup is recorded so the builder can key its cache on the
variables a word actually used (``Expansion.matched`` / ``Expansion.unmatched``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from shale.dockerfile._go import is_space, quote
from shale.errors import InvalidArgument
from shale.record import record

__all__ = [
    "Expansion",
    "ExpansionError",
    "Lexer",
    "ProcessWord",
    "ProcessWords",
    "env_from_list",
    "process_word",
    "process_words",
]

Env = Mapping[str, str] | Sequence[str]
"""Either a mapping or Docker's ``["KEY=value", ...]`` list (a later entry wins)."""

_SPECIAL_PARAMS = frozenset("@*#?-$!0")


class ExpansionError(InvalidArgument):
    """A word could not be expanded (unterminated quote, bad substitution, ``${v:?msg}``).

    The message is BuildKit's, e.g. ``failed to process "${a": syntax error: missing '}'``;
    the builder prefixes the Dockerfile name and line.
    """


class _Fail(Exception):
    """Internal: raised deep in the scanner, wrapped into ExpansionError once at the top."""


@record(frozen=True)
class Expansion:
    """Result of one expansion: the word, its fields, and which variables were looked up."""

    result: str
    words: list[str]
    matched: frozenset[str]
    unmatched: frozenset[str]


def env_from_list(env: Env) -> dict[str, str]:
    """Normalise either form of environment to a dict; ``KEY`` without ``=`` means empty."""
    if isinstance(env, Mapping):
        return dict(env)
    out: dict[str, str] = {}
    for item in env:
        key, _, value = item.partition("=")
        out[key] = value
    return out


class _Words:
    """Field splitting state (Go's ``wordsStruct``).

    Quoted text is added raw (never split); expanded text is split on whitespace. An empty
    quoted string does not make a field on its own, as in BuildKit.
    """

    def __init__(self) -> None:
        self.buf = ""
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if is_space(ch):
            if self.in_word and self.buf:
                self.words.append(self.buf)
                self.buf = ""
                self.in_word = False
        else:
            self.add_raw_char(ch)

    def add_raw_char(self, ch: str) -> None:
        self.buf += ch
        self.in_word = True

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def add_raw_string(self, text: str) -> None:
        self.buf += text
        self.in_word = True

    def get(self) -> list[str]:
        if self.buf:
            self.words.append(self.buf)
            self.buf = ""
            self.in_word = False
        return self.words


class Lexer:
    """BuildKit's ``shell.Lex``. The options mirror its fields and exist for the parser.

    ``raw_quotes`` keeps quote characters in the output, ``raw_escapes`` keeps escape tokens,
    ``skip_unset_env`` leaves references to unset variables as written, and
    ``skip_process_quotes`` treats quotes as ordinary characters.
    """

    def __init__(
        self,
        escape: str = "\\",
        *,
        raw_quotes: bool = False,
        raw_escapes: bool = False,
        skip_unset_env: bool = False,
        skip_process_quotes: bool = False,
    ) -> None:
        self.escape = escape
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.skip_unset_env = skip_unset_env
        self.skip_process_quotes = skip_process_quotes

    def process(self, word: str, env: Env) -> Expansion:
        """Expand ``word``; raises ExpansionError with BuildKit's message."""
        scanner = _Scanner(self, word, env_from_list(env))
        try:
            result, words = scanner.stop_on(None, self.raw_escapes)
        except _Fail as exc:
            raise ExpansionError(f"failed to process {quote(word)}: {exc}") from None
        return Expansion(result, words, frozenset(scanner.matched), frozenset(scanner.unmatched))

    def process_word(self, word: str, env: Env) -> str:
        return self.process(word, env).result

    def process_words(self, word: str, env: Env) -> list[str]:
        return self.process(word, env).words


class _Scanner:
    """One expansion run over one word (Go's ``shellWord``)."""

    def __init__(self, lex: Lexer, text: str, env: dict[str, str]) -> None:
        self.lex = lex
        self.text = text
        self.pos = 0
        self.env = env
        self.matched: set[str] = set()
        self.unmatched: set[str] = set()
        self.raw_escapes = lex.raw_escapes

    # -- character access; "" stands for Go's scanner.EOF ---------------------------------
    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        ch = self.peek()
        if ch:
            self.pos += 1
        return ch

    # -- the main loop ---------------------------------------------------------------------
    def stop_on(self, stop: str | None, raw_escapes: bool) -> tuple[str, list[str]]:
        """Process until ``stop`` (consumed) or the end; returns the text and its fields."""
        saved, self.raw_escapes = self.raw_escapes, raw_escapes
        try:
            return self._stop_on(stop)
        finally:
            self.raw_escapes = saved

    def _stop_on(self, stop: str | None) -> tuple[str, list[str]]:
        result: list[str] = []
        words = _Words()
        quotes = not self.lex.skip_process_quotes
        while self.peek():
            ch = self.peek()
            if stop is not None and ch == stop:
                self.next()
                return "".join(result), words.get()
            if ch == "$":
                tmp = self.dollar()
                result.append(tmp)
                words.add_string(tmp)
            elif quotes and ch in "'\"":
                tmp = self.single_quote() if ch == "'" else self.double_quote()
                result.append(tmp)
                words.add_raw_string(tmp)
            elif not self._plain_char(result, words):
                break
        if stop is not None:
            raise _Fail(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.get()

    def _plain_char(self, result: list[str], words: _Words) -> bool:
        """Consume one ordinary or escaped character; False at a trailing escape token."""
        ch = self.next()
        if ch == self.lex.escape:
            if self.raw_escapes:
                words.add_raw_char(ch)
                result.append(ch)
            ch = self.next()
            if not ch:
                return False
            words.add_raw_char(ch)
        else:
            words.add_char(ch)
        result.append(ch)
        return True

    def single_quote(self) -> str:
        raw = self.lex.raw_quotes
        out = ["'"] if raw else []
        self.next()
        while True:
            ch = self.next()
            if not ch:
                raise _Fail("unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                if raw:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def double_quote(self) -> str:
        raw = self.lex.raw_quotes
        out = ['"'] if raw else []
        self.next()
        while True:
            ch = self.peek()
            if not ch:
                raise _Fail("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.next()
                if raw:
                    out.append(ch)
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                continue
            ch = self.next()
            if ch == self.lex.escape:
                if self.raw_escapes:
                    out.append(ch)
                nxt = self.peek()
                if not nxt:
                    continue  # an escape token at the very end is ignored
                if nxt in ('"', "$", self.lex.escape):
                    ch = self.next()
            out.append(ch)

    # -- parameters ------------------------------------------------------------------------
    def get_env(self, name: str) -> str | None:
        if name in self.env:
            self.matched.add(name)
            return self.env[name]
        self.unmatched.add(name)
        return None

    def name(self) -> str:
        """Read a parameter name: letters/digits/_, all digits if it starts with one, or one
        special parameter character."""
        out: list[str] = []
        while self.peek():
            ch = self.peek()
            if not out and ch.isdecimal():
                while self.peek() and self.peek().isdecimal():
                    out.append(self.next())
                return "".join(out)
            if not out and ch in _SPECIAL_PARAMS:
                return self.next()
            if not (ch.isalpha() or ch.isdecimal() or ch == "_"):
                break
            out.append(self.next())
        return "".join(out)

    def dollar(self) -> str:
        self.next()
        if self.peek() != "{":
            name = self.name()
            if name == "":
                return "$"
            value = self.get_env(name)
            if value is None:
                return "$" + name if self.lex.skip_unset_env else ""
            return value
        self.next()
        if self.peek() == "":
            raise _Fail("syntax error: missing '}'")
        if self.peek() in "{}:":
            raise _Fail("syntax error: bad substitution")
        name = self.name()
        ch = self.next()
        if ch == "}":
            value = self.get_env(name)
            if value is None:
                return "${" + name + "}" if self.lex.skip_unset_env else ""
            return value
        if ch == "/":
            return self._replace(name)
        if ch in (":", "+", "-", "?", "#", "%"):
            return self._modifier(name, ch)
        if ch == "":
            # BuildKit reports "unsupported modifier (\ufffd)" here; this says what is wrong.
            raise _Fail("syntax error: missing '}'")
        raise _Fail(f"unsupported modifier ({ch}) in substitution")

    def _braced_word(self, raw_escapes: bool) -> str:
        try:
            word, _ = self.stop_on("}", raw_escapes)
        except _Fail:
            if self.peek() == "":
                raise _Fail("syntax error: missing '}'") from None
            raise
        return word

    def _modifier(self, name: str, ch: str) -> str:
        null_is_unset = ch == ":"
        chs = ch
        if null_is_unset:
            ch = self.next()
            chs += ch or chr(0xFFFD)
        raw_escapes = ch in ("#", "%")
        if null_is_unset and raw_escapes:
            raise _Fail(f"unsupported modifier ({chs}) in substitution")
        word = self._braced_word(raw_escapes)
        value = self.get_env(name)
        if value is None and self.lex.skip_unset_env:
            return "${" + name + chs + word + "}"
        empty = value is None or (null_is_unset and value == "")
        if ch == "-":
            return word if empty else (value or "")
        if ch == "+":
            return "" if empty else word
        if ch == "?":
            if value is None:
                raise _Fail(f"{name}: {word or 'is not allowed to be unset'}")
            if empty:
                raise _Fail(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if ch in ("#", "%"):
            return _trim(ch, word, value or "")
        raise _Fail(f"unsupported modifier ({chs}) in substitution")

    def _replace(self, name: str) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.next()
        try:
            pattern, _ = self.stop_on("/", True)
        except _Fail:
            if self.peek() == "":
                raise _Fail("syntax error: missing '/' in ${}") from None
            raise
        replacement = self._braced_word(True)
        value = self.get_env(name)
        if value is None and self.lex.skip_unset_env:
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        rx = _pattern_regex(pattern, greedy=True, anchored=False)
        value = value or ""
        if replace_all:
            return _go_replace_all(rx, value, lambda m: _go_expand(replacement, m))
        m = rx.search(value)
        if m is None:
            return value
        return value[: m.start()] + replacement + value[m.end() :]


# -- patterns of ${v#p} ${v%p} ${v/p/r} ------------------------------------------------------

_REGEX_SPECIALS = frozenset("[]{}.+()|^$")


def _pattern_regex(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """Go's ``convertShellPatternToRegex``: ``*``, ``?`` and ``\\`` escapes, no classes."""
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    i = 0
    while i < len(pattern):
        tok = pattern[i]
        i += 1
        if tok == "*":
            out.append(star)
        elif tok == "?":
            out.append(".")
        elif tok == "\\":
            nxt = pattern[i] if i < len(pattern) else ""
            if nxt in ("}", "/"):
                continue  # the escape only protected ${} syntax, it is not part of the pattern
            if nxt not in ("*", "?", "\\"):
                shown = nxt or chr(0xFFFD)
                detail = f"invalid escape '\\{shown}'"
                raise _Fail(f"invalid pattern ({pattern}) in substitution: {detail}")
            out.append("\\" + nxt)
            i += 1
        elif tok in _REGEX_SPECIALS:
            out.append("\\" + tok)
        else:
            out.append(tok)
    return re.compile("".join(out))


def _reverse_pattern(pattern: str) -> str:
    """Reverse a pattern but keep each ``\\x`` escape pair in order (``a\\*c`` -> ``c\\*a``)."""
    chars = list(pattern)
    last = len(chars) - 1
    out = [""] * len(chars)
    i = 0
    while i <= last:
        tok = chars[i]
        j = last - i
        if tok == "\\" and i != last:
            out[j - 1] = tok
            out[j] = chars[i + 1]
            i += 2
        else:
            out[j] = tok
            i += 1
    return "".join(out)


def _trim(op: str, word: str, value: str) -> str:
    greedy = word[:1] == op
    if greedy:
        word = word[1:]
    if op == "#":
        return _trim_prefix(word, value, greedy)
    # A regex cannot find the shortest rightmost match, so reverse both sides instead.
    return _trim_prefix(_reverse_pattern(word), value[::-1], greedy)[::-1]


def _trim_prefix(word: str, value: str, greedy: bool) -> str:
    m = _pattern_regex(word, greedy=greedy, anchored=True).search(value)
    return value[m.end() :] if m else value


def _go_replace_all(rx: re.Pattern[str], src: str, repl: Callable[[re.Match[str]], str]) -> str:
    """Go's ``Regexp.ReplaceAllString`` loop. An empty match right after a match is not
    replaced (Python's ``re.sub`` would replace it too), so ``${v//*/x}`` gives one ``x``."""
    out: list[str] = []
    last_end = 0
    search = 0
    while search <= len(src):
        m = rx.search(src, search)
        if m is None:
            break
        out.append(src[last_end : m.start()])
        if m.end() > last_end or m.start() == 0:
            out.append(repl(m))
        last_end = m.end()
        width = 1 if search < len(src) else 0
        if search + width > m.end():
            search += width
        elif search + 1 > m.end():
            search += 1
        else:
            search = m.end()
    out.append(src[last_end:])
    return "".join(out)


_TEMPLATE_NAME = re.compile(r"\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+)")


def _go_expand(template: str, m: re.Match[str]) -> str:
    """Go's ``Regexp.Expand`` for ReplaceAllString: ``$$`` is ``$``, ``$0``/``${0}`` is the
    match, other names refer to groups our patterns never have (empty)."""
    out: list[str] = []
    i = 0
    while True:
        j = template.find("$", i)
        if j < 0:
            out.append(template[i:])
            return "".join(out)
        out.append(template[i:j])
        rest = template[j + 1 :]
        if rest.startswith("$"):
            out.append("$")
            i = j + 2
            continue
        name = _TEMPLATE_NAME.match(rest)
        if name is None:
            out.append("$")
            i = j + 1
            continue
        ident = name.group(1) or name.group(2)
        if ident.isdigit() and int(ident) == 0:
            out.append(m.group(0))
        i = j + 1 + name.end()


# -- convenience functions -------------------------------------------------------------------


def process_word(word: str, env: Env, escape: str = "\\") -> str:
    """Expand ``word`` keeping its inner whitespace (Go's ``Lex.ProcessWord``)."""
    return Lexer(escape).process(word, env).result


def process_words(word: str, env: Env, escape: str = "\\") -> list[str]:
    """Expand ``word`` and split it into fields on unquoted whitespace (``ProcessWords``)."""
    return Lexer(escape).process(word, env).words


def process_word_with_matches(word: str, env: Env, escape: str = "\\") -> Expansion:
    """Expand ``word`` and also report the variables it used and missed (cache keys, lint)."""
    return Lexer(escape).process(word, env)


# BuildKit's spelling, for readers comparing with lex.go.
ProcessWord = process_word
ProcessWords = process_words
