"""Docker's ``--format``: a port of Go's ``text/template`` with the docker CLI's functions.

Language: text, ``{{.Field}}``, ``{{.A.B}}``, ``{{.}}``, ``$``, ``$x :=``/``$x =``,
pipelines ``{{.X | json}}``, ``( ... )``, string/raw/char/number/bool/nil literals,
``if``/``else if``/``with``/``range $i, $e :=``/``else``/``end``, trim markers
``{{- -}}``, comments ``{{/* */}}``. Functions: docker's ``json split join title lower
upper pad truncate`` and Go's ``and or not len index print printf println eq ne lt le gt
ge``. Not ported: ``define``, ``template``, ``block``, ``break``, ``continue``.

Python values stand for Go ones. A row given to :func:`render` is a docker formatter
context, a Go struct: an unknown field is an error and ``{{json .}}`` sorts its keys and
escapes ``<>&`` (docker marshals contexts through a map). Any other dict is a Go map: a
missing key prints ``<no value>``; its JSON keeps the dict's order, so give structs in
field order. ``None`` is nil. Errors read as Go's, prefixed as docker prefixes them:
``template parsing error: template: :1:2: executing "" at <.Foo>: can't evaluate field
Foo in type *formatter.imageContext``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shale.cli.table import go_format, go_json, go_quote, go_sprintf, go_type, tabwrite
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
    ``\\t`` and ``\\n`` become tab and newline, each row ends with a newline. A table gets
    a header row (the template run on ``headers``: ``{{.ID}}`` -> ``IMAGE ID``; a field
    missing there shows upper-cased) and docker's tabwriter alignment. ``type_name`` names
    the row type in "can't evaluate field" errors (docker's is ``*formatter.imageContext``,
    ``*formatter.historyContext``, ...). An empty ``table`` is the caller's to replace by
    its default format. Raises InvalidArgument.
    """
    is_table = template.startswith(TABLE_PREFIX)
    text = template[len(TABLE_PREFIX) :] if is_table else template
    text = text.strip(" ").replace("\\t", "\t").replace("\\n", "\n")
    tmpl = Template(text)
    body = "".join(tmpl.execute(_Struct(dict(row), type_name, True)) + "\n" for row in rows)
    if not is_table:
        return body
    return tabwrite(tmpl.header(headers or {}) + "\n" + body)


class Template:
    """A parsed template (InvalidArgument if malformed); ``execute`` runs it on a value."""

    def __init__(self, text: str) -> None:
        self.text = text
        try:
            self._nodes = _Parser(text).parse()
        except _TemplateError as err:
            raise InvalidArgument(f"template parsing error: template: :{err}") from None

    def execute(self, data: Any, *, type_name: str | None = None) -> str:
        """Run on ``data``; with ``type_name`` a dict ``data`` is a Go struct of that type.

        ``docker inspect --format`` is ``Template(fmt).execute(item, type_name=...)`` + "\\n"
        (no ``table``, no trimming, no ``\\t`` replacement).
        """
        if type_name is not None and isinstance(data, dict):
            data = _Struct(data, type_name, False)
        out: list[str] = []
        try:
            _Exec(self.text, data, out, _FUNCS).walk(data, self._nodes)
        except _TemplateError as err:
            raise InvalidArgument(f"template parsing error: template: :{err}") from None
        return "".join(out)

    def header(self, headers: Mapping[str, str]) -> str:
        """The table header: this template run on the header names with docker's
        ``HeaderFunctions``; an error cuts it short, as docker ignores it."""
        out: list[str] = []
        data = _Header(headers)
        try:
            _Exec(self.text, data, out, _HEADER_FUNCS).walk(data, self._nodes)
        except _TemplateError:
            pass
        return "".join(out)


# ---------------------------------------------------------------- values


class _Missing:
    """Go's invalid ``reflect.Value``, the result of a missing map key."""


MISSING = _Missing()
_NO_FINAL: Any = object()  # a command with no piped-in value; unlike None (nil)


