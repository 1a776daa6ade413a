"""How docker prints values and tables: Go's printing rules, ported.

* ``tabwrite``: Go's ``text/tabwriter`` as the docker CLI sets it up
  (``tabwriter.NewWriter(out, 10, 1, 3, ' ', 0)``: minimum cell width 10, padding 3).
* ``human_size``, ``human_duration``: ``github.com/docker/go-units``.
* ``go_format``, ``go_json``, ``go_sprintf``: Go's ``fmt`` ``%v``, ``encoding/json`` and
  ``fmt.Sprintf``, which ``--format`` templates print with (``shale.cli.format``).
  Python values stand for Go ones: ``None`` is nil, a dict a map or a struct.
"""

from __future__ import annotations

import math
import re
import time
import unicodedata
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

MIN_WIDTH = 10
PADDING = 3
SHORT_ID_LEN = 12

_SIZE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


def render_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A header and rows laid out like ``docker images``; every line ends in a newline.

    The last column is not padded (docker's rows end there), so no line has trailing
    spaces unless a value does.
    """
    lines = ["\t".join(columns)] + ["\t".join(row) for row in rows]
    return tabwrite("".join(line + "\n" for line in lines))


def tabwrite(text: str, minwidth: int = MIN_WIDTH, padding: int = PADDING) -> str:
    """Align tab-terminated cells as Go's ``text/tabwriter`` does, then flush.

    A cell ends at ``\\t`` or ``\\v``; a line at ``\\n`` or ``\\f`` (``\\f`` also ends the
    section, so later lines do not widen earlier columns). The text after a line's last tab
    is not a column and is written as it is. A column is a run of consecutive lines that
    have a cell in it; its width is the widest cell plus ``padding``, at least ``minwidth``.
    Widths count code points, as Go counts runes.
    """
    out: list[str] = []
    sections = text.split("\f")
    for n, section in enumerate(sections):
        lines = [line.replace("\v", "\t").split("\t") for line in section.split("\n")]
        widths: list[list[int]] = [[] for _ in lines]
        _layout(lines, 0, len(lines), [], widths, minwidth, padding)
        for i, cells in enumerate(lines):
            for j, cell in enumerate(cells):
                out.append(cell)
                if j < len(widths[i]):
                    out.append(" " * (widths[i][j] - len(cell)))
            # Every line but the unterminated last one of the text ends in a newline.
            if i + 1 < len(lines) or n + 1 < len(sections):
                out.append("\n")
    return "".join(out)


def _layout(
    lines: list[list[str]],
    line0: int,
    line1: int,
    current: list[int],
    widths: list[list[int]],
    minwidth: int,
    padding: int,
) -> None:
    """Go's recursive ``Writer.format``: give each line the column widths it is set in.

    A line's last cell is not a column (cells are tab-terminated), so a block for column
    ``c`` is a run of lines with more than ``c + 1`` cells.
    """
    column = len(current)
    this = line0
    while this < line1:
        if column >= len(lines[this]) - 1:
            this += 1
            continue
        for i in range(line0, this):
            widths[i] = current
        line0 = this
        width = minwidth
        while this < line1 and column < len(lines[this]) - 1:
            width = max(width, len(lines[this][column]) + padding)
            this += 1
        _layout(lines, line0, this, [*current, width], widths, minwidth, padding)
        line0 = this
        this += 1  # Go's loop steps past the line that ended the block; it has no cell here
    for i in range(line0, line1):
        widths[i] = current


def human_size(size: float) -> str:
    """``units.HumanSizeWithPrecision(size, 3)``: decimal SI units, 3 significant digits.

    ``0`` -> ``0B``, ``4414`` -> ``4.41kB``, ``1990000`` -> ``1.99MB``, ``999999`` ->
    ``1e+03kB`` (Go's ``%.3g``, which Python's ``.3g`` reproduces exactly).
    """
    value = float(size)
    unit = 0
    while value >= 1000.0 and unit < len(_SIZE_UNITS) - 1:
        value /= 1000.0
        unit += 1
    return f"{value:.3g}{_SIZE_UNITS[unit]}"


def human_duration(seconds: float) -> str:
    """``units.HumanDuration``: "Less than a second", "About a minute", "3 weeks", ..."""
    ns = round(seconds * 1e9)  # Go works on an integer count of nanoseconds
    secs = int(ns / 1e9)
    if secs < 1:
        return "Less than a second"
    if secs == 1:
        return "1 second"
    if secs < 60:
        return f"{secs} seconds"
    minutes = int(ns / 6e10)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(ns / 3.6e12 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(ns / 3.6e12) // 24 // 365} years"


def human_duration_ago(ts: float, now: float | None = None) -> str:
    """Docker's CREATED column: ``human_duration(now - ts) + " ago"``."""
    if now is None:
        now = time.time()
    return human_duration(now - ts) + " ago"


def truncate_id(ident: str) -> str:
    """``stringid.TruncateID``: drop an ``algo:`` prefix, keep 12 characters."""
    _, sep, rest = ident.partition(":")
    return (rest if sep else ident)[:SHORT_ID_LEN]


def ellipsis(text: str, max_width: int) -> str:
    """Docker's ``formatter.Ellipsis``: cut to ``max_width`` display cells, ending in "…".

    Used for ``history``'s CREATED BY (45) and ``ps``'s COMMAND (20) unless --no-trunc.
    East Asian wide characters take two cells, combining marks none.
    """
    if max_width <= 0:
        return ""
    if max_width == 1:
        return text[:1]
    cells = [_rune_width(ch) for ch in text]
    if sum(cells) <= max_width:
        return text
    used = 0
    for i, width in enumerate(cells):
        if used + width > max_width - 1:
            return text[:i] + "…"
        used += width
    return text


def _rune_width(ch: str) -> int:
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf", "Cc"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def go_time_string(ts: float) -> str:
    """Go's ``time.Unix(ts, 0).String()`` in local time: ``2026-11-23 08:02:34 +0000 UTC``.

    This is the CreatedAt of ``docker images``/``ps``.
    """
    local = time.localtime(ts)
    frac = _go_fraction(ts)
    return time.strftime("%Y-%m-%d %H:%M:%S", local) + frac + time.strftime(" %z %Z", local)


def rfc3339(ts: float) -> str:
    """Go's ``Format(time.RFC3339)`` in local time: ``2026-11-23T08:06:00Z``.

    This is the CreatedAt of ``docker history``.
    """
    local = time.localtime(ts)
    offset = time.strftime("%z", local)
    zone = "Z" if offset in ("+0000", "-0000") else f"{offset[:3]}:{offset[3:]}"
    return time.strftime("%Y-%m-%dT%H:%M:%S", local) + zone


def _go_fraction(ts: float) -> str:
    """Go's ``.999999999``: nanoseconds with trailing zeros dropped, nothing if zero."""
    ns = round((ts - int(ts)) * 1e9) if ts >= 0 else 0
    return f".{ns:09d}".rstrip("0") if ns else ""


# ---------------------------------------------------------------- Go's printing of values


def go_format(value: Any) -> str:
    """``fmt``'s ``%v``: ``[a b]``, ``map[k:v]`` (sorted keys), ``<nil>``, ``1e+06``."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, list | tuple):
        return "[" + " ".join(go_format(v) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: _sort_key(kv[0]))
        return "map[" + " ".join(f"{go_format(k)}:{go_format(v)}" for k, v in items) + "]"
    return str(value)


def _sort_key(key: Any) -> tuple[str, Any]:
    return (type(key).__name__, key)


def go_type(value: Any) -> str:
    """The Go type name a value stands for, as Go's error messages show it."""
    if isinstance(value, list | tuple):
        return "[]string" if all(isinstance(v, str) for v in value) else "[]interface {}"
    if isinstance(value, dict):
        strs = all(isinstance(v, str) for v in value.values())
        return "map[string]string" if strs else "map[string]interface {}"
    names = {bool: "bool", int: "int", float: "float64", str: "string", type(None): "<nil>"}
    return names.get(type(value), type(value).__name__)


def go_float(value: float, *, json: bool = False) -> str:
    """Go's shortest float: ``%v`` (exponent from 1e+06 on) or JSON (from 1e+21)."""
    if math.isnan(value) or math.isinf(value):
        return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 and not json else "0"
    sign, digits_t, exp = Decimal(repr(value)).normalize().as_tuple()
    digits = "".join(map(str, digits_t))
    assert isinstance(exp, int)  # finite
    exp10 = len(digits) + exp - 1
    neg = "-" if sign else ""
    if (exp10 < -6 or exp10 >= 21) if json else (exp10 < -4 or exp10 >= 6):
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
_JSON_HTML = {**_JSON_ESCAPES, ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026"}


def go_json(value: Any, *, escape_html: bool = False, sort_keys: bool = False) -> str:
    """Go's ``encoding/json``, compact, no trailing newline.

    ``escape_html`` writes ``<>&`` as ``\\u003c``... (``json.Marshal``; the template
    function ``json`` turns it off). ``sort_keys`` orders every dict as a Go map;
    otherwise a dict keeps its order, as a Go struct's fields do.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value, json=True)
    if isinstance(value, str):
        text = value.encode("utf-8", "replace").decode()  # lone surrogates become U+FFFD
        return '"' + text.translate(_JSON_HTML if escape_html else _JSON_ESCAPES) + '"'
    if isinstance(value, list | tuple):
        return (
            "["
            + ",".join(go_json(v, escape_html=escape_html, sort_keys=sort_keys) for v in value)
            + "]"
        )
    if isinstance(value, dict):
        items = sorted(value.items()) if sort_keys else list(value.items())
        parts = (
            go_json(str(k), escape_html=escape_html)
            + ":"
            + go_json(v, escape_html=escape_html, sort_keys=sort_keys)
            for k, v in items
        )
        return "{" + ",".join(parts) + "}"
    return go_json(str(value), escape_html=escape_html)


def go_quote(text: str) -> str:
    """``strconv.Quote`` for printable text (control characters escaped)."""
    return go_json(text).replace("\\u0007", "\\a").replace("\\u000b", "\\v")


_VERB_RE = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")


def go_sprintf(fmt: str, args: Sequence[Any]) -> str:
    """``fmt.Sprintf`` for the common verbs: v s d q t f e g x X c and %%, width, flags."""
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
            text = f"%!{verb}({go_type(arg)}={go_format(arg)})"
        elif width and len(text) < int(width):
            fill = int(width) - len(text)
            zero = "0" in flags and "-" not in flags and verb in "dfegxX"
            text = text + " " * fill if "-" in flags else ("0" if zero else " ") * fill + text
        out.append(text)
    out.append(fmt[pos:])
    if used < len(args):
        extra = ", ".join(f"{go_type(a)}={go_format(a)}" for a in args[used:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _verb(verb: str, arg: Any, flags: str, prec: int | None) -> str | None:
    """One verb applied to one argument; None when Go would print ``%!v(type=value)``."""
    is_int = isinstance(arg, int) and not isinstance(arg, bool)
    sign = "+" if "+" in flags else ""
    if verb == "v":
        return go_format(arg)
    if verb == "s" and isinstance(arg, str):
        return arg if prec is None else arg[:prec]
    if verb == "q" and isinstance(arg, str):
        return go_quote(arg)
    if verb == "t" and isinstance(arg, bool):
        return go_format(arg)
    if verb == "d" and is_int:
        return f"{arg:{sign}d}"
    if verb == "c" and is_int:
        return chr(arg)
    if verb in "xX" and (is_int or isinstance(arg, str)):
        text = arg.encode().hex() if isinstance(arg, str) else f"{arg:x}"
        return text.upper() if verb == "X" else text
    if verb in "feg" and isinstance(arg, float):
        if verb == "g" and prec is None:
            return sign * (arg >= 0) + go_float(arg)
        return f"{arg:{sign}.{6 if prec is None else prec}{verb}}"
    return None
