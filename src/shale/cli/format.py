"""Docker's ``--format``: a Go ``text/template`` subset with the docker CLI's functions.

Supported: text, ``{{.Field}}``, ``{{.A.B}}``, ``{{.}}``, ``$`` and ``$var :=`` / ``=``,
pipelines ``{{.X | json}}``, parenthesised pipelines, string/raw/number/bool/nil
literals, ``if``/``else if``/``with``/``range`` (``$i, $e :=``) / ``else`` / ``end``,
trim markers ``{{- -}}``, comments ``{{/* */}}``; docker's functions ``json split join
title lower upper pad truncate`` and Go's ``and or not len index print printf println eq
ne lt le gt ge``. Not supported: ``define``/``template``/``block``/``break``/``continue``.

Go values are modelled by Python ones: a row passed to :func:`render` is a docker
formatter context (a struct: an unknown field is an error, ``{{json .}}`` sorts its keys
and escapes ``<>&``); any other ``dict`` is a Go map (a missing key prints
``<no value>``) and its JSON keeps the dict's order, so pass Go structs in field order.
``None`` is nil. Errors carry Go's wording: ``template parsing error: template: :1:2:
executing "" at <.Foo>: can't evaluate field Foo in type *formatter.imageContext``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from shale.cli.table import tabwrite
from shale.errors import InvalidArgument

TABLE_PREFIX = "table"


def render(
    template: str,
    rows: Sequence[Mapping[str, Any]],
    headers: Mapping[str, str] | None = None,
    *,
    type_name: str = "*formatter.Context",
) -> str:
    """Format ``rows`` as ``docker <verb> --format TEMPLATE`` prints them.

    As docker's formatter: a ``table`` prefix is cut, surrounding spaces trimmed, literal
    ``\\t`` and ``\\n`` become tab and newline; each row is followed by a newline. A table
    gets a header row (the same template run on ``headers``: ``{{.ID}}`` -> ``IMAGE ID``;
    a field missing from ``headers`` shows upper-cased) and docker's tabwriter alignment.
    ``type_name`` names the row type in "can't evaluate field" errors. The caller swaps an
    empty ``table`` for its verb's default format. Raises InvalidArgument.
    """
    is_table = template.startswith(TABLE_PREFIX)
    text = template[len(TABLE_PREFIX) :] if is_table else template
    text = text.strip(" ").replace("\\t", "\t").replace("\\n", "\n")
    tmpl = Template(text)
    body = "".join(tmpl.execute(_Struct(dict(row), type_name, True)) + "\n" for row in rows)
    if not is_table:
        return body
    header = tmpl.header(headers or {})
    return tabwrite(header + "\n" + body)


class Template:
    """A parsed template; ``execute`` runs it on one value."""

    def __init__(self, text: str) -> None:
        self.text = text
        try:
            self._nodes = _Parser(text).parse()
        except _TemplateError as err:
            raise InvalidArgument(f"template parsing error: template: :{err}") from None

    def execute(self, data: Any, *, type_name: str | None = None) -> str:
        """Run on ``data``; with ``type_name``, a dict ``data`` is a Go struct of that type."""
        if type_name is not None and isinstance(data, dict):
            data = _Struct(data, type_name, False)
        out: list[str] = []
        try:
            _Exec(self.text, data, out, _FUNCS).walk(data, self._nodes)
        except _TemplateError as err:
            raise InvalidArgument(f"template parsing error: template: :{err}") from None
        return "".join(out)

    def header(self, headers: Mapping[str, str]) -> str:
        """The table header: the template on the header names; errors cut it short, as Go."""
        out: list[str] = []
        data = _Header(headers)
        try:
            _Exec(self.text, data, out, _HEADER_FUNCS).walk(data, self._nodes)
        except _TemplateError:
            pass  # docker ignores the header's execution error and keeps what was written
        return "".join(out)


# ---------------------------------------------------------------- values


class _Missing:
    """Go's invalid reflect.Value: a missing map key. Prints ``<no value>``."""


MISSING = _Missing()


@dataclass
class _Struct:
    """A Go struct (a docker formatter context): fields are the dict's keys."""

    data: dict[str, Any]
    type_name: str
    json_as_map: bool  # docker's contexts marshal through a map: sorted keys, HTML escaped


class _Header(dict[str, str]):
    """Header names; a field without one shows its name upper-cased."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        super().__init__(headers)

    def __missing__(self, key: str) -> str:
        return key.upper()


class _TemplateError(Exception):
    """Go's error text after ``template: :`` (``1: unexpected EOF``, ``1:2: executing``)."""


# ---------------------------------------------------------------- lexer