@dataclass
class _Struct:
    """A Go struct: the dict's keys are its fields."""

    data: dict[str, Any]
    type_name: str
    json_as_map: bool  # docker's contexts marshal through a map: sorted keys, <>& escaped


class _Header(dict[str, str]):
    """Header names by field; a field without one shows its name upper-cased."""

    def __missing__(self, key: str) -> str:
        return key.upper()


class _TemplateError(Exception):
    """Go's message after ``template: :`` (``1: unexpected EOF``, ``1:2: executing ...``)."""


class _CallError(Exception):
    """A function's own failure, reported as ``error calling NAME: ...``."""


def _print(value: Any) -> str:
    """What an action prints: ``<no value>`` for nil and missing values."""
    if value is None or value is MISSING:
        return "<no value>"
    if isinstance(value, _Struct):
        return "{" + " ".join(go_format(v) for v in value.data.values()) + "}"
    return go_format(value)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _type(value: Any) -> str:
    return value.type_name if isinstance(value, _Struct) else go_type(value)


def _truth(value: Any) -> bool:
    """Go's ``isTrue``: nil, zero and empty are false; a struct is true."""
    if value is None or value is MISSING:
        return False
    return True if isinstance(value, _Struct) else bool(value)


# ---------------------------------------------------------------- lexer

_SPACE = " \t\r\n"
_TOKEN_RE = re.compile(
    r"""(?P<space>[ \t\r\n]+)|(?P<sym>:=|[|()=,])
    |(?P<string>"(?:[^"\\\n]|\\.)*")|(?P<raw>`[^`]*`)|(?P<char>'(?:[^'\\\n]|\\.)+')
    |(?P<number>[+-]?(?:0[xX][0-9a-fA-F_]+|(?:\d[\d_]*)?\.?\d[\d_]*(?:[eE][+-]?\d+)?))
    |(?P<field>\.[A-Za-z_]\w*)|(?P<dot>\.)|(?P<variable>\$\w*)|(?P<ident>[A-Za-z_]\w*)""",
    re.VERBOSE | re.ASCII,
)
_KEYWORDS = {"if", "else", "end", "range", "with", "define", "template", "block", "break"}
_KEYWORDS |= {"continue", "nil", "true", "false"}
_UNTERMINATED = {'"': "quoted string", "`": "raw quoted string", "'": "character constant"}


@dataclass
class _Tok:
    kind: str  # text, eof, {{, }}, a symbol itself, a keyword itself, or a _TOKEN_RE group
    text: str
    pos: int


def _line(src: str, pos: int) -> int:
    return src.count("\n", 0, pos) + 1


def _lex(src: str) -> list[_Tok]:
    """Text and action tokens; trim markers and comments are applied here."""
    toks: list[_Tok] = []
    i = 0
    while (j := src.find("{{", i)) >= 0:
        text, start = src[i:j], j + 2
        if src[start : start + 1] == "-" and src[start + 1 : start + 2] in tuple(_SPACE):
            text, start = text.rstrip(_SPACE), start + 2
        toks.append(_Tok("text", text, i))
        i, trim = _lex_action(src, start, toks)
        while trim and i < len(src) and src[i] in _SPACE:
            i += 1
    toks += [_Tok("text", src[i:], i), _Tok("eof", "", len(src))]
    return toks


