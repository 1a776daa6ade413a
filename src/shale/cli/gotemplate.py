"""Go text/template, the part docker's --format needs: values, lexer and parser.

The executor is ``gotexec``; ``format`` is the entry point (``render``, ``Template``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from shale.cli.table import go_format, go_quote, go_type


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
            from shale.cli.gotexec import _FUNCS  # the executor owns the function table

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


