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

from collections.abc import Mapping, Sequence
from typing import Any

from shale.cli.gotemplate import _Header, _Parser, _Struct, _TemplateError
from shale.cli.gotexec import _FUNCS, _HEADER_FUNCS, _Exec
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


