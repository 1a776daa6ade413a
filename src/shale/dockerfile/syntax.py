"""The line layer of the Dockerfile parser: BuildKit's ``parser`` package, ported rule for rule.

This layer turns text into one ``Node`` per instruction: parser directives, comments, line
continuations with the escape token, empty continuation lines, builder flags, JSON versus
shell form, ``ENV``/``LABEL`` key-value triples, ``ONBUILD`` wrapping and heredocs. It does no
validation beyond what BuildKit's parser does; ``parser.py`` builds typed, checked
instructions on top. ``Node.dump`` reproduces BuildKit's AST dump, which is what the
``testfiles/*/result`` conformance files contain.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from shale.dockerfile._go import is_space, quote, quote_list, trim_left_space, trim_space
from shale.dockerfile.shell import ExpansionError, Lexer
from shale.errors import DockerfileError
from shale.record import field, record, replace

__all__ = ["AstResult", "DockerfileParseError", "Heredoc", "Node", "parse_ast", "parse_heredoc"]

MAX_LINE_BYTES = 65535
"""bufio.Scanner's limit: a longer line is an error, as in BuildKit."""

_VALID_DIRECTIVES = ("syntax", "escape", "check")
# Go's \s is [\t\n\f\r ] (no \v); Python's would also accept Unicode blanks.
_GS = r"[\t\n\f\r ]"
_DIRECTIVE_RE = re.compile(rf"#{_GS}*([a-zA-Z][a-zA-Z0-9]*){_GS}*={_GS}*(.+?){_GS}*\Z")
_WHITESPACE_RE = re.compile(r"[\t\v\f\r ]+")
_HEREDOC_RE = re.compile(rf"([0-9]*)<<(-?){_GS}*([^<]*)\Z", re.DOTALL)
_NOT_STRINGS = "when using JSON array syntax, arrays must be comprised of strings only"
_HEREDOC_CMDS = frozenset(("add", "copy", "run"))


class DockerfileParseError(DockerfileError):
    """A parse error; the message is ``<file>:<line>: <detail>``."""

    def __init__(self, filename: str, line: int, detail: str, end_line: int = 0) -> None:
        super().__init__(f"{filename}:{line}: {detail}")
        self.filename = filename
        self.line = line
        self.end_line = max(end_line, line)
        self.detail = detail


class _Fail(Exception):
    """Internal: a line-level error whose location the caller knows."""


@record(frozen=True)
class Heredoc:
    """One ``<<NAME`` document. ``content`` is raw (every line with its newline); ``body``
    applies ``<<-`` tab stripping. ``expand`` is False when any part of the name is quoted."""

    name: str
    content: str = ""
    expand: bool = True
    chomp: bool = False
    fd: int = 0

    @property
    def body(self) -> str:
        if not self.chomp:
            return self.content
        return re.sub(r"(?m)^\t+", "", self.content)


@record
class Node:
    """One instruction as BuildKit's parser sees it.

    ``value`` is the keyword as written; ``args`` the values of its ``Next`` chain (ENV and
    LABEL give ``key, value, sep`` triples, sep ``"="`` or ``""`` for the legacy form);
    ``sub`` the wrapped instruction of ONBUILD.
    """

    value: str
    original: str
    flags: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    json: bool = False
    sub: Node | None = None
    heredocs: list[Heredoc] = field(default_factory=list)
    start_line: int = 0
    end_line: int = 0

    def dump(self) -> str:
        """BuildKit's ``Node.Dump`` of this instruction (without the outer parentheses)."""
        out = self.value.lower()
        if self.flags:
            out += " " + quote_list(self.flags)
        if self.sub is not None:
            out += " (" + self.sub.dump() + ")"
        for arg in self.args:
            out += " " + quote(arg)
        return trim_space(out)

    def can_contain_heredoc(self) -> bool:
        node = self.sub if self.value.lower() == "onbuild" and self.sub else self
        return node.value.lower() in _HEREDOC_CMDS and not node.json


@record
class AstResult:
    """The parsed file: instruction nodes, parser directives, escape token and warnings."""

    nodes: list[Node]
    directives: dict[str, str]
    escape: str = "\\"
    warnings: list[str] = field(default_factory=list)

    def dump(self) -> str:
        """The whole AST as BuildKit dumps it; a ``result`` file is this plus a newline."""
        return trim_space("".join(f"({n.dump()})\n" for n in self.nodes))