_SPACE = " \t\r\n"
_TOKEN_RE = re.compile(
    r"""(?P<space>[ \t\r\n]+)|(?P<declare>:=)|(?P<sym>[|()=,])
    |(?P<string>"(?:[^"\\\n]|\\.)*")|(?P<raw>`[^`]*`)|(?P<char>'(?:[^'\\\n]|\\.)+')
    |(?P<number>[+-]?(?:0[xX][0-9a-fA-F_]+|(?:\d[\d_]*)?\.?\d[\d_]*(?:[eE][+-]?\d+)?))
    |(?P<field>\.[A-Za-z_][A-Za-z0-9_]*)|(?P<dot>\.)|(?P<variable>\$[A-Za-z0-9_]*)
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)""",
    re.VERBOSE,
)
_KEYWORDS = {"if", "else", "end", "range", "with", "define", "template", "block", "break"}
_KEYWORDS |= {"continue"}


@dataclass
class _Tok:
    kind: str
    text: str
    pos: int


def _line(src: str, pos: int) -> int:
    return src.count("\n", 0, pos) + 1


def _lex(src: str) -> list[_Tok]:
    """Split into text and action tokens; trim markers and comments are applied here."""
    toks: list[_Tok] = []
    i = 0
    while True:
        j = src.find("{{", i)
        if j < 0:
            toks.append(_Tok("text", src[i:], i))
            toks.append(_Tok("eof", "", len(src)))
            return toks
        text = src[i:j]
        start = j + 2
        if src[start : start + 1] == "-" and src[start + 1 : start + 2] in tuple(_SPACE):
            text, start = text.rstrip(_SPACE), start + 2
        toks.append(_Tok("text", text, i))
        i = _lex_action(src, start, toks)
        if toks[-1].kind == "rtrim":
            toks.pop()
            while i < len(src) and src[i] in _SPACE:
                i += 1


def _lex_action(src: str, i: int, toks: list[_Tok]) -> int:
    line = _line(src, i)
    if src.startswith("/*", i):
        return _lex_comment(src, i, toks, line)
    toks.append(_Tok("{{", "{{", i))
    while True:
        if i >= len(src):
            raise _TemplateError(f"{line}: unclosed action")
        if src.startswith("}}", i):
            toks.append(_Tok("}}", "}}", i))
            return i + 2
        if src[i] in _SPACE and src.startswith("-}}", i + 1):
            toks.append(_Tok("}}", "}}", i + 2))
            toks.append(_Tok("rtrim", "", i))
            return i + 4
        m = _TOKEN_RE.match(src, i)
        if m is None or m.end() == i:
            return _lex_bad(src, i, line)
        kind = m.lastgroup or ""
        if kind == "ident" and m.group() in _KEYWORDS:
            kind = m.group()
        elif kind == "ident" and m.group() in ("true", "false", "nil"):
            kind = "bool" if m.group() != "nil" else "nil"
        toks.append(_Tok(kind, m.group(), i))
        i = m.end()


def _lex_comment(src: str, i: int, toks: list[_Tok], line: int) -> int:
    end = src.find("*/", i + 2)
    if end < 0:
        raise _TemplateError(f"{line}: unclosed comment")
    i = end + 2
    if src.startswith("}}", i):
        return i + 2
    if src.startswith(" -}}", i):
        toks.append(_Tok("rtrim", "", i))
        return i + 4
    raise _TemplateError(f"{line}: comment ends before closing delimiter")


def _lex_bad(src: str, i: int, line: int) -> int:
    ch = src[i]
    if ch == '"':
        raise _TemplateError(f"{line}: unterminated quoted string")
    if ch == "`":
        raise _TemplateError(f"{line}: unterminated raw quoted string")
    if ch == "'":
        raise _TemplateError(f"{line}: unterminated character constant")
    raise _TemplateError(f"{line}: unrecognized character in action: U+{ord(ch):04X} {ch!r}")


# ---------------------------------------------------------------- parser


@dataclass
class _Node:
    pos: int
    text: str  # source text, shown in errors as "at <...>"


@dataclass
class _Text(_Node):
    value: str


@dataclass
class _Field(_Node):
    names: tuple[str, ...]


@dataclass
class _Var(_Node):
    name: str
    names: tuple[str, ...]


@dataclass
class _Dot(_Node):
    pass


@dataclass
class _Ident(_Node):
    name: str


@dataclass
class _Lit(_Node):
    value: Any
    kind: str  # string, number, bool, nil


@dataclass
class _Chain(_Node):
    node: _Node
    names: tuple[str, ...]


@dataclass
class _Cmd(_Node):
    args: list[_Node]


@dataclass
class _Pipe(_Node):
    decls: list[str]
    assign: bool
    cmds: list[_Cmd]


