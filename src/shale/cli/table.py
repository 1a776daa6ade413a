"""Docker's table layout and the human-readable values its tables show.

``tabwrite`` is Go's ``text/tabwriter`` as the docker CLI configures it
(``tabwriter.NewWriter(out, 10, 1, 3, ' ', 0)``: minimum cell width 10, padding 3, spaces);
``human_size`` and ``human_duration`` are ``github.com/docker/go-units``.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Sequence

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