class _Directives:
    """Parser-directive state: only comment lines at the very top may set them."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.done = False
        self.set_escape("\\")

    def set_escape(self, token: str) -> None:
        if token not in ("`", "\\"):
            raise _Fail(f"invalid escape token '{token}' does not match ` or \\")
        self.escape = token
        esc = re.escape(token)
        # The token continues a line unless escaped itself; alone on a line it also does.
        self.continuation = re.compile(rf"([^{esc}]){esc}[ \t]*\Z|^{esc}[ \t]*\Z")

    def see(self, line: str) -> None:
        if self.done:
            return
        m = _DIRECTIVE_RE.match(line)
        key = m.group(1).lower() if m else ""
        if m is None or key not in _VALID_DIRECTIVES:
            self.done = True
            return
        if key in self.values:
            raise _Fail(f"only one {key} parser directive can be used")
        self.values[key] = m.group(2)
        if key == "escape":
            self.set_escape(m.group(2))


# -- line parsers (line_parsers.go) ------------------------------------------------------------

_Parsed = tuple[list[str], bool, "Node | None"]


class _NotJSON(Exception):
    pass


def _reject_constant(name: str) -> object:
    raise ValueError(name)  # NaN/Infinity are not JSON to Go


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _parse_json(rest: str) -> list[str]:
    rest = trim_left_space(rest)
    if not rest.startswith("["):
        raise _NotJSON
    try:
        # Go's json.Decoder reads one value and ignores whatever follows it.
        value, _ = _DECODER.raw_decode(rest)
    except ValueError:
        raise _NotJSON from None
    if not isinstance(value, list):
        raise _NotJSON
    if not all(isinstance(v, str) for v in value):
        raise _Fail(_NOT_STRINGS)
    # Go decodes an unpaired surrogate escape to U+FFFD.
    return [re.sub("[\ud800-\udfff]", "\ufffd", v) for v in value]


def _split_ws(rest: str) -> list[str]:
    return _WHITESPACE_RE.split(rest) if rest else []


def _parse_maybe_json(rest: str, d: _Directives) -> _Parsed:
    if rest == "":
        return [], False, None
    try:
        return _parse_json(rest), True, None
    except _NotJSON:
        return [rest], False, None


def _parse_maybe_json_to_list(rest: str, d: _Directives) -> _Parsed:
    try:
        return _parse_json(rest), True, None
    except _NotJSON:
        return _split_ws(rest), False, None


def _parse_strings_whitespace(rest: str, d: _Directives) -> _Parsed:
    return _split_ws(rest), False, None


def _parse_string(rest: str, d: _Directives) -> _Parsed:
    return ([rest] if rest else []), False, None


def _parse_ignore(rest: str, d: _Directives) -> _Parsed:
    return [""], False, None


def _parse_sub_command(rest: str, d: _Directives) -> _Parsed:
    if rest == "":
        return [], False, None
    return [], False, _node_from_line(rest, d)


def _parse_health(rest: str, d: _Directives) -> _Parsed:
    sep = 0
    while sep < len(rest) and not is_space(rest[sep]):
        sep += 1
    nxt = sep
    while nxt < len(rest) and is_space(rest[nxt]):
        nxt += 1
    if sep == 0:
        return [], False, None
    args, is_json, _ = _parse_maybe_json(rest[nxt:], d)
    return [rest[:sep], *args], is_json, None


def _parse_words(rest: str, escape: str) -> list[str]:
    """Quote-aware splitting for ENV/LABEL/ARG; quotes and escapes are kept for later."""
    words: list[str] = []
    word, quote_ch, in_quote, blank_ok = "", "", False, False
    i, n = 0, len(rest)
    while i < n:
        ch = rest[i]
        if not in_quote and is_space(ch):
            if blank_ok or word:
                words.append(word)
            word, blank_ok = "", False
        elif not in_quote:
            if ch in "'\"":
                quote_ch, in_quote, blank_ok = ch, True, True
            if ch == escape:
                if i + 1 == n:
                    break  # an escape token at the end of the line is dropped
                word += ch
                i += 1
                ch = rest[i]
            word += ch
        else:
            if ch == quote_ch:
                in_quote = False
            if ch == escape and quote_ch != "'":
                if i + 1 == n:
                    in_quote = False
                    break
                word += ch
                i += 1
                ch = rest[i]
            word += ch
        i += 1
    if blank_ok or word:
        words.append(word)
    return words


def _parse_name_val(rest: str, key: str, d: _Directives) -> list[str]:
    words = _parse_words(rest, d.escape)
    if not words:
        return []
    if "=" not in words[0]:
        # Legacy ``KEY name value``: the value is the rest of the line, verbatim.
        parts = _WHITESPACE_RE.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise _Fail(f"{key} must have two arguments")
        return [parts[0], parts[1], ""]
    out: list[str] = []
    for word in words:
        if "=" not in word:
            raise _Fail(
                f"Syntax error - can't find = in {quote(word)}. Must be of the form: name=value"
            )
        name, _, value = word.partition("=")
        out += [name, value, "="]
    return out


def _parse_env(rest: str, d: _Directives) -> _Parsed:
    return _parse_name_val(rest, "ENV", d), False, None


def _parse_label(rest: str, d: _Directives) -> _Parsed:
    return _parse_name_val(rest, "LABEL", d), False, None


def _parse_name_or_name_val(rest: str, d: _Directives) -> _Parsed:
    return _parse_words(rest, d.escape), False, None


_DISPATCH: dict[str, Callable[[str, _Directives], _Parsed]] = {
    "add": _parse_maybe_json_to_list,
    "arg": _parse_name_or_name_val,
    "cmd": _parse_maybe_json,
    "copy": _parse_maybe_json_to_list,
    "entrypoint": _parse_maybe_json,
    "env": _parse_env,
    "expose": _parse_strings_whitespace,
    "from": _parse_strings_whitespace,
    "healthcheck": _parse_health,
    "label": _parse_label,
    "maintainer": _parse_string,
    "onbuild": _parse_sub_command,
    "run": _parse_maybe_json,
    "shell": _parse_maybe_json,
    "stopsignal": _parse_string,
    "user": _parse_string,
    "volume": _parse_maybe_json_to_list,
    "workdir": _parse_string,
}


# -- splitting the command and its flags (split_command.go) -----------------------------------


def _extract_flags(line: str) -> tuple[str, list[str]]:
    """Leading ``--flag[=value]`` words (quotes and ``\\`` handled); ``--`` ends them."""
    words: list[str] = []
    word, quote_ch, blank_ok = "", "", False
    in_word = in_quote = False
    i, n = 0, len(line)
    while i < n:
        ch = line[i]
        if not in_word and not in_quote:
            if is_space(ch):
                i += 1
                continue
            if ch != "-" or i + 1 == n or line[i + 1] != "-":
                return line[i:], words
            in_word = True
        if in_quote:
            if ch == quote_ch:
                in_quote, in_word = False, True
            else:
                if ch == "\\":
                    if i + 1 == n:
                        in_quote, in_word = False, True
                        i += 1
                        continue
                    i += 1
                    ch = line[i]
                word += ch
        elif is_space(ch):
            in_word = False
            if word == "--":
                return line[i:], words
            if blank_ok or word:
                words.append(word)
            word, blank_ok = "", False
        elif ch in "'\"":
            quote_ch, blank_ok, in_quote, in_word = ch, True, True, False
        elif ch == "\\" and i + 1 == n:
            pass  # a trailing backslash is dropped
        else:
            if ch == "\\":
                i += 1
                ch = line[i]
            word += ch
        i += 1
    if (in_word or in_quote) and word != "--" and (blank_ok or word):
        words.append(word)
    return "", words


def _split_command(line: str) -> tuple[str, list[str], str]:
    parts = _WHITESPACE_RE.split(trim_space(line), maxsplit=1)
    flags: list[str] = []
    rest = ""
    if len(parts) == 2:
        rest, flags = _extract_flags(parts[1])
    return parts[0], flags, trim_space(rest)


def _node_from_line(line: str, d: _Directives) -> Node:
    cmd, flags, rest = _split_command(line)
    parse = _DISPATCH.get(cmd.lower(), _parse_ignore)
    args, is_json, sub = parse(rest, d)
    return Node(cmd, line, flags, args, is_json, sub)


# -- heredocs ----------------------------------------------------------------------------------


def parse_heredoc(word: str) -> Heredoc | None:
    """The heredoc a word like ``<<EOF``, ``<<-"EOF"`` or ``3<<EOF`` introduces, or None."""
    m = _HEREDOC_RE.match(word)
    if m is None or m.group(3) == "":
        return None
    rest = m.group(3)
    lex = Lexer("\\", skip_unset_env=True)
    try:
        words = lex.process_words(rest, {})
        if len(words) != 1:
            return None
        lex.raw_quotes = True
        raw = lex.process_words(rest, {})
    except ExpansionError as exc:
        raise _Fail(str(exc)) from None
    if len(raw) != len(words):
        raise _Fail(f"internal lexing of heredoc produced inconsistent results: {rest}")
    # Quotes that disappear when quotes are processed mean part of the name was quoted.
    quotes_plain = words[0].count("'") + words[0].count('"')
    quotes_raw = raw[0].count("'") + raw[0].count('"')
    fd = int(m.group(1)) if m.group(1) else 0
    return Heredoc(words[0], expand=quotes_plain == quotes_raw, chomp=m.group(2) == "-", fd=fd)


def _heredocs_from_line(line: str) -> list[Heredoc]:
    lex = Lexer("\\", raw_quotes=True, raw_escapes=True, skip_unset_env=True)
    try:
        words = lex.process_words(line, {})
    except ExpansionError:
        return []
    return [h for h in (parse_heredoc(w) for w in words) if h is not None]


# -- the file loop (parser.go Parse) -----------------------------------------------------------


def _split_lines(text: str, filename: str) -> list[str]:
    """Lines with their ``\\n`` kept, as BuildKit's scanner yields them."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    for number, line in enumerate(lines, 1):
        if len(line) > MAX_LINE_BYTES // 4 and _too_long(line):
            detail = f"dockerfile line greater than max allowed size of {MAX_LINE_BYTES}"
            raise DockerfileParseError(filename, number, detail)
    return lines


