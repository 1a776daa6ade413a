"""The Dockerfile parser: BuildKit's parser test data, heredocs, directives, flags, checks.

The conformance part reads BuildKit's ``testfiles`` from the folder named by
``SHALE_BUILDKIT_CORPUS`` (e.g. /work/shared/corpora/buildkit) and is skipped without it.
Error messages in the tables were checked against Docker 20.10's classic builder where it
agrees with BuildKit (flag errors are BuildKit's lower-case spelling).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shale.dockerfile import (
    DockerfileParseError,
    Heredoc,
    parse,
    parse_ast,
    parse_changes,
    parse_instruction,
)
from shale.dockerfile.syntax import _heredocs_from_line, parse_heredoc
from shale.errors import DockerfileError

_DEFAULT_CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpora",
                               "buildkit")
# the shared corpus sits beside the clone here and in CI; the variable overrides it
_CORPUS = os.environ.get("SHALE_BUILDKIT_CORPUS") or (
    _DEFAULT_CORPUS if os.path.isdir(_DEFAULT_CORPUS) else "")
_SKIP = "SHALE_BUILDKIT_CORPUS is not set (point it at BuildKit's parser/lexer test data)"
_PARSER_DIR = Path(_CORPUS, "frontend", "dockerfile", "parser")


def _corpus_cases(sub: str) -> list[Any]:
    if not _CORPUS:
        return [pytest.param("", marks=pytest.mark.skip(reason=_SKIP))]
    return sorted(p.name for p in (_PARSER_DIR / sub).iterdir() if p.is_dir())


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


# -- BuildKit's conformance data ---------------------------------------------------------------


@pytest.mark.parametrize("case", _corpus_cases("testfiles"))
def test_buildkit_positive_case(case: str) -> None:
    folder = _PARSER_DIR / "testfiles" / case
    result = parse_ast(_read(folder / "Dockerfile"))
    assert result.dump() + "\n" == _read(folder / "result")


@pytest.mark.parametrize("case", _corpus_cases("testfiles-negative"))
def test_buildkit_negative_case(case: str) -> None:
    with pytest.raises(DockerfileParseError, match=r"^Dockerfile:\d+: "):
        parse_ast(_read(_PARSER_DIR / "testfiles-negative" / case / "Dockerfile"))


@pytest.mark.skipif(not _CORPUS, reason=_SKIP)
def test_buildkit_corpus_is_complete() -> None:
    assert len(_corpus_cases("testfiles")) == 33
    assert len(_corpus_cases("testfiles-negative")) == 4


@pytest.mark.skipif(not _CORPUS, reason=_SKIP)
def test_buildkit_line_numbers() -> None:
    result = parse_ast(_read(_PARSER_DIR / "testfile-line" / "Dockerfile"))
    assert [(n.start_line, n.end_line) for n in result.nodes] == [(5, 5), (11, 12), (17, 31)]
    assert len(result.warnings) == 1 and "Empty continuation line" in result.warnings[0]


# -- the line layer ----------------------------------------------------------------------------


def _dump(text: str) -> list[str]:
    return parse_ast(text).dump().split("\n")


def test_flags_and_double_dash() -> None:
    assert _dump('COPY --user=me --doit=true -- foo /tmp/\nCMD --doit -- [ "a", "b" ]') == [
        '(copy ["--user=me" "--doit=true"] "foo" "/tmp/")',
        '(cmd ["--doit"] "a" "b")',
    ]


def test_flag_values_may_be_quoted() -> None:
    node = parse_ast("COPY --chown=\"a b\" --from='x' src dst").nodes[0]
    assert node.flags == ["--chown=a b", "--from=x"]
    assert node.args == ["src", "dst"]


def test_json_versus_shell_form() -> None:
    nodes = parse_ast('RUN ["a", "b"]\nRUN [\'a\']\nRUN ["a", 1\nCMD ["x"] tail').nodes
    assert (nodes[0].json, nodes[0].args) == (True, ["a", "b"])
    assert (nodes[1].json, nodes[1].args) == (False, ["['a']"])
    assert (nodes[2].json, nodes[2].args) == (False, ['["a", 1'])
    assert (nodes[3].json, nodes[3].args) == (True, ["x"])  # Go's decoder stops after one value


def test_nested_json_is_an_error() -> None:
    with pytest.raises(DockerfileParseError, match="comprised of strings only"):
        parse_ast('CMD ["a", ["b"]]')


def test_escape_directive_changes_continuation() -> None:
    text = "# escape=`\nFROM a\nRUN echo \\ `\n  next\n"
    result = parse_ast(text)
    assert result.escape == "`"
    assert result.directives == {"escape": "`"}
    assert result.nodes[1].args == ["echo \\   next"]


def test_directives_only_at_the_top() -> None:
    result = parse_ast("# syntax=docker/dockerfile:1\n# check=skip=all\n\n# escape=`\nFROM a")
    assert result.directives == {"syntax": "docker/dockerfile:1", "check": "skip=all"}
    assert result.escape == "\\"


def test_repeated_directive_is_an_error() -> None:
    with pytest.raises(DockerfileParseError, match="only one syntax parser directive"):
        parse_ast("# syntax=a\n# syntax=b\nFROM x")


def test_bad_escape_token() -> None:
    with pytest.raises(DockerfileParseError, match="invalid escape token 'x' does not match"):
        parse_ast("# escape=x\nFROM a")


def test_bom_crlf_and_comments_in_continuations() -> None:
    text = "\ufeffFROM a\r\nRUN one \\\r\n# dropped comment\r\n\r\n  two\r\n"
    result = parse_ast(text)
    assert result.dump() == '(from "a")\n(run "one   two")'
    assert result.nodes[1].start_line == 2 and result.nodes[1].end_line == 5
    assert result.warnings  # the blank line inside the continuation


def test_original_keeps_joined_text() -> None:
    node = parse_ast("   RUN a \\\n   b # not a comment").nodes[0]
    assert node.original == "RUN a    b # not a comment"


def test_onbuild_wraps_and_dumps_nested() -> None:
    assert _dump("ONBUILD RUN echo hi\nONBUILD") == ['(onbuild (run "echo hi"))', "(onbuild)"]


def test_unknown_instruction_is_kept_by_the_line_layer() -> None:
    assert _dump("FOO bar baz") == ['(foo "")']


def test_too_long_line() -> None:
    with pytest.raises(DockerfileParseError, match="max allowed size of 65535"):
        parse_ast("FROM a\nRUN " + "x" * 70000)
    assert parse_ast("RUN " + "x" * 65530).nodes  # just under the limit


# -- heredocs (cases of BuildKit's parser_heredoc_test.go) -------------------------------------

_HEREDOC_FILE = """
FROM alpine:3.6
RUN ls
USER <<INVALID
INVALID
RUN <<EMPTY
EMPTY
RUN 3<<EMPTY2
EMPTY2
RUN "<<NOHEREDOC"
RUN <<INDENT
\tfoo
\tbar
INDENT
RUN <<-UNINDENT2
\tbaz
\tquux
\tUNINDENT2
RUN <<-'NOEXPAND'
\tdon't expand $NAME
NOEXPAND
RUN --mount=type=cache,target=/foo <<MOUNT
echo hello
MOUNT
COPY <<X <<Y /dest
Y
X
X
Y
ONBUILD RUN <<OB
inner
OB
RUN ["<<EOF"]
"""


def test_heredocs_extracted() -> None:
    nodes = parse_ast(_HEREDOC_FILE).nodes
    docs = [n.heredocs for n in nodes[1:]]
    assert docs == [
        [],  # RUN ls
        [],  # USER <<INVALID: USER cannot hold heredocs
        [],  # INVALID
        [Heredoc("EMPTY")],
        [Heredoc("EMPTY2", fd=3)],
        [],  # "<<NOHEREDOC" is quoted
        [Heredoc("INDENT", "\tfoo\n\tbar\n")],
        [Heredoc("UNINDENT2", "\tbaz\n\tquux\n", chomp=True)],
        [Heredoc("NOEXPAND", "\tdon't expand $NAME\n", expand=False, chomp=True)],
        [Heredoc("MOUNT", "echo hello\n")],
        [Heredoc("X", "Y\n"), Heredoc("Y", "X\n")],
        [Heredoc("OB", "inner\n")],
        [],  # JSON form never has heredocs
    ]
    assert docs[7][0].body == "baz\nquux\n"


@pytest.mark.parametrize("word", ["<<EOF", "<<'EOF'", '<<"EOF"', "<<-EOF", "<<-'EOF'", '<<-"EOF"'])
def test_heredoc_names(word: str) -> None:
    doc = parse_heredoc(word)
    assert doc is not None and doc.name == "EOF"
    assert doc.expand == ("'" not in word and '"' not in word)


@pytest.mark.parametrize("word", ["", "EOF", "<<", "<<-", "<EOF", "<<<EOF"])
def test_not_heredocs(word: str) -> None:
    assert parse_heredoc(word) is None


@pytest.mark.parametrize("word", ["<<'EOF", '<<"EOF', "<<EOF'", '<<EOF"'])
def test_malformed_heredocs(word: str) -> None:
    with pytest.raises(Exception, match="unexpected end of statement"):
        parse_heredoc(word)


@pytest.mark.parametrize(
    ("line", "names"),
    [
        ("RUN <<EOF", ["EOF"]),
        ("RUN <<-EOF", ["EOF"]),
        ("RUN 4<<EOF", ["EOF"]),
        ("RUN <<EOF <<EOF2", ["EOF", "EOF2"]),
        ("RUN '<<EOF'", []),
        ('RUN "<<EOF"', []),
        ("RUN python3 <<EOF > out", ["EOF"]),
    ],
)
def test_heredocs_from_line(line: str, names: list[str]) -> None:
    assert [d.name for d in _heredocs_from_line(line)] == names


def test_unterminated_heredoc() -> None:
    with pytest.raises(DockerfileParseError, match=r"^Dockerfile:2: unterminated heredoc"):
        parse_ast("FROM a\nRUN <<EOF\necho\n")


# -- instructions and stages -------------------------------------------------------------------

_FILE = """\
# syntax=docker/dockerfile:1
ARG BASE=alpine
ARG V
FROM --platform=$BUILDPLATFORM ${BASE} AS Build
ENV A=1 B="x y"
ENV legacy value here
COPY --from=other --chown=1:1 --link --exclude=a --exclude=b src /dst/
RUN --mount=type=cache,target=/x --network=none <<EOF
echo hi
EOF
ONBUILD COPY --from=x . /
HEALTHCHECK NONE
FROM build
EXPOSE 80/udp
"""


def test_stages_and_meta_args() -> None:
    df = parse(_FILE)
    assert df.syntax == "docker/dockerfile:1"
    assert [i.original for i in df.meta_args] == ["ARG BASE=alpine", "ARG V"]
    first, second = df.stages
    assert (first.index, first.name, first.base, first.platform) == (
        0,
        "build",
        "${BASE}",
        "$BUILDPLATFORM",
    )
    assert [i.cmd for i in first.instructions] == [
        "env",
        "env",
        "copy",
        "run",
        "onbuild",
        "healthcheck",
    ]
    assert (second.name, second.base, second.instructions[0].args) == ("", "build", ["80/udp"])
    assert df.stage("BUILD") is first and df.stage(1) is second
    assert len(df.instructions) == 11


def test_instruction_fields() -> None:
    df = parse(_FILE)
    env, legacy, copy, run, onbuild, health = df.stages[0].instructions
    assert env.pairs() == [("A", "1"), ("B", '"x y"')]
    assert legacy.args == ["legacy", "value here", ""]
    assert copy.flags == {
        "from": ["other"],
        "chown": ["1:1"],
        "link": ["true"],
        "exclude": ["a", "b"],
    }
    assert copy.raw_flags[0] == "--from=other" and copy.flag("chmod", "x") == "x"
    assert (run.line, run.end_line, run.args) == (8, 10, ["<<EOF"])
    assert run.flags == {"mount": ["type=cache,target=/x"], "network": ["none"]}
    assert run.heredocs == [Heredoc("EOF", "echo hi\n")]
    assert onbuild.args == ["COPY --from=x . /"]
    assert onbuild.sub is not None and onbuild.sub.flags == {"from": ["x"]}
    assert health.args == ["NONE"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM a\nFOOO x", "Dockerfile:2: unknown instruction: FOOO"),
        ("ENV a=b\nFROM a", "Dockerfile:1: no build stage in current context"),
        ("ARG a", "Dockerfile:1: dockerfile contains no stages to build"),
        ("FROM", "Dockerfile:1: FROM requires either one or three arguments"),
        ("FROM a b", "Dockerfile:1: FROM requires either one or three arguments"),
        ("FROM a as 1x", 'invalid name for build stage: "1x", name can\'t start with a number'),
        ("FROM a\nCOPY a", "COPY requires at least two arguments, but only one was provided."),
        ("FROM a\nADD a", "ADD requires at least two arguments"),
        ("FROM a\nCOPY a <<EOF\nx\nEOF", "COPY cannot accept a heredoc as a destination"),
        ("FROM a\nARG", "ARG requires at least one argument"),
        ("FROM a\nARG =1", "ARG names can not be blank"),
        ("FROM a\nSTOPSIGNAL", "STOPSIGNAL requires exactly one argument"),
        ("FROM a\nSHELL echo", "SHELL requires the arguments to be in JSON form"),
        ("FROM a\nSHELL []", "SHELL requires at least one argument"),
        ("FROM a\nMAINTAINER", "MAINTAINER requires exactly one argument"),
        ("FROM a\nVOLUME", "VOLUME requires at least one argument"),
        ('FROM a\nVOLUME [" "]', "VOLUME specified can not be an empty string"),
        ("FROM a\nEXPOSE", "EXPOSE requires at least one argument"),
        ("FROM a\nUSER", "USER requires exactly one argument"),
        ("FROM a\nWORKDIR", "WORKDIR requires exactly one argument"),
        ("FROM a\nENV a", "Dockerfile:2: ENV must have two arguments"),
        ("FROM a\nENV a=b c", 'Syntax error - can\'t find = in "c". Must be of the form'),
        ("FROM a\nENV =x", "ENV names can not be blank"),
        ("FROM a\nLABEL", "LABEL requires at least one argument"),
        ("FROM a\nONBUILD", "ONBUILD requires at least one argument"),
        ("FROM a\nONBUILD ONBUILD RUN x", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
        ("FROM a\nONBUILD MAINTAINER x", "MAINTAINER isn't allowed as an ONBUILD trigger"),
        ("FROM a\nHEALTHCHECK", "HEALTHCHECK requires at least one argument"),
        ("FROM a\nHEALTHCHECK FOO x", 'Unknown type "FOO" in HEALTHCHECK (try CMD)'),
        ("FROM a\nHEALTHCHECK --interval=1x CMD a", 'time: unknown unit "x" in duration "1x"'),
        ("FROM a\nHEALTHCHECK --retries=x CMD a", 'strconv.ParseInt: parsing "x": invalid syntax'),
        ("FROM a\nCOPY --from=x --from=y a b", "duplicate flag specified: from"),
        ("FROM a\nCOPY --chown a b", "missing a value on flag: chown"),
        ("FROM a\nCOPY --link= a b", "missing a value on flag: link"),
        ("FROM a\nCOPY --link=maybe a b", "expecting boolean value for flag link, not: maybe"),
        ("FROM a\nCOPY --foo=1 a b", "unknown flag: foo"),
        ("FROM a\nRUN --chown=1 x", "unknown flag: chown"),
        ("FROM a\nENV --foo=1 a=b", "unknown flag: foo"),
    ],
)
def test_instruction_errors(text: str, message: str) -> None:
    with pytest.raises(DockerfileError) as info:
        parse(text)
    assert message in str(info.value)
    assert str(info.value).startswith("Dockerfile:")


def test_error_names_the_given_file() -> None:
    with pytest.raises(DockerfileParseError) as info:
        parse("FROM a\n\nRUN x\nBAD y", filename="ctx/Dockerfile.dev")
    assert str(info.value) == "ctx/Dockerfile.dev:4: unknown instruction: BAD"
    assert (info.value.line, info.value.detail) == (4, "unknown instruction: BAD")


def test_accepted_oddities() -> None:
    # Docker accepts these: an empty RUN/CMD, HEALTHCHECK NONE ignores flags, bool flags.
    df = parse("FROM a\nRUN\nCMD\nHEALTHCHECK --bogus NONE\nCOPY --link=FALSE a b\n")
    assert df.stages[0].instructions[3].flags == {"link": ["false"]}


# -- import -c / commit -c ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [  # Docker 20.10: `docker import -c '<change>' x.tar t`
        ("RUN x", "run is not a valid change command"),
        ("FROM x", "from is not a valid change command"),
        ("ADD a b", "add is not a valid change command"),
        ("COPY a b", "copy is not a valid change command"),
        ("ARG x", "arg is not a valid change command"),
        ("MAINTAINER me", "maintainer is not a valid change command"),
        ('SHELL ["/bin/sh"]', "shell is not a valid change command"),
        ("FOO bar", "foo is not a valid change command"),
        ("", "file with no instructions"),
        ("ENV", "ENV requires at least one argument"),
    ],
)
def test_change_errors(change: str, message: str) -> None:
    with pytest.raises(DockerfileError) as info:
        parse_instruction(change)
    assert str(info.value) == message


def test_changes_are_joined_like_docker() -> None:
    instrs = parse_changes(["ENV A=1 \\", "B=2", "cmd echo hi"])
    assert [(i.cmd, i.args) for i in instrs] == [
        ("env", ["A", "1", "=", "B", "2", "="]),
        ("cmd", ["echo hi"]),
    ]
    assert parse_instruction("  onbuild   copy . /x").args == ["copy . /x"]


# -- robustness --------------------------------------------------------------------------------

_DOCKERFILE_ALPHABET = st.sampled_from(
    [*"FROMRUNCOPYENVLABELARGONBUILD \t\n\\`'\"=[]{}$#<-_:,./x1", "<<EOF", "\nEOF\n", "\r\n"]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_DOCKERFILE_ALPHABET | st.sampled_from(["# escape=`\n", "\ufeff"]), max_size=60).map(
        "".join
    )
)
def test_parse_never_crashes(text: str) -> None:
    try:
        result = parse_ast(text)
    except DockerfileParseError:
        return
    assert result.nodes
    for node in result.nodes:
        assert 1 <= node.start_line <= node.end_line
        node.dump()
    try:
        parse(text)
    except DockerfileError:
        pass
