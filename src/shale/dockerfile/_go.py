"""Small re-implementations of Go standard-library behaviour the Dockerfile tools depend on.

BuildKit and moby are written in Go, and several observable results (the parser's AST dump,
which characters count as blanks, how a path is cleaned, what a duration string means) come
straight from Go's ``strconv``, ``unicode``, ``path/filepath`` and ``time`` packages. Python's
own equivalents differ in small ways (``str.isspace`` accepts U+001C..U+001F, ``normpath``
keeps a leading ``//``, ``repr`` quotes differently), so the few functions we need live here.
"""

from __future__ import annotations

import re
import unicodedata

# unicode.IsSpace: Latin-1 blanks plus the White_Space property above U+00FF.
_SPACES = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

_SIMPLE_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    '"': '\\"',
    "\\": "\\\\",
}


def is_space(ch: str) -> bool:
    """Go's ``unicode.IsSpace`` for one character."""
    return ch in _SPACES


def trim_space(s: str) -> str:
    """Go's ``strings.TrimSpace``."""
    return trim_right_space(trim_left_space(s))


def trim_left_space(s: str) -> str:
    """Go's ``strings.TrimLeftFunc(s, unicode.IsSpace)``."""
    i = 0
    while i < len(s) and s[i] in _SPACES:
        i += 1
    return s[i:]


def trim_right_space(s: str) -> str:
    """Go's ``strings.TrimRightFunc(s, unicode.IsSpace)``."""
    i = len(s)
    while i > 0 and s[i - 1] in _SPACES:
        i -= 1
    return s[:i]


def _is_print(ch: str) -> bool:
    # Go's unicode.IsPrint: letters, marks, numbers, punctuation, symbols and ASCII space.
    return ch == " " or unicodedata.category(ch)[0] in "LMNPS"


def quote(s: str) -> str:
    """Go's ``strconv.Quote``: the form BuildKit's AST dump and error messages use."""
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[ch])
        elif 0xD800 <= code < 0xE000:
            # A lone surrogate is invalid UTF-8 to Go: each byte is shown as \xNN.
            raw = ch.encode("utf-8", "surrogatepass")
            out.extend(f"\\x{b:02x}" for b in raw)
        elif _is_print(ch):
            out.append(ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def quote_list(items: list[str]) -> str:
    """Go's ``fmt.Sprintf("%q", []string{...})``: ``["a" "b"]``."""
    return "[" + " ".join(quote(i) for i in items) + "]"


def clean_path(path: str) -> str:
    """Go's ``path.Clean`` (``filepath.Clean`` on Unix)."""
    if path == "":
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(seg)
    joined = "/".join(parts)
    if rooted:
        return "/" + joined
    return joined or "."


_INT_RE = re.compile(r"[+-]?[0-9]+\Z")


def atoi(s: str, bits: int = 64) -> int:
    """Go's ``strconv.ParseInt(s, 10, bits)``; raises ValueError with Go's message."""
    if not _INT_RE.match(s):
        raise ValueError(f"strconv.ParseInt: parsing {quote(s)}: invalid syntax")
    value = int(s)
    limit = 1 << (bits - 1)
    if not -limit <= value < limit:
        raise ValueError(f"strconv.ParseInt: parsing {quote(s)}: value out of range")
    return value


_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "\u03bcs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?")
_MAX_DURATION = 1 << 63


def parse_duration(text: str) -> int:
    """Go's ``time.ParseDuration``, in nanoseconds; raises ValueError with Go's message."""
    s = text
    neg = False
    if s[:1] in ("+", "-"):
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if s == "":
        raise ValueError(f"time: invalid duration {quote(text)}")
    total = 0
    while s:
        value, used = _duration_part(text, s)
        total += value
        s = s[used:]
        if total > _MAX_DURATION:
            raise ValueError(f"time: invalid duration {quote(text)}")
    if total == _MAX_DURATION and not neg:
        raise ValueError(f"time: invalid duration {quote(text)}")
    return -total if neg else total


def _duration_part(text: str, s: str) -> tuple[int, int]:
    """Value and length of the leading ``<number><unit>`` of ``s`` (Go's loop body)."""
    m = _DURATION_PART.match(s)
    assert m is not None  # the pattern can match the empty string
    whole, frac = m.group(1), m.group(2)
    if whole == "" and not frac:
        raise ValueError(f"time: invalid duration {quote(text)}")
    end = m.end()
    while end < len(s) and s[end] != "." and not "0" <= s[end] <= "9":
        end += 1
    unit = s[m.end() : end]
    if unit == "":
        raise ValueError(f"time: missing unit in duration {quote(text)}")
    if unit not in _DURATION_UNITS:
        raise ValueError(f"time: unknown unit {quote(unit)} in duration {quote(text)}")
    scale_unit = _DURATION_UNITS[unit]
    value = int(whole or "0")
    if value > _MAX_DURATION // scale_unit:
        raise ValueError(f"time: invalid duration {quote(text)}")
    value *= scale_unit
    if frac:
        # Go stops reading fraction digits before they overflow and multiplies in float64,
        # truncating; doing the same keeps results bit-identical.
        frac = frac[:18]
        value += int(float(int(frac)) * (float(scale_unit) / float(10 ** len(frac))))
    return value, end