def _too_long(line: str) -> bool:
    size = len(line.encode("utf-8", "surrogatepass"))
    return size > MAX_LINE_BYTES + 1 or (not line.endswith("\n") and size > MAX_LINE_BYTES)


def _trim_newline(line: str) -> str:
    return line.rstrip("\r\n")


def _is_comment(line: str) -> bool:
    return trim_left_space(_trim_newline(line)).startswith("#")


def _process_line(d: _Directives, token: str, strip_left: bool) -> str:
    token = _trim_newline(token)
    if strip_left:
        token = trim_left_space(token)
    d.see(token)
    return "" if token.startswith("#") else token


def _trim_continuation(line: str, d: _Directives) -> tuple[str, bool]:
    if d.continuation.search(line):
        return d.continuation.sub(lambda m: m.group(1) or "", line), False
    return line, True


class _Reader:
    """Walks the lines, tracking the 1-based number of the last line consumed."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.consumed = 0

    def more(self) -> bool:
        return self.consumed < len(self.lines)

    def take(self) -> str:
        self.consumed += 1
        return self.lines[self.consumed - 1]


def _logical_line(r: _Reader, d: _Directives, first: str) -> tuple[str | None, bool]:
    """Join a line with its continuations. Returns None for a blank or comment line, else
    the line and whether blank continuation lines were skipped inside it."""
    line, end = _trim_continuation(_process_line(d, first, True), d)
    if end and line == "":
        return None, False
    empty = False
    while not end and r.more():
        raw = r.take()
        processed = _process_line(d, raw, False)
        if _is_comment(raw):
            continue  # comment lines inside a continuation are dropped
        if trim_left_space(processed) == "":
            empty = True
            continue
        part, end = _trim_continuation(processed, d)
        line += part
    return line, empty


def _read_heredocs(r: _Reader, node: Node, line: str) -> None:
    for doc in _heredocs_from_line(line):
        content: list[str] = []
        while r.more():
            raw = r.take()
            candidate = _trim_newline(raw)
            if doc.chomp:
                candidate = candidate.lstrip("\t")
            if candidate == doc.name:
                break
            content.append(raw)
        else:
            raise _Fail("unterminated heredoc")
        node.heredocs.append(replace(doc, content="".join(content)))


def parse_ast(text: str, filename: str = "Dockerfile") -> AstResult:
    """Parse Dockerfile text into nodes; raises DockerfileParseError naming file and line."""
    r = _Reader(_split_lines(text, filename))
    d = _Directives()
    nodes: list[Node] = []
    warnings: list[str] = []
    while r.more():
        first = r.take()
        if r.consumed == 1:
            first = first.removeprefix("\ufeff")
        start = r.consumed
        try:
            line, empty = _logical_line(r, d, first)
            if line is None:
                continue
            node = _node_from_line(line, d)
            if node.can_contain_heredoc() and "<<" in line:
                _read_heredocs(r, node, line)
        except _Fail as exc:
            raise DockerfileParseError(filename, start, str(exc), r.consumed) from None
        if empty:
            warnings.append(f"{filename}:{r.consumed}: Empty continuation line found in: {line}")
        node.start_line, node.end_line = start, r.consumed
        nodes.append(node)
    if not nodes:
        raise DockerfileParseError(filename, max(r.consumed, 1), "file with no instructions")
    return AstResult(nodes, d.values, d.escape, warnings)