def _lex_action(src: str, i: int, toks: list[_Tok]) -> tuple[int, bool]:
    """Tokens of one action from after ``{{``; returns where text resumes and if trimmed."""
    line = _line(src, i)
    if src.startswith("/*", i):
        end = src.find("*/", i + 2)
        if end < 0:
            raise _TemplateError(f"{line}: unclosed comment")
        for close, trim in (("}}", False), (" -}}", True)):
            if src.startswith(close, end + 2):
                return end + 2 + len(close), trim
        raise _TemplateError(f"{line}: comment ends before closing delimiter")
    toks.append(_Tok("{{", "{{", i))
    while i < len(src):
        for close, trim in (("}}", False), (" -}}", True), ("\t-}}", True), ("\n-}}", True)):
            if src.startswith(close, i):
                toks.append(_Tok("}}", "}}", i + len(close) - 2))
                return i + len(close), trim
        m = _TOKEN_RE.match(src, i)
        if m is None:
            what = _UNTERMINATED.get(src[i])
            if what:
                raise _TemplateError(f"{line}: unterminated {what}")
            ch = src[i]
            raise _TemplateError(
                f"{line}: unrecognized character in action: U+{ord(ch):04X} {ch!r}"
            )
        kind = m.lastgroup or ""
        if kind == "sym" or m.group() in _KEYWORDS:
            kind = m.group()
        toks.append(_Tok(kind, m.group(), i))
        i = m.end()
    raise _TemplateError(f"{line}: unclosed action")


# ---------------------------------------------------------------- parse tree


@dataclass
class _Node:
    pos: int
    text: str  # the source, shown in errors as "at <...>"


@dataclass
class _Text(_Node):
    value: str


@dataclass
class _Lit(_Node):
    kind: str  # string, number, bool, nil, dot
    value: Any = None


@dataclass
class _Ident(_Node):
    """A function name."""


@dataclass
class _Field(_Node):
    """``.A.B`` (base None: from dot), ``$x.A`` (base "$x"), ``(pipe).A`` (base a node)."""

    base: str | _Node | None
    names: tuple[str, ...]


@dataclass
class _Pipe(_Node):
    cmds: list[list[_Node]]  # each command: its operands
    decls: list[str] = field(default_factory=list)
    assign: bool = False


@dataclass
class _Action(_Node):
    kind: str  # print, if, with, range
    pipe: _Pipe
    body: list[_Node] = field(default_factory=list)
    alt: list[_Node] | None = None


_OPERAND_START = {"true", "false", "char", "dot", "field", "ident", "number", "nil", "raw"}
_OPERAND_START |= {"string", "variable", "("}
_ESCAPE_RE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{3}|.)")
_SIMPLE_ESCAPES = dict(zip("abfnrtv\\'\"", "\a\b\f\n\r\t\v\\'\"", strict=True))


