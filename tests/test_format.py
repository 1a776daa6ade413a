"""``--format`` templates and docker's tables, against output recorded from docker.

Every expected string here was printed by the docker CLI (client 28.2 against Engine
20.10.24) on the oracle machine, for images made with ``docker import``; docker is not
needed to run these tests.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shale.cli.format import Template, render
from shale.cli.table import (
    ellipsis,
    go_float,
    go_json,
    go_sprintf,
    human_duration,
    human_duration_ago,
    human_size,
    render_table,
    tabwrite,
    truncate_id,
)
from shale.errors import InvalidArgument

IMAGE_CONTEXT = "*formatter.imageContext"
IMAGE_HEADERS = {
    "ID": "IMAGE ID",
    "Repository": "REPOSITORY",
    "Tag": "TAG",
    "Digest": "DIGEST",
    "CreatedSince": "CREATED",
    "CreatedAt": "CREATED AT",
    "Size": "SIZE",
    "VirtualSize": "SIZE",
    "SharedSize": "SHARED SIZE",
    "UniqueSize": "UNIQUE SIZE",
    "Containers": "CONTAINERS",
}


def _image_row(repository: str, tag: str) -> dict[str, Any]:
    return {
        "Containers": "N/A",
        "CreatedAt": "2026-11-23 08:02:34 +0000 UTC",
        "CreatedSince": "About a minute ago",
        "Digest": "<none>",
        "ID": "667b0b15ab7a",
        "Repository": repository,
        "SharedSize": "N/A",
        "Size": "3B",
        "Tag": tag,
        "UniqueSize": "N/A",
        "VirtualSize": "3B",
    }


ROWS = [_image_row("Example.com/foo", "latest"), _image_row("testimg", "1")]
ONE = [_image_row("testimg", "1")]
ROW_JSON = (
    '{"Containers":"N/A","CreatedAt":"2026-11-23 08:02:34 +0000 UTC",'
    '"CreatedSince":"About a minute ago","Digest":"\\u003cnone\\u003e","ID":"667b0b15ab7a",'
    '"Repository":"testimg","SharedSize":"N/A","Size":"3B","Tag":"1","UniqueSize":"N/A",'
    '"VirtualSize":"3B"}'
)


def fmt(template: str, rows: list[dict[str, Any]] = ROWS) -> str:
    return render(template, rows, IMAGE_HEADERS, type_name=IMAGE_CONTEXT)


# template -> what `docker images --format TEMPLATE` printed for the two rows
IMAGES = {
    "{{.ID}}\\t{{.Tag}}\\n--": "667b0b15ab7a\tlatest\n--\n667b0b15ab7a\t1\n--\n",
    "  {{.ID}}  ": "667b0b15ab7a\n667b0b15ab7a\n",
    '{{.Repository | json}} {{json .Tag}} {{upper .Repository}} {{println}}X{{lower "AB"}}': (
        '"Example.com/foo" "latest" EXAMPLE.COM/FOO \nXab\n"testimg" "1" TESTIMG \nXab\n'
    ),
    "table {{.ID}}\\t{{.Repository}}": (
        "IMAGE ID       REPOSITORY\n667b0b15ab7a   Example.com/foo\n667b0b15ab7a   testimg\n"
    ),
    "tablefoo {{.ID}}": "foo IMAGE ID\nfoo 667b0b15ab7a\nfoo 667b0b15ab7a\n",
    "table {{.ID}}\\t{{.Repository | lower}}\\t{{json .Tag}}\\t{{pad .Tag 1 1}}\\tEND": (
        "IMAGE ID       REPOSITORY        TAG         TAG       END\n"
        '667b0b15ab7a   example.com/foo   "latest"    latest    END\n'
        '667b0b15ab7a   testimg           "1"         1         END\n'
    ),
    "table {{.ID}}\\t{{println .Repository}}\\t{{.Tag}}": (
        "IMAGE ID       REPOSITORY\n               TAG\n"
        "667b0b15ab7a   Example.com/foo\n               latest\n"
        "667b0b15ab7a   testimg\n               1\n"
    ),
    "{{.ID}} {{.ID | }}": "667b0b15ab7a 667b0b15ab7a\n" * 2,
    "{{.ID}} {{index .ID 1}}": "667b0b15ab7a 54\n" * 2,
}


@pytest.mark.parametrize("template", sorted(IMAGES))
def test_images_format_like_docker(template: str) -> None:
    assert fmt(template) == IMAGES[template]


def test_json_of_a_row_sorts_keys_and_escapes_html() -> None:
    assert fmt("{{json .}}", ONE) == ROW_JSON + "\n"
    # in a table, the header's `json` wants a string and stops the header there
    assert fmt("table {{.ID}} {{json .}}|X", ONE) == f"IMAGE ID \n667b0b15ab7a {ROW_JSON}|X\n"


def test_table_headers_of_every_image_field() -> None:
    template = (
        "table {{.Containers}}\\t{{.VirtualSize}}\\t{{.SharedSize}}\\t{{.UniqueSize}}"
        "\\t{{.CreatedAt}}\\t{{.Digest}}\\t{{.CreatedSince}}\\t{{.Size}}"
    )
    row = _image_row("testimg", "1") | {"CreatedSince": "11 minutes ago"}
    assert fmt(template, [row]) == (
        "CONTAINERS   SIZE      SHARED SIZE   UNIQUE SIZE   CREATED AT                      "
        "DIGEST    CREATED          SIZE\n"
        "N/A          3B        N/A           N/A           2026-11-23 08:02:34 +0000 UTC   "
        "<none>    11 minutes ago   3B\n"
    )


def test_table_with_no_rows_prints_the_header() -> None:
    assert fmt("table {{.Repository}}\\t{{.Tag}}", []) == "REPOSITORY   TAG\n"


def test_header_falls_back_to_upper_case_field_name() -> None:
    assert render("table {{.Name}}\\t{{.Id}}", [{"Name": "x", "Id": "1"}], None) == (
        "NAME      ID\nx         1\n"
    )


# template -> what docker printed for the one row (testimg:1)
ONE_ROW = {
    '{{if eq .Tag "1"}}one{{else if eq .Tag "2"}}two{{else}}other{{end}}': "one",
    "{{with .Repository}}[{{.}}]{{end}}": "[testimg]",
    '{{range split .Repository "i"}}<{{.}}>{{end}}': "<test><mg>",
    '{{range $i, $e := split .ID "b"}}{{$i}}={{$e}};{{end}}': "0=667;1=0;2=15a;3=7a;",
    '{{$r := .Repository}}{{range split "a,b" ","}}{{$r}}{{.}}{{end}}': "testimgatestimgb",
    "{{len .ID}} {{slice .ID 1 3}}": "12 67",
    "{{slice .ID 1}} {{slice .ID}}": "67b0b15ab7a 667b0b15ab7a",
    '{{.ID | printf "%.4s"}}': "667b",
    '{{printf "%-12s|" .Tag}}': "1           |",
    '{{and .Tag .ID}} {{or "" .Tag}} {{not ""}}': "667b0b15ab7a 1 true",
    '{{"x" | printf "%s-%s" "a"}}': "a-x",
    "{{ .ID | json | upper }}": '"667B0B15AB7A"',
    "{{print nil}}": "<nil>",
    "x{{- /* c */ -}}  y": "xy",
    "{{\"\\u00e9\\x41\\101\"}}|{{`raw`}}|{{'a'}}": "éAA|raw|97",
    '{{.ID}} {{truncate .ID 3}} {{pad "" 2 2}}|': "667b0b15ab7a 667 |",
    "{{1.5}} {{1e3}} {{0x1F}} {{-3}} {{1_000}}": "1.5 1000 31 -3 1000",
    '{{printf "%5d|%-5d|%05d|%x|%X|%c|%q|%v|%s|%6.2f|%t" 42 42 42 "hi" 255 65 "é\t"'
    ' (split "a b" " ") .Tag 3.14159 false}}': (
        '   42|42   |00042|6869|FF|A|"é\\t"|[a b]|1|  3.14|false'
    ),
    '{{printf "%s" 3}} {{printf "%d" 1.5}} {{printf "%v %v" .Tag}} {{printf "100%%"}}'
    ' {{printf "%+d" 5}}': "%!s(int=3) %!d(float64=1.5) 1 %!v(MISSING) 100% +5",
    '{{printf "%.2f %e %g %v" 3.14159 3.0 0.000001234 nil}}': "3.14 3.000000e+00 1.234e-06 <nil>",
    '{{title "hello-wörld foo_bar"}}': "Hello-Wörld Foo_bar",
    '{{join (split "a,b" ",") "+"}}': "a+b",
    "{{print 1234567.5}} {{print 123456.5}} {{print 0.00001}} {{print 1.5e300}}": (
        "1.2345675e+06 123456.5 1e-05 1.5e+300"
    ),
    '{{printf "%d" 1 2}} {{json 1234567.5}} {{json 1e21}} {{json 0.0000001}}': (
        "1%!(EXTRA int=2) 1234567.5 1e+21 1e-7"
    ),
    '{{print 1 2}} {{print "a" 1 2 "b"}} {{println "a" 1}}|{{len "héllo"}} {{index "abc" 0}}': (
        "1 2 a1 2b a 1\n|6 97"
    ),
}


@pytest.mark.parametrize("template", sorted(ONE_ROW))
def test_template_language_like_docker(template: str) -> None:
    assert fmt(template, ONE) == ONE_ROW[template] + "\n"


# template -> docker's whole error message
ERRORS = {
    "{{.Foo}}": 'template: :1:2: executing "" at <.Foo>: can\'t evaluate field Foo in type '
    "*formatter.imageContext",
    "table {{.ID}}\\t{{.Foo}}": 'template: :1:10: executing "" at <.Foo>: can\'t evaluate '
    "field Foo in type *formatter.imageContext",
    "{{json .Nope}}": 'template: :1:7: executing "" at <.Nope>: can\'t evaluate field Nope in '
    "type *formatter.imageContext",
    "{{.ID": "template: :1: unclosed action",
    "{{.ID}} {{nofunc .ID}}": 'template: :1: function "nofunc" not defined',
    "{{.ID}} {{end}}": "template: :1: unexpected {{end}}",
    "{{else}}": "template: :1: unexpected {{else}}",
    "{{if .ID}}x": "template: :1: unexpected EOF",
    '{{.ID}} {{"abc}}': "template: :1: unterminated quoted string",
    # `\n` becomes a newline before parsing, which ends the quoted string
    '{{printf "a\\n"}}': "template: :1: unterminated quoted string",
    '{{.ID}} {{join .ID ","}}': 'template: :1:15: executing "" at <.ID>: wrong type for value; '
    "expected []string; got string",
    "{{.ID}} {{upper}}": 'template: :1:10: executing "" at <upper>: wrong number of args for '
    "upper: want 1 got 0",
    "{{.ID}} {{json}}": 'template: :1:10: executing "" at <json>: wrong number of args for json: '
    "want 1 got 0",
    "{{.ID.X}}": 'template: :1:5: executing "" at <.ID.X>: can\'t evaluate field X in type string',
    '{{lt .Tag "2"}} {{ne .Tag "1"}} {{eq .Tag 1}}': 'template: :1:34: executing "" at '
    "<eq .Tag 1>: error calling eq: incompatible types for comparison",
    "{{range .ID}}x{{end}}": 'template: :1:8: executing "" at <.ID>: range can\'t iterate over '
    "667b0b15ab7a",
    "{{if}}x{{end}}": "template: :1: missing value for if",
    '{{.Tag "x"}}': 'template: :1:2: executing "" at <.Tag>: wrong number of args for Tag: '
    "want 0 got 1",
    "{{.Tag | .ID}}": 'template: :1:9: executing "" at <.ID>: wrong number of args for ID: '
    "want 0 got 1",
    "{{$x}}": 'template: :1: undefined variable "$x"',
    "{{with $x := .Tag}}{{$x}}{{end}}{{$x}}": 'template: :1: undefined variable "$x"',
    "{{nil}}": 'template: :1:2: executing "" at <nil>: nil is not a command',
    '{{"a"|"b"}}': "template: :1: non executable command in pipeline stage 2",
    '{{index (split "a,b" ",") 5}}': 'template: :1:2: executing "" at <index (split "a,b" ",") '
    "5>: error calling index: index out of range: 5",
    "{{len 3}}": 'template: :1:2: executing "" at <len 3>: error calling len: len of type int',
    '{{lt 1 "a"}}': 'template: :1:2: executing "" at <lt 1 "a">: error calling lt: '
    "incompatible types for comparison",
    "{{lt true false}}": 'template: :1:2: executing "" at <lt true false>: error calling lt: '
    "invalid type for comparison",
    '{{eq 1 1 2}} {{eq "a" "b" "a"}} {{eq 1}}': 'template: :1:34: executing "" at <eq 1>: '
    "error calling eq: missing argument for comparison",
    "{{upper 1}}": 'template: :1:8: executing "" at <1>: expected string; found 1',
    '{{pad .Tag "1" 2}}': 'template: :1:11: executing "" at <"1">: expected integer; found "1"',
}


@pytest.mark.parametrize("template", sorted(ERRORS))
def test_errors_like_docker(template: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        fmt(template, ONE)
    assert str(info.value) == "template parsing error: " + ERRORS[template]


INSPECT = {
    "Id": "sha256:667b",
    "RepoTags": ["Example.com/foo:latest", "testimg:1"],
    "RepoDigests": [],
    "Parent": "",
    "Size": 3,
    "Config": {"Env": None, "Entrypoint": None, "Labels": None, "WorkingDir": ""},
    "GraphDriver": {"Data": {"MergedDir": "/m", "UpperDir": "/u"}, "Name": "overlay2"},
    "RootFS": {"Type": "layers", "Layers": ["sha256:754c"]},
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{.RepoTags}}|{{.RepoDigests}}", "[Example.com/foo:latest testimg:1]|[]"),
        ("{{range .RepoTags}}[{{.}}]{{end}}", "[Example.com/foo:latest][testimg:1]"),
        ("{{if .Parent}}p{{else}}np{{end}}", "np"),
        ("{{len .RepoTags}} {{index .RepoTags 0}}", "2 Example.com/foo:latest"),
        ('{{print 1 2 "a" "b" 3}}|{{println 1 "a"}}|', "1 2ab3|1 a\n|"),
        ('{{eq .Size 3}} {{not .Size}} {{and 1 0}} {{or 0 "" "x"}}', "true false 0 x"),
        (
            '{{title "hello world"}} {{split "a,b" ","}} {{pad "x" 2 3}}|',
            "Hello World [a b]   x   |",
        ),
        ("{{ .Size -}}  x  {{- .Size }}", "3x3"),
        ("{{/* c */}}ok", "ok"),
        ("{{$x := .Id}}{{$x}} {{$.Id}}", "sha256:667b sha256:667b"),
        ("{{with .Config}}{{.WorkingDir}}|{{end}}", "|"),
        ("{{.GraphDriver.Data}}", "map[MergedDir:/m UpperDir:/u]"),
        ("{{.GraphDriver.Data.Nope}}|", "<no value>|"),
        ('{{index .Config.Labels "foo"}}|', "|"),
        ("{{json .RootFS}}", '{"Type":"layers","Layers":["sha256:754c"]}'),
        ("{{.Id}}\\t{{.Size}}", "sha256:667b\\t3"),  # inspect does not replace \t
        ("{{range $k, $v := .GraphDriver.Data}}{{$k}}={{$v}} {{end}}", "MergedDir=/m UpperDir=/u "),
        ("{{range .RepoDigests}}x{{else}}none{{end}}", "none"),
        ("{{$n := 1}}{{range .RepoTags}}{{$n = 2}}{{end}}{{$n}}", "2"),
        ("{{json .Config.Env}}", "null"),
    ],
)
def test_inspect_style_execution(template: str, expected: str) -> None:
    assert Template(template).execute(INSPECT, type_name="types.ImageInspect") == expected


def test_nil_map_field_is_a_nil_pointer_error() -> None:
    with pytest.raises(InvalidArgument) as info:
        Template("{{.Id}}\\t{{.Config.Labels.foo}}").execute(INSPECT)
    assert str(info.value) == (
        'template parsing error: template: :1:18: executing "" at <.Config.Labels.foo>: '
        "nil pointer evaluating interface {}.foo"
    )


def test_unsupported_actions_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="define"):
        Template('{{define "x"}}{{end}}')


# ---------------------------------------------------------------- tables and values


def test_render_table_like_docker_images() -> None:
    out = render_table(
        ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
        [
            [
                "localhost:5000/shalefmt/longer-name",
                "v1.2",
                "a266122f118a",
                "Less than a second ago",
                "1.99MB",
            ],
            ["<none>", "<none>", "270318a27235", "32 seconds ago", "0B"],
        ],
    )
    assert out == (
        "REPOSITORY                            TAG       IMAGE ID       CREATED"
        "                  SIZE\n"
        "localhost:5000/shalefmt/longer-name   v1.2      a266122f118a   Less than a second ago"
        "   1.99MB\n"
        "<none>                                <none>    270318a27235   32 seconds ago"
        "           0B\n"
    )


def test_render_table_like_docker_history() -> None:
    out = render_table(
        ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
        [["a266122f118a", "1 second ago", "", "1.99MB", "hello <msg>"]],
    )
    assert out == (
        "IMAGE          CREATED        CREATED BY   SIZE      COMMENT\n"
        "a266122f118a   1 second ago                1.99MB    hello <msg>\n"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ""),
        ("a\tb\n", "a         b\n"),
        ("a\tb", "a         b"),  # an unterminated last line stays unterminated
        ("abcdefghijkl\tb\nc\td\n", "abcdefghijkl   b\nc              d\n"),
        # a line with fewer cells ends the column block: later lines align afresh
        ("aaaaaaaaaaaaaa\tb\nno tab\nc\td\n", "aaaaaaaaaaaaaa   b\nno tab\nc         d\n"),
        ("a\tb\tc\nd\n", "a         b         c\nd\n"),
        ("abcdefghijkl\tb\fc\td\n", "abcdefghijkl   b\nc         d\n"),  # \f ends a section
        ("a\vb\n", "a         b\n"),
        ("é\tb\n", "é         b\n"),  # widths count characters
    ],
)
def test_tabwrite(text: str, expected: str) -> None:
    assert tabwrite(text) == expected


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, "0B"),
        (3, "3B"),
        (999, "999B"),
        (1000, "1kB"),
        (4414, "4.41kB"),
        (1990000, "1.99MB"),
        (999999, "1e+03kB"),
        (123456789, "123MB"),
        (2**40, "1.1TB"),
        (10**24, "1YB"),
        (10**27, "1e+03YB"),
    ],
)
def test_human_size(size: int, expected: str) -> None:
    assert human_size(size) == expected


MIN, HOUR, DAY = 60, 3600, 86400
WEEK, MONTH, YEAR = 7 * DAY, 30 * DAY, 365 * DAY


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (-5, "Less than a second"),
        (0.45, "Less than a second"),
        (1, "1 second"),
        (47, "47 seconds"),
        (59, "59 seconds"),
        (60, "About a minute"),
        (3 * MIN, "3 minutes"),
        (35 * MIN + 40, "35 minutes"),
        (59 * MIN, "59 minutes"),
        (HOUR, "About an hour"),
        (HOUR + 29 * MIN, "About an hour"),
        (HOUR + 31 * MIN, "2 hours"),
        (3 * HOUR + 29 * MIN, "3 hours"),
        (3 * HOUR + 31 * MIN, "4 hours"),
        (DAY, "24 hours"),
        (DAY + 12 * HOUR, "36 hours"),
        (2 * DAY, "2 days"),
        (13 * DAY + 5 * HOUR, "13 days"),
        (2 * WEEK, "2 weeks"),
        (2 * WEEK + 4 * DAY, "2 weeks"),
        (MONTH, "4 weeks"),
        (MONTH + 2 * WEEK, "6 weeks"),
        (2 * MONTH, "2 months"),
        (3 * MONTH + WEEK, "3 months"),
        (24 * MONTH, "24 months"),
        (24 * MONTH + 2 * WEEK, "2 years"),
        (3 * YEAR + 2 * MONTH, "3 years"),
    ],
)
def test_human_duration(seconds: float, expected: str) -> None:
    assert human_duration(seconds) == expected


def test_human_duration_ago() -> None:
    assert human_duration_ago(1000.0, 1000.3) == "Less than a second ago"
    assert human_duration_ago(1000, 1090) == "About a minute ago"
    assert human_duration_ago(0, 2 * HOUR) == "2 hours ago"
    assert human_duration_ago(0, 3 * WEEK) == "3 weeks ago"


def test_truncate_id() -> None:
    assert truncate_id("sha256:667b0b15ab7a947f2cc5490f65a9780920170ee9") == "667b0b15ab7a"
    assert truncate_id("667b0b15ab7a947f") == "667b0b15ab7a"
    assert truncate_id("abc") == "abc"


def test_ellipsis() -> None:
    cmd = '/bin/sh -c #(nop)  CMD ["/bin/sh" "-c" "echo hi"]'
    assert ellipsis(cmd, 45) == '/bin/sh -c #(nop)  CMD ["/bin/sh" "-c" "echo…'
    assert len(ellipsis(cmd, 45)) == 45
    assert ellipsis("short", 45) == "short"
    assert ellipsis("日本語の文字列", 6) == "日本…"
    assert ellipsis("abc", 1) == "a"


def test_go_value_printing() -> None:
    assert go_json({"b": "<&>", "a": [1, 2.5, None, True, "\x01\u2028"]}) == (
        '{"b":"<&>","a":[1,2.5,null,true,"\\u0001\\u2028"]}'
    )
    assert go_json({"b": 1, "a": {"d": 1, "c": 2}}, escape_html=True, sort_keys=True) == (
        '{"a":{"c":2,"d":1},"b":1}'
    )
    assert [go_float(x) for x in (1e6, 123456.0, 1e-5, 0.0001, -2.5, 1e21)] == [
        "1e+06",
        "123456",
        "1e-05",
        "0.0001",
        "-2.5",
        "1e+21",
    ]
    assert [go_float(x, json=True) for x in (1e6, 1e20, 1e21, 1e-7, 1.5e-6)] == [
        "1000000",
        "100000000000000000000",
        "1e+21",
        "1e-7",
        "0.0000015",
    ]
    assert go_sprintf("%s=%v;%d", ["a", [1, "b"], 7]) == "a=[1 b];7"


_FRAGMENTS = [
    "{{",
    "}}",
    "{{-",
    " -}}",
    ".ID",
    ".Tag",
    ".Nope",
    ".",
    "$",
    "$x",
    ":=",
    "=",
    ",",
    "|",
    "(",
    ")",
    '"s"',
    "`r`",
    "'c'",
    "1",
    "-2.5",
    "json",
    "join",
    "index",
    "printf",
    "if",
    "else",
    "end",
    "range",
    "with",
    "nil",
    "true",
    " ",
    "\n",
    "/*",
    "*/",
    "table ",
    "\\t",
    "x",
]


@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=25))
def test_any_template_renders_or_raises_invalid_argument(parts: list[str]) -> None:
    try:
        render("".join(parts), ROWS, IMAGE_HEADERS, type_name=IMAGE_CONTEXT)
    except InvalidArgument as err:
        assert str(err).startswith("template parsing error: template: :")


def test_variable_of_a_branch_not_taken_is_undefined_at_run_time() -> None:
    with pytest.raises(InvalidArgument, match=r"undefined variable: \$y$"):
        Template("{{if false}}{{$y := 1}}{{else}}{{$y}}{{end}}").execute({})