@dataclass
class _Action(_Node):
    pipe: _Pipe


@dataclass
class _Branch(_Node):
    kind: str  # if, with, range
    pipe: _Pipe
    body: list[_Node]
    alt: list[_Node] | None


_OPERAND_START = {"bool", "char", "dot", "field", "ident", "number", "nil", "raw", "string"}
_OPERAND_START |= {"variable", "("}
_ESCAPE_RE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{3}|.)")
_SIMPLE_ESCAPES = dict(zip("abfnrtv\\'\"", "\a\b\f\n\r\t\v\\'\"", strict=True))


class _Parser:
    """Go's ``text/template/parse``, for the node kinds above."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.toks = [_Tok(t.text, t.text, t.pos) if t.kind in ("sym", "declare") else t for t in _lex(src)]
        self.i = 0
        self.vars = ["$"]

    def next(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def next_non_space(self) -> _Tok:
        tok = self.next()
        while tok.kind == "space":
            tok = self.next()
        return tok

    def peek_non_space(self) -> _Tok:
        tok = self.next_non_space()
        self.i -= 1
        return tok

    def fail(self, tok: _Tok, msg: str) -> _TemplateError:
        return _TemplateError(f"{_line(self.src, tok.pos)}: {msg}")

    def unexpected(self, tok: _Tok, context: str) -> _TemplateError:
        if tok.kind == "eof":
            shown = "EOF"
        elif tok.kind in _KEYWORDS:
            shown = f"<{tok.text}>"
        else:
            shown = _go_quote(tok.text[:10]) + ("..." if len(tok.text) > 10 else "")
        return self.fail(tok, f"unexpected {shown} in {context}")

    def parse(self) -> list[_Node]:
        body, end = self.item_list()
        if end.kind != "eof":
            raise self.fail(end, f"unexpected {{{{{end.kind}}}}}")
        return body

    def item_list(self) -> tuple[list[_Node], _Tok]:
        """Nodes up to EOF, ``{{end}}`` or ``{{else``; also returns the token that ended them."""
        nodes: list[_Node] = []
        while True:
            tok = self.next()
            if tok.kind == "eof":
                return nodes, tok
            if tok.kind == "text":
                if tok.text:
                    nodes.append(_Text(tok.pos, tok.text, tok.text))
                continue
            kw = self.next_non_space()
            if kw.kind in ("end", "else"):
                return nodes, kw
            if kw.kind in ("if", "with", "range"):
                nodes.append(self.control(kw))
            elif kw.kind in _KEYWORDS:
                raise self.fail(kw, f"{{{{{kw.kind}}}}} is not supported")
            else:
                self.i -= 1
                nodes.append(_Action(kw.pos, "", self.pipeline("command", "}}")))

    def control(self, kw: _Tok) -> _Branch:
        mark = len(self.vars)
        pipe = self.pipeline(kw.kind, "}}")
        body, end = self.item_list()
        alt: list[_Node] | None = None
        if end.kind == "else":
            nxt = self.next_non_space()
            if nxt.kind == kw.kind and kw.kind != "range":  # {{else if}}: one {{end}} closes both
                alt = [self.control(nxt)]
                del self.vars[mark:]
                return _Branch(kw.pos, kw.text, kw.kind, pipe, body, alt)
            if nxt.kind != "}}":
                raise self.unexpected(nxt, "else")
            alt, end = self.item_list()
            if end.kind == "else":
                raise self.fail(end, "expected end; found {{else}}")
        if end.kind == "eof":
            raise self.fail(end, "unexpected EOF")
        close = self.next_non_space()
        if close.kind != "}}":
            raise self.unexpected(close, "end")
        del self.vars[mark:]
        return _Branch(kw.pos, kw.text, kw.kind, pipe, body, alt)

    def pipeline(self, context: str, end: str) -> _Pipe:
        start = self.peek_non_space().pos
        decls, assign = self.declarations(context)
        cmds: list[_Cmd] = []
        while True:
            tok = self.next_non_space()
            if tok.kind == end:
                if not cmds:
                    raise self.fail(tok, f"missing value for {context}")
                for n, cmd in enumerate(cmds[1:], start=2):
                    if isinstance(cmd.args[0], _Lit | _Dot):
                        raise self.fail(tok, f"non executable command in pipeline stage {n}")
                return _Pipe(start, self.src[start : tok.pos].strip(), decls, assign, cmds)
            if tok.kind not in _OPERAND_START:
                raise self.unexpected(tok, context)
            self.i -= 1
            cmds.append(self.command())

    def declarations(self, context: str) -> tuple[list[str], bool]:
        save = self.i
        first = self.next_non_space()
        if first.kind == "variable":
            op = self.next_non_space()
            if op.kind in (":=", "="):
                if op.kind == "=" and first.text not in self.vars:
                    raise self.fail(first, f"undefined variable {_go_quote(first.text)}")
                self.vars.append(first.text)
                return [first.text], op.kind == "="
            if op.kind == "," and context == "range":
                second = self.next_non_space()
                if second.kind == "variable" and self.next_non_space().kind == ":=":
                    self.vars += [first.text, second.text]
                    return [first.text, second.text], False
                raise self.fail(op, "range can only initialize variables")
        self.i = save
        return [], False

    def command(self) -> _Cmd:
        args: list[_Node] = []
        start = self.peek_non_space().pos
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                args.append(operand)
            tok = self.next()
            if tok.kind == "space":
                continue
            if tok.kind in ("}}", ")"):
                self.i -= 1
            elif tok.kind != "|":
                raise self.unexpected(tok, "operand")
            break
        if not args:
            raise self.fail(self.toks[self.i], "empty command")
        return _Cmd(start, " ".join(a.text for a in args), args)

    def operand(self) -> _Node | None:
        node = self.term()
        if node is None or self.toks[self.i].kind != "field":
            return node
        pos = self.toks[self.i].pos
        names: list[str] = []
        while self.toks[self.i].kind == "field":
            names.append(self.next().text[1:])
        text = node.text + "".join("." + n for n in names)
        if isinstance(node, _Field):
            return _Field(pos, text, node.names + tuple(names))
        if isinstance(node, _Var):
            return _Var(pos, text, node.name, node.names + tuple(names))
        if isinstance(node, _Lit | _Dot):
            raise self.fail(self.toks[self.i], f"unexpected . after term {_go_quote(node.text)}")
        return _Chain(pos, text, node, tuple(names))

    def term(self) -> _Node | None:
        tok = self.next_non_space()
        kind, text, pos = tok.kind, tok.text, tok.pos
        if kind == "ident":
            if text not in _FUNCS:
                raise self.fail(tok, f"function {_go_quote(text)} not defined")
            return _Ident(pos, text, text)
        if kind == "variable":
            if text not in self.vars:
                raise self.fail(tok, f"undefined variable {_go_quote(text)}")
            return _Var(pos, text, text, ())
        if kind == "field":
            return _Field(pos, text, (text[1:],))
        if kind == "(":
            pipe = self.pipeline("parenthesized pipeline", ")")
            return _Pipe(pos, self.src[pos : self.toks[self.i - 1].pos + 1], *_pipe_parts(pipe))
        simple = self.literal(tok)
        if simple is None:
            self.i -= 1
        return simple

    def literal(self, tok: _Tok) -> _Node | None:
        kind, text, pos = tok.kind, tok.text, tok.pos
        if kind == "dot":
            return _Dot(pos, ".")
        if kind == "nil":
            return _Lit(pos, text, None, "nil")
        if kind == "bool":
            return _Lit(pos, text, text == "true", "bool")
        if kind == "number":
            return _Lit(pos, text, _number(text, self.fail(tok, "bad number syntax")), "number")
        if kind == "char":
            return _Lit(pos, text, ord(self.unquote(tok, text[1:-1])), "number")
        if kind == "string":
            return _Lit(pos, text, self.unquote(tok, text[1:-1]), "string")
        if kind == "raw":
            return _Lit(pos, text, text[1:-1].replace("\r", ""), "string")
        return None

    def unquote(self, tok: _Tok, body: str) -> str:
        def one(m: re.Match[str]) -> str:
            esc = m.group(1)
            if esc in _SIMPLE_ESCAPES:
                return _SIMPLE_ESCAPES[esc]
            if esc[0] in "xuU":
                return chr(int(esc[1:], 16))
            if esc.isdigit():
                return chr(int(esc, 8))
            raise self.fail(tok, "invalid syntax")

        return _ESCAPE_RE.sub(one, body)


def _pipe_parts(pipe: _Pipe) -> tuple[list[str], bool, list[_Cmd]]:
    return pipe.decls, pipe.assign, pipe.cmds


def _number(text: str, err: _TemplateError) -> int | float:
    clean = text.replace("_", "")
    try:
        if re.fullmatch(r"[+-]?(0[xX][0-9a-fA-F]+|\d+)", clean):
            return int(clean, 16) if clean.lstrip("+-")[:2] in ("0x", "0X") else int(clean)
        return float(clean)
    except ValueError:
        raise err from None


# ---------------------------------------------------------------- execution

_NO_FINAL: Any = object()  # no piped value; distinct from None (nil)


class _CallError(Exception):
    """A function's own error; Go reports it as ``error calling NAME: ...``."""


class _Exec:
    """Go's ``text/template`` executor for one run."""

    def __init__(self, src: str, root: Any, out: list[str], funcs: Mapping[str, _Func]) -> None:
        self.src, self.out, self.funcs = src, out, funcs
        self.vars: list[tuple[str, Any]] = [("$", root)]

    def fail(self, node: _Node, msg: str) -> _TemplateError:
        line_start = self.src.rfind("\n", 0, node.pos) + 1
        col = len(self.src[line_start : node.pos].encode())
        where = f'{_line(self.src, node.pos)}:{col}: executing "" at <{node.text}>'
        return _TemplateError(f"{where}: {msg}")

    def walk(self, dot: Any, nodes: list[_Node]) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                self.out.append(node.value)
            elif isinstance(node, _Action):
                value = self.pipe(dot, node.pipe)
                if not node.pipe.decls:
                    self.out.append(_print(value))
            elif isinstance(node, _Branch):
                mark = len(self.vars)
                self.branch(dot, node)
                del self.vars[mark:]

    def branch(self, dot: Any, node: _Branch) -> None:
        value = self.pipe(dot, node.pipe)
        if node.kind == "range":
            self.range(dot, node, value)
        elif _truth(value):
            self.walk(value if node.kind == "with" else dot, node.body)
        elif node.alt is not None:
            self.walk(dot, node.alt)

    def range(self, dot: Any, node: _Branch, value: Any) -> None:
        if value is None or value is MISSING:
            items: list[tuple[Any, Any]] = []
        elif isinstance(value, list | tuple):
            items = list(enumerate(value))
        elif isinstance(value, dict):
            items = sorted(value.items(), key=lambda kv: _sort_key(kv[0]))
        else:
            raise self.fail(node.pipe, f"range can't iterate over {_print(value)}")
        if not items and node.alt is not None:
            self.walk(dot, node.alt)
        decls, mark = node.pipe.decls, len(self.vars)
        for key, elem in items:
            if decls:  # one variable takes the element; two take key and element
                self.vars[mark - len(decls) : mark] = list(zip(decls, [key, elem][-len(decls) :]))
            self.walk(elem, node.body)
            del self.vars[mark:]

    def pipe(self, dot: Any, pipe: _Pipe) -> Any:
        value = _NO_FINAL
        for cmd in pipe.cmds:
            value = self.command(dot, cmd, value)
        for name in pipe.decls:
            if pipe.assign:
                idx = max(i for i, (n, _) in enumerate(self.vars) if n == name)
                self.vars[idx] = (name, value)
            else:
                self.vars.append((name, value))
        return value

    def command(self, dot: Any, cmd: _Cmd, final: Any) -> Any:
        first = cmd.args[0]
        if isinstance(first, _Ident):
            return self.call(dot, first, cmd.args[1:], final)
        has_args = len(cmd.args) > 1 or final is not _NO_FINAL
        if isinstance(first, _Field | _Var | _Chain):
            return self.chain(dot, first, has_args)
        if has_args:
            raise self.fail(first, f"can't give argument to non-function {first.text}")
        if isinstance(first, _Lit) and first.kind == "nil":
            raise self.fail(first, "nil is not a command")
        return self.value(dot, first)

    def value(self, dot: Any, node: _Node) -> Any:
        if isinstance(node, _Lit):
            return node.value
        if isinstance(node, _Dot):
            return dot
        if isinstance(node, _Pipe):
            return self.pipe(dot, node)
        if isinstance(node, _Ident):
            return self.call(dot, node, [], _NO_FINAL)
        return self.chain(dot, node, False)

    def chain(self, dot: Any, node: _Node, has_args: bool) -> Any:
        if isinstance(node, _Field):
            receiver, names = dot, node.names
        elif isinstance(node, _Var):
            receiver = next(v for n, v in reversed(self.vars) if n == node.name)
            names = node.names
        else:
            assert isinstance(node, _Chain)
            receiver, names = self.value(dot, node.node), node.names
        for i, name in enumerate(names):
            receiver = self.field(node, receiver, name, has_args and i == len(names) - 1)
        if has_args and not names:
            raise self.fail(node, f"can't give argument to non-function {node.text}")
        return receiver

    def field(self, node: _Node, receiver: Any, name: str, has_args: bool) -> Any:
        if isinstance(receiver, _Struct):
            if name not in receiver.data:
                raise self.fail(node, f"can't evaluate field {name} in type {receiver.type_name}")
            if has_args:
                raise self.fail(node, f"{name} has arguments but cannot be invoked as function")
            return receiver.data[name]
        if isinstance(receiver, dict):
            if has_args:
                raise self.fail(node, f"{name} is not a method but has arguments")
            return receiver[name] if isinstance(receiver, _Header) else receiver.get(name, MISSING)
        if receiver is MISSING:
            return MISSING
        if receiver is None:
            raise self.fail(node, f"nil pointer evaluating interface {{}}.{name}")
        raise self.fail(node, f"can't evaluate field {name} in type {_go_type(receiver)}")

    def call(self, dot: Any, ident: _Ident, args: list[_Node], final: Any) -> Any:
        func = self.funcs[ident.name]
        count = len(args) + (final is not _NO_FINAL)
        fixed = len(func.params)
        if count != fixed and not (func.variadic and count >= fixed):
            want = f"at least {fixed}" if func.variadic else str(fixed)
            raise self.fail(ident, f"wrong number of args for {ident.name}: want {want} got {count}")
        kinds = [*func.params, *[func.variadic or "any"] * (count - fixed)]
        if func.lazy:  # and/or: Go evaluates arguments only as far as needed
            return func.fn(*(lambda n=n: self.arg(dot, n, "any") for n in args), final)
        values = [self.arg(dot, n, k) for n, k in zip(args, kinds, strict=False)]
        if final is not _NO_FINAL:
            values.append(self.check(ident, final, kinds[-1]))
        try:
            return func.fn(*values)
        except _CallError as err:
            raise self.fail(ident, f"error calling {ident.name}: {err}") from None

    def arg(self, dot: Any, node: _Node, kind: str) -> Any:
        if isinstance(node, _Lit) and kind in ("str", "int"):
            if kind == "str" and node.kind == "string":
                return node.value
            if kind == "int" and node.kind == "number" and float(node.value).is_integer():
                return int(node.value)
            want = "string" if kind == "str" else "integer"
            raise self.fail(node, f"expected {want}; found {node.text}")
        return self.check(node, self.value(dot, node), kind)

    def check(self, node: _Node, value: Any, kind: str) -> Any:
        if value is MISSING:
            value = None  # an invalid value becomes nil where nil is allowed (Go's validateType)
        if kind == "any":
            return value
        ok = {
            "str": isinstance(value, str),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "strlist": isinstance(value, list | tuple) and all(isinstance(v, str) for v in value),
        }[kind]
        if ok:
            return value
        want = {"str": "string", "int": "int", "strlist": "[]string"}[kind]
        if value is None:
            raise self.fail(node, f"invalid value; expected {want}")
        raise self.fail(node, f"wrong type for value; expected {want}; got {_go_type(value)}")


# ---------------------------------------------------------------- functions


@dataclass
class _Func:
    fn: Callable[..., Any]
    params: tuple[str, ...]  # "any", "str", "int", "strlist"
    variadic: str | None = None
    lazy: bool = False


def _and_or(want: bool) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        *thunks, final = args
        value: Any = None
        for get in [*thunks, *([lambda: final] if final is not _NO_FINAL else [])]:
            value = get()
            if _truth(value) != want:
                return value
        return value

    return run


def _index(item: Any, *keys: Any) -> Any:
    for key in keys:
        if item is None:
            return ""  # a nil map[string]string (unset Labels) gives its zero value
        if isinstance(item, dict):
            default = "" if all(isinstance(v, str) for v in item.values()) else None
            item = item.get(key, default)
        elif isinstance(item, str | list | tuple) and isinstance(key, int):
            seq = item.encode() if isinstance(item, str) else item
            if not 0 <= key < len(seq):
                raise _CallError(f"index out of range: {key}")
            item = seq[key]
        else:
            raise _CallError(f"can't index item of type {_go_type(item)}")
    return item


def _length(item: Any) -> int:
    if isinstance(item, str):
        return len(item.encode())
    if isinstance(item, list | tuple | dict):
        return len(item)
    raise _CallError(f"len of type {_go_type(item)}")


def _kind(value: Any) -> str:
    for kind, types in (("bool", bool), ("int", int), ("float", float), ("string", str)):
        if isinstance(value, types):
            return kind
    return "none" if value is None else "other"


def _eq(first: Any, *others: Any) -> bool:
    for other in others:
        if _kind(first) != _kind(other) and first is not None and other is not None:
            raise _CallError("incompatible types for comparison")
        if first == other:
            return True
    return False


def _ordered(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def run(a: Any, b: Any) -> bool:
        if _kind(a) not in ("int", "float", "string") or _kind(b) not in ("int", "float", "string"):
            raise _CallError("invalid type for comparison")
        if _kind(a) != _kind(b):
            raise _CallError("incompatible types for comparison")
        return op(a, b)

    return run


def _sprint(*args: Any) -> str:
    """``fmt.Sprint``: a space between operands when neither is a string."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if i and not isinstance(arg, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(_gofmt(arg))
    return "".join(out)


def _title(text: str) -> str:
    """``strings.Title``: upper-case each letter that follows a separator."""
    out, prev_sep = [], True
    for ch in text:
        out.append(ch.upper() if prev_sep else ch)
        prev_sep = not (ch.isalnum() or ch == "_") and (ch.isspace() or ord(ch) < 0x80)
    return "".join(out)


def _split(text: str, sep: str) -> list[str]:
    return list(text) if sep == "" else text.split(sep)


def _pad(text: str, prefix: int, suffix: int) -> str:
    return " " * prefix + text + " " * suffix if text else text


def _truncate(text: str, length: int) -> str:
    data = text.encode()
    return text if len(data) < length else data[:length].decode(errors="replace")


def _identity(value: str, *_: Any) -> str:
    return value


_FUNCS: dict[str, _Func] = {
    "json": _Func(lambda v: _json(v, False, False), ("any",)),
    "split": _Func(_split, ("str", "str")),
    "join": _Func(lambda items, sep: sep.join(items), ("strlist", "str")),
    "title": _Func(_title, ("str",)),
    "lower": _Func(str.lower, ("str",)),
    "upper": _Func(str.upper, ("str",)),
    "pad": _Func(_pad, ("str", "int", "int")),
    "truncate": _Func(_truncate, ("str", "int")),
    "and": _Func(_and_or(True), ("any",), "any", lazy=True),
    "or": _Func(_and_or(False), ("any",), "any", lazy=True),
    "not": _Func(lambda v: not _truth(v), ("any",)),
    "len": _Func(_length, ("any",)),
    "index": _Func(_index, ("any",), "any"),
    "print": _Func(_sprint, (), "any"),
    "println": _Func(lambda *a: " ".join(_gofmt(x) for x in a) + "\n", (), "any"),
    "printf": _Func(lambda f, *a: _sprintf(f, a), ("str",), "any"),
    "eq": _Func(_eq, ("any", "any"), "any"),
    "ne": _Func(lambda a, b: not _eq(a, b), ("any", "any")),
    "lt": _Func(_ordered(lambda a, b: a < b), ("any", "any")),
    "le": _Func(_ordered(lambda a, b: a <= b), ("any", "any")),
    "gt": _Func(_ordered(lambda a, b: a > b), ("any", "any")),
    "ge": _Func(_ordered(lambda a, b: a >= b), ("any", "any")),
}
# docker's HeaderFunctions: a header shows the column name, not the function's result.
_HEADER_FUNCS = {
    **_FUNCS,
    **{name: _Func(_identity, ("str",)) for name in ("json", "title", "lower", "upper")},
    **{name: _Func(_identity, ("str", "str")) for name in ("split", "join")},
    "truncate": _Func(_identity, ("str", "int")),
}


# ---------------------------------------------------------------- Go value formatting


def _truth(value: Any) -> bool:
    """Go's ``isTrue``: zero values, nil and empty collections are false; structs true."""
    if value is None or value is MISSING:
        return False
    if isinstance(value, _Struct):
        return True
    if isinstance(value, bool | int | float | str | list | tuple | dict):
        return bool(value)
    return True


def _print(value: Any) -> str:
    """What an action prints: nil and missing values show ``<no value>``."""
    return "<no value>" if value is None or value is MISSING else _gofmt(value)


def _gofmt(value: Any) -> str:
    """``fmt``'s ``%v``."""
    if value is None:
        return "<nil>"
    if value is MISSING:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, float):
        return _go_float(value, json=False)
    if isinstance(value, list | tuple):
        return "[" + " ".join(_gofmt(v) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: _sort_key(kv[0]))
        return "map[" + " ".join(f"{_gofmt(k)}:{_gofmt(v)}" for k, v in items) + "]"
    if isinstance(value, _Struct):
        return "{" + " ".join(_gofmt(v) for v in value.data.values()) + "}"
    return str(value)


def _sort_key(key: Any) -> tuple[str, Any]:
    return (type(key).__name__, key)


def _go_type(value: Any) -> str:
    if isinstance(value, _Struct):
        return value.type_name
    if isinstance(value, list | tuple):
        return "[]string" if all(isinstance(v, str) for v in value) else "[]interface {}"
    if isinstance(value, dict):
        strs = all(isinstance(v, str) for v in value.values())
        return "map[string]string" if strs else "map[string]interface {}"
    names = {bool: "bool", int: "int", float: "float64", str: "string", type(None): "<nil>"}
    return names.get(type(value), type(value).__name__)


def _go_float(value: float, *, json: bool) -> str:
    """Go's shortest float: ``%v`` (exponent from 1e+06 on) or JSON (from 1e+21)."""
    if math.isnan(value) or math.isinf(value):
        return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 and not json else "0"
    sign, digits_t, exp = Decimal(repr(value)).normalize().as_tuple()
    digits = "".join(map(str, digits_t))
    assert isinstance(exp, int)
    exp10 = len(digits) + exp - 1
    neg = "-" if sign else ""
    if (exp10 < -4 or exp10 >= 6) if not json else (exp10 < -6 or exp10 >= 21):
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        width = 1 if json else 2  # JSON drops Go's leading exponent zero (e-07 -> e-7)
        return f"{neg}{mantissa}e{'-' if exp10 < 0 else '+'}{abs(exp10):0{width}d}"
    if exp10 < 0:
        return f"{neg}0.{'0' * (-exp10 - 1)}{digits}"
    whole = digits[: exp10 + 1].ljust(exp10 + 1, "0")
    frac = digits[exp10 + 1 :]
    return neg + whole + (f".{frac}" if frac else "")


_JSON_ESCAPES = {i: f"\\u{i:04x}" for i in range(0x20)}
_JSON_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
_JSON_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\", 0x2028: "\\u2028", 0x2029: "\\u2029"})
_JSON_HTML = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026"}


def _json(value: Any, html: bool, as_map: bool) -> str:
    """Go's ``encoding/json`` output, compact; ``html`` escapes <>&, ``as_map`` sorts keys."""
    if value is None or value is MISSING:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value, json=True)
    if isinstance(value, str):
        text = value.encode("utf-8", "replace").decode()  # lone surrogates become U+FFFD
        table = {**_JSON_ESCAPES, **_JSON_HTML} if html else _JSON_ESCAPES
        return '"' + text.translate(table) + '"'
    if isinstance(value, list | tuple):
        return "[" + ",".join(_json(v, html, as_map) for v in value) + "]"
    if isinstance(value, _Struct):
        return _json(value.data, html or value.json_as_map, as_map or value.json_as_map)
    if isinstance(value, dict):
        items = sorted(value.items()) if as_map else list(value.items())
        body = ",".join(f"{_json(str(k), html, as_map)}:{_json(v, html, as_map)}" for k, v in items)
        return "{" + body + "}"
    return _json(str(value), html, as_map)


def _go_quote(text: str) -> str:
    """``strconv.Quote`` for printable text (control characters escaped)."""
    return _json(text, False, False).replace("\\u0007", "\\a").replace("\\u000b", "\\v")


_VERB_RE = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")


def _sprintf(fmt: str, args: Sequence[Any]) -> str:
    """``fmt.Sprintf`` for the common verbs: v s d q t f e g x X c and %%."""
    out: list[str] = []
    pos = used = 0
    for m in _VERB_RE.finditer(fmt):
        out.append(fmt[pos : m.start()])
        pos = m.end()
        flags, width, prec, verb = m.groups()
        if verb == "%":
            out.append("%")
            continue
        if used >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[used]
        used += 1
        text = _verb(verb, arg, flags, int(prec) if prec is not None else None)
        if text is None:
            text = f"%!{verb}({_go_type(arg)}={_gofmt(arg)})"
        elif width and len(text) < int(width):
            fill = int(width) - len(text)
            zero = "0" in flags and "-" not in flags and verb in "dfegxX"
            text = text + " " * fill if "-" in flags else ("0" if zero else " ") * fill + text
        out.append(text)
    out.append(fmt[pos:])
    if used < len(args):
        extra = ", ".join(f"{_go_type(a)}={_gofmt(a)}" for a in args[used:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _verb(verb: str, arg: Any, flags: str, prec: int | None) -> str | None:
    is_int = isinstance(arg, int) and not isinstance(arg, bool)
    sign = "+" if "+" in flags else ""
    if verb == "v":
        return _gofmt(arg)
    if verb == "s" and isinstance(arg, str):
        return arg if prec is None else arg[:prec]
    if verb == "q" and isinstance(arg, str):
        return _go_quote(arg)
    if verb == "t" and isinstance(arg, bool):
        return _gofmt(arg)
    if verb == "d" and is_int:
        return f"{arg:{sign}d}"
    if verb == "c" and is_int:
        return chr(arg)
    if verb in "xX" and (is_int or isinstance(arg, str)):
        text = arg.encode().hex() if isinstance(arg, str) else f"{arg:x}"
        return text.upper() if verb == "X" else text
    if verb in "feg" and isinstance(arg, float):
        if verb == "g" and prec is None:
            return sign * (arg >= 0) + _go_float(arg, json=False)
        return f"{arg:{sign}.{6 if prec is None else prec}{verb}}"
    return None