class _Parser:
    """Go's ``text/template/parse``, recursive descent over the tokens."""

    def __init__(self, src: str) -> None:
        self.src, self.toks, self.i = src, _lex(src), 0
        self.vars = ["$"]

    def next(self, skip_space: bool = True) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        while skip_space and tok.kind == "space":
            tok = self.toks[self.i]
            self.i += 1
        return tok

    def peek(self) -> _Tok:
        tok = self.next()
        self.i -= 1
        return tok

    def fail(self, tok: _Tok, msg: str) -> _TemplateError:
        return _TemplateError(f"{_line(self.src, tok.pos)}: {msg}")

    def unexpected(self, tok: _Tok, context: str) -> _TemplateError:
        if tok.kind == "eof":
            shown = "EOF"
        elif tok.kind in _KEYWORDS - {"true", "false"} or tok.kind == "dot":
            shown = f"<{tok.text}>"
        else:
            shown = go_quote(tok.text[:10]) + ("..." if len(tok.text) > 10 else "")
        return self.fail(tok, f"unexpected {shown} in {context}")

    def parse(self) -> list[_Node]:
        body, end = self.item_list()
        if end.kind != "eof":
            raise self.fail(end, f"unexpected {{{{{end.kind}}}}}")
        return body

    def item_list(self) -> tuple[list[_Node], _Tok]:
        """Nodes up to EOF, ``{{end`` or ``{{else``, and the token that ended them."""
        nodes: list[_Node] = []
        while (tok := self.next(skip_space=False)).kind != "eof":
            if tok.kind == "text":
                nodes += [_Text(tok.pos, tok.text, tok.text)] if tok.text else []
                continue
            kw = self.next()
            if kw.kind in ("end", "else"):
                return nodes, kw
            if kw.kind in ("if", "with", "range"):
                nodes.append(self.control(kw))
            elif kw.kind in ("define", "template", "block", "break", "continue"):
                raise self.fail(kw, f"{{{{{kw.kind}}}}} is not supported")
            else:
                self.i -= 1
                nodes.append(_Action(kw.pos, "", "print", self.pipeline("command", "}}")))
        return nodes, tok

    def control(self, kw: _Tok) -> _Action:
        """``if``/``with``/``range`` up to its ``{{end}}``; ``{{else if}}`` nests."""
        mark = len(self.vars)
        node = _Action(kw.pos, kw.text, kw.kind, self.pipeline(kw.kind, "}}"))
        node.body, end = self.item_list()
        if end.kind == "else":
            nxt = self.next()
            if nxt.kind == kw.kind != "range":  # one {{end}} closes the whole chain
                node.alt = [self.control(nxt)]
                del self.vars[mark:]
                return node
            if nxt.kind != "}}":
                raise self.unexpected(nxt, "else")
            node.alt, end = self.item_list()
            if end.kind == "else":
                raise self.fail(end, "expected end; found {{else}}")
        if end.kind == "eof":
            raise self.fail(end, "unexpected EOF")
        if (close := self.next()).kind != "}}":
            raise self.unexpected(close, "end")
        del self.vars[mark:]
        return node

    def pipeline(self, context: str, end: str) -> _Pipe:
        pipe = _Pipe(self.peek().pos, "", [])
        self.declarations(pipe, context)
        while (tok := self.next()).kind != end:
            if tok.kind not in _OPERAND_START:
                raise self.unexpected(tok, context)
            self.i -= 1
            pipe.cmds.append(self.command())
        if not pipe.cmds:
            raise self.fail(tok, f"missing value for {context}")
        for stage, cmd in enumerate(pipe.cmds[1:], start=2):
            if isinstance(cmd[0], _Lit):
                raise self.fail(tok, f"non executable command in pipeline stage {stage}")
        pipe.text = self.src[pipe.pos : tok.pos].strip()
        return pipe

    def declarations(self, pipe: _Pipe, context: str) -> None:
        """``$x :=``, ``$x =`` or, in ``range``, ``$i, $e :=``; nothing if absent."""
        save = self.i
        if (first := self.next()).kind == "variable":
            op = self.next()
            if op.kind == "=" and first.text not in self.vars:
                raise self.fail(first, f"undefined variable {go_quote(first.text)}")
            if op.kind in (":=", "="):
                pipe.decls, pipe.assign = [first.text], op.kind == "="
                self.vars.append(first.text)
                return
            if op.kind == "," and context == "range":
                second = self.next()
                if second.kind != "variable" or self.next().kind != ":=":
                    raise self.fail(op, "range can only initialize variables")
                pipe.decls = [first.text, second.text]
                self.vars += pipe.decls
                return
        self.i = save

    def command(self) -> list[_Node]:
        """Space-separated operands up to ``|``, ``}}`` or ``)``."""
        args: list[_Node] = []
        while True:
            if (operand := self.operand()) is not None:
                args.append(operand)
            tok = self.next(skip_space=False)
            if tok.kind == "space":
                continue
            if tok.kind in ("}}", ")"):
                self.i -= 1
            elif tok.kind != "|":
                raise self.unexpected(tok, "operand")
            if not args:
                raise self.fail(tok, "empty command")
            return args

    def operand(self) -> _Node | None:
        node = self.term()
        if node is None or self.toks[self.i].kind != "field":
            return node
        pos, names = self.toks[self.i].pos, []  # Go places a chain at its second field
        while self.toks[self.i].kind == "field":
            names.append(self.next(skip_space=False).text[1:])
        text = node.text + "".join("." + n for n in names)
        if isinstance(node, _Field):
            return _Field(pos, text, node.base, node.names + tuple(names))
        if isinstance(node, _Lit):
            raise self.fail(self.toks[self.i], f"unexpected . after term {go_quote(node.text)}")
        return _Field(pos, text, node, tuple(names))

    def term(self) -> _Node | None:
        tok = self.next()
        kind, text, pos = tok.kind, tok.text, tok.pos
        if kind == "ident":
            if text not in _FUNCS:
                raise self.fail(tok, f"function {go_quote(text)} not defined")
            return _Ident(pos, text)
        if kind == "variable":
            if text not in self.vars:
                raise self.fail(tok, f"undefined variable {go_quote(text)}")
            return _Field(pos, text, text, ())
        if kind == "field":
            return _Field(pos, text, None, (text[1:],))
        if kind == "(":
            pipe = self.pipeline("parenthesized pipeline", ")")
            pipe.pos, pipe.text = pos, f"({pipe.text})"
            return pipe
        if kind in ("dot", "nil"):
            return _Lit(pos, text, kind)
        if kind in ("true", "false"):
            return _Lit(pos, text, "bool", kind == "true")
        if kind == "number":
            return _Lit(pos, text, "number", self.number(tok))
        if kind == "char":
            return _Lit(pos, text, "number", ord(self.unquote(tok, text[1:-1])))
        if kind == "string":
            return _Lit(pos, text, "string", self.unquote(tok, text[1:-1]))
        if kind == "raw":
            return _Lit(pos, text, "string", text[1:-1].replace("\r", ""))
        self.i -= 1
        return None

    def number(self, tok: _Tok) -> int | float:
        clean = tok.text.replace("_", "")
        try:
            if re.fullmatch(r"[+-]?0[xX][0-9a-fA-F]+", clean):
                return int(clean, 16)
            return int(clean) if re.fullmatch(r"[+-]?\d+", clean) else float(clean)
        except ValueError:
            raise self.fail(tok, f"bad number syntax: {go_quote(tok.text)}") from None

    def unquote(self, tok: _Tok, body: str) -> str:
        def one(m: re.Match[str]) -> str:
            esc = m.group(1)
            if esc in _SIMPLE_ESCAPES:
                return _SIMPLE_ESCAPES[esc]
            if esc[0] in "xuU" or esc.isdigit():
                return chr(int(esc[1:], 16) if esc[0] in "xuU" else int(esc, 8))
            raise self.fail(tok, "invalid syntax")

        return _ESCAPE_RE.sub(one, body)


