"""Go text/template execution and docker's template functions (json, join, table...)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shale.cli.gotemplate import (
    _NO_FINAL,
    MISSING,
    _Action,
    _CallError,
    _Field,
    _Header,
    _Ident,
    _is_str,
    _line,
    _Lit,
    _Node,
    _Pipe,
    _print,
    _Struct,
    _TemplateError,
    _Text,
    _truth,
    _type,
)
from shale.cli.table import go_format, go_json, go_sprintf


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