# ---------------------------------------------------------------- execution


class _Exec:
    """Go's ``text/template`` executor, for one run writing into ``out``."""

    def __init__(self, src: str, root: Any, out: list[str], funcs: Mapping[str, _Func]) -> None:
        self.src, self.out, self.funcs = src, out, funcs
        self.vars: list[tuple[str, Any]] = [("$", root)]

    def fail(self, node: _Node, msg: str) -> _TemplateError:
        col = len(self.src[self.src.rfind("\n", 0, node.pos) + 1 : node.pos].encode())
        where = f'{_line(self.src, node.pos)}:{col}: executing "" at <{node.text}>'
        return _TemplateError(f"{where}: {msg}")

    def walk(self, dot: Any, nodes: list[_Node]) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                self.out.append(node.value)
            elif isinstance(node, _Action):
                mark = len(self.vars)
                self.action(dot, node)
                if node.kind != "print":  # a control's variables end with it
                    del self.vars[mark:]

    def action(self, dot: Any, node: _Action) -> None:
        value = self.pipe(dot, node.pipe)
        if node.kind == "print":
            self.out.append("" if node.pipe.decls else _print(value))
        elif node.kind == "range":
            self.range(dot, node, value)
        elif _truth(value):
            self.walk(value if node.kind == "with" else dot, node.body)
        elif node.alt is not None:
            self.walk(dot, node.alt)

    def range(self, dot: Any, node: _Action, value: Any) -> None:
        if value is None or value is MISSING:
            items: list[tuple[Any, Any]] = []
        elif isinstance(value, list | tuple):
            items = list(enumerate(value))
        elif isinstance(value, dict):  # Go visits a map in key order
            items = sorted(value.items(), key=lambda kv: (type(kv[0]).__name__, kv[0]))
        else:
            raise self.fail(node.pipe, f"range can't iterate over {_print(value)}")
        if not items and node.alt is not None:
            self.walk(dot, node.alt)
        decls, mark = node.pipe.decls, len(self.vars)
        for key, elem in items:
            if decls:  # one variable takes the element; two take key and element
                pairs = zip(decls, [key, elem][-len(decls) :], strict=True)
                self.vars[mark - len(decls) : mark] = list(pairs)
            self.walk(elem, node.body)
            del self.vars[mark:]

    def pipe(self, dot: Any, pipe: _Pipe) -> Any:
        value = _NO_FINAL
        for cmd in pipe.cmds:
            value = self.command(dot, cmd, value)
        for name in pipe.decls:
            if pipe.assign:
                self.vars[self.var_index(pipe, name)] = (name, value)
            else:
                self.vars.append((name, value))
        return value

    def var_index(self, node: _Node, name: str) -> int:
        """The innermost variable of that name; one declared in a branch not taken is
        known to the parser but not here, as in Go."""
        for i in range(len(self.vars) - 1, -1, -1):
            if self.vars[i][0] == name:
                return i
        raise self.fail(node, f"undefined variable: {name}")

    def command(self, dot: Any, args: list[_Node], final: Any) -> Any:
        first = args[0]
        if isinstance(first, _Ident):
            cmd = _Node(first.pos, " ".join(a.text for a in args))
            return self.call(dot, first, args[1:], final, cmd)
        nargs = len(args) - 1 + (final is not _NO_FINAL)
        if isinstance(first, _Field):
            return self.field(dot, first, nargs)
        if nargs:
            raise self.fail(first, f"can't give argument to non-function {first.text}")
        if isinstance(first, _Lit) and first.kind == "nil":
            raise self.fail(first, "nil is not a command")
        return self.value(dot, first)

    def value(self, dot: Any, node: _Node) -> Any:
        if isinstance(node, _Lit):
            return dot if node.kind == "dot" else node.value
        if isinstance(node, _Pipe):
            return self.pipe(dot, node)
        if isinstance(node, _Ident):
            return self.call(dot, node, [], _NO_FINAL, node)
        assert isinstance(node, _Field)
        return self.field(dot, node, 0)

    def field(self, dot: Any, node: _Field, nargs: int) -> Any:
        if node.base is None:
            value = dot
        elif isinstance(node.base, str):
            value = self.vars[self.var_index(node, node.base)][1]
        else:
            value = self.value(dot, node.base)
        if nargs and not node.names:
            raise self.fail(node, f"can't give argument to non-function {node.text}")
        for name in node.names:
            value = self.lookup(node, value, name, nargs if name is node.names[-1] else 0)
        return value

    def lookup(self, node: _Node, receiver: Any, name: str, nargs: int) -> Any:
        if isinstance(receiver, _Struct):
            if name not in receiver.data:
                raise self.fail(node, f"can't evaluate field {name} in type {receiver.type_name}")
            if nargs:  # docker's context fields are methods taking no arguments
                raise self.fail(node, f"wrong number of args for {name}: want 0 got {nargs}")
            return receiver.data[name]
        if isinstance(receiver, dict):
            if nargs:
                raise self.fail(node, f"{name} is not a method but has arguments")
            return receiver[name] if isinstance(receiver, _Header) else receiver.get(name, MISSING)
        if receiver is MISSING:
            return MISSING
        if receiver is None:
            raise self.fail(node, f"nil pointer evaluating interface {{}}.{name}")
        raise self.fail(node, f"can't evaluate field {name} in type {_type(receiver)}")

    def call(self, dot: Any, ident: _Ident, args: list[_Node], final: Any, cmd: _Node) -> Any:
        func = self.funcs[ident.text]
        count, fixed = len(args) + (final is not _NO_FINAL), len(func.params)
        if count != fixed and not (func.variadic and count >= fixed):
            want = f"at least {fixed}" if func.variadic else str(fixed)
            msg = f"wrong number of args for {ident.text}: want {want} got {count}"
            raise self.fail(ident, msg)
        kinds = [*func.params, *[func.variadic or "any"] * (count - fixed)]
        if func.lazy:  # and/or stop evaluating at the first deciding argument, as Go 1.18+
            values: list[Any] = [lambda n=n: self.arg(dot, n, "any") for n in args]
            values += [] if final is _NO_FINAL else [lambda: final]
        else:
            values = [self.arg(dot, n, k) for n, k in zip(args, kinds, strict=False)]
            values += [] if final is _NO_FINAL else [self.check(ident, final, kinds[-1])]
        try:
            return func.fn(*values)
        except _CallError as err:
            raise self.fail(cmd, f"error calling {ident.text}: {err}") from None

    def arg(self, dot: Any, node: _Node, kind: str) -> Any:
        """One argument; a literal must already be of the parameter's type (Go's rule)."""
        if isinstance(node, _Lit) and node.kind != "dot" and kind in ("str", "int"):
            if kind == "str" and node.kind == "string":
                return node.value
            if kind == "int" and node.kind == "number" and float(node.value).is_integer():
                return int(node.value)
            want = "string" if kind == "str" else "integer"
            raise self.fail(node, f"expected {want}; found {node.text}")
        return self.check(node, self.value(dot, node), kind)

    def check(self, node: _Node, value: Any, kind: str) -> Any:
        if value is MISSING:
            value = None  # Go passes an invalid value on as nil where nil is allowed
        if kind == "any":
            return value
        if kind == "str" and isinstance(value, str):
            return value
        if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind == "strlist" and isinstance(value, list | tuple) and all(map(_is_str, value)):
            return value
        want = {"str": "string", "int": "int", "strlist": "[]string"}[kind]
        if value is None:
            raise self.fail(node, f"invalid value; expected {want}")
        raise self.fail(node, f"wrong type for value; expected {want}; got {_type(value)}")


# ---------------------------------------------------------------- functions


@dataclass
class _Func:
    fn: Callable[..., Any]
    params: tuple[str, ...]  # each "any", "str", "int" or "strlist"
    variadic: str | None = None
    lazy: bool = False  # receives thunks, not values


def _and_or(stop_on: bool) -> Callable[..., Any]:
    """Go's ``and`` (stop at the first false) and ``or`` (at the first true)."""

    def run(*thunks: Callable[[], Any]) -> Any:
        value: Any = None
        for get in thunks:
            if _truth(value := get()) == stop_on:
                return value
        return value

    return run


def _index(item: Any, *keys: Any) -> Any:
    for key in keys:
        if item is None:
            return ""  # an unset map[string]string (Labels) gives its zero value
        if isinstance(item, dict):
            item = item.get(key, "" if all(isinstance(v, str) for v in item.values()) else None)
        elif isinstance(item, str | list | tuple) and isinstance(key, int):
            seq = item.encode() if isinstance(item, str) else item
            if not 0 <= key < len(seq):
                raise _CallError(f"index out of range: {key}")
            item = seq[key]
        else:
            raise _CallError(f"can't index item of type {_type(item)}")
    return item


def _length(item: Any) -> int:
    if isinstance(item, str | list | tuple | dict):
        return len(item.encode() if isinstance(item, str) else item)
    raise _CallError(f"len of type {_type(item)}")


def _slice(item: Any, *bounds: int) -> Any:
    if not isinstance(item, str | list | tuple):
        raise _CallError(f"can't slice item of type {_type(item)}")
    seq = item.encode() if isinstance(item, str) else item
    lo, hi = (list(bounds) + [0, len(seq)][len(bounds) :])[:2]
    if not 0 <= lo <= hi <= len(seq) or len(bounds) > 2:
        raise _CallError(f"index out of range: {hi if hi > len(seq) else lo}")
    part = seq[lo:hi]
    return part.decode(errors="replace") if isinstance(part, bytes) else list(part)


def _kind(value: Any) -> str:
    for kind, types in (("bool", bool), ("int", int), ("float", float), ("string", str)):
        if isinstance(value, types):
            return kind
    return "nil" if value is None else "other"


def _eq(first: Any, *others: Any) -> bool:
    if not others:
        raise _CallError("missing argument for comparison")
    for other in others:
        if _kind(first) != _kind(other) and None not in (first, other):
            raise _CallError("incompatible types for comparison")
        if first == other:
            return True
    return False


def _ordered(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def run(a: Any, b: Any) -> bool:
        if not {_kind(a), _kind(b)} <= {"int", "float", "string"}:
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
        out.append(go_format(arg))
    return "".join(out)


def _title(text: str) -> str:
    """``strings.Title``: upper-case each letter that follows a separator."""
    out, after_sep = [], True
    for ch in text:
        out.append(ch.upper() if after_sep else ch)
        after_sep = not (ch.isalnum() or ch == "_") and (ch.isspace() or ch.isascii())
    return "".join(out)


def _truncate(text: str, length: int) -> str:
    data = text.encode()  # Go slices bytes
    return text if len(data) < length else data[:length].decode(errors="replace")


def _json_func(value: Any) -> str:
    if isinstance(value, _Struct):
        as_map = value.json_as_map
        return go_json(value.data, escape_html=as_map, sort_keys=as_map)
    return go_json(value)


def _identity(value: str, *_: Any) -> str:
    return value


_FUNCS: dict[str, _Func] = {
    "json": _Func(_json_func, ("any",)),
    "split": _Func(lambda s, sep: s.split(sep) if sep else list(s), ("str", "str")),
    "join": _Func(lambda items, sep: sep.join(items), ("strlist", "str")),
    "title": _Func(_title, ("str",)),
    "lower": _Func(str.lower, ("str",)),
    "upper": _Func(str.upper, ("str",)),
    "pad": _Func(lambda s, a, b: " " * a + s + " " * b if s else s, ("str", "int", "int")),
    "truncate": _Func(_truncate, ("str", "int")),
    "and": _Func(_and_or(False), ("any",), "any", lazy=True),
    "or": _Func(_and_or(True), ("any",), "any", lazy=True),
    "not": _Func(lambda v: not _truth(v), ("any",)),
    "len": _Func(_length, ("any",)),
    "index": _Func(_index, ("any",), "any"),
    "slice": _Func(_slice, ("any",), "int"),
    "print": _Func(_sprint, (), "any"),
    "println": _Func(lambda *a: " ".join(go_format(x) for x in a) + "\n", (), "any"),
    "printf": _Func(lambda f, *a: go_sprintf(f, a), ("str",), "any"),
    "eq": _Func(_eq, ("any",), "any"),
    "ne": _Func(lambda a, b: not _eq(a, b), ("any", "any")),
    "lt": _Func(_ordered(lambda a, b: a < b), ("any", "any")),
    "le": _Func(_ordered(lambda a, b: a <= b), ("any", "any")),
    "gt": _Func(_ordered(lambda a, b: a > b), ("any", "any")),
    "ge": _Func(_ordered(lambda a, b: a >= b), ("any", "any")),
}
# docker's HeaderFunctions: in a header these show the column name unchanged.
_HEADER_FUNCS = {
    **_FUNCS,
    **{name: _Func(_identity, ("str",)) for name in ("json", "title", "lower", "upper")},
    **{name: _Func(_identity, ("str", "str")) for name in ("split", "join")},
    "truncate": _Func(_identity, ("str", "int")),
}
