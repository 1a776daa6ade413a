"""Word expansion: BuildKit's envVarTest/wordsTest data files and lex_test.go's cases.

The data files are read from the folder named by ``SHALE_BUILDKIT_CORPUS`` (skipped without).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shale.dockerfile import ExpansionError, Lexer, process_word, process_words
from shale.dockerfile.shell import (
    ProcessWord,
    ProcessWords,
    _pattern_regex,
    _reverse_pattern,
    process_word_with_matches,
)

_DEFAULT_CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpora",
                               "buildkit")
# the shared corpus sits beside the clone here and in CI; the variable overrides it
_CORPUS = os.environ.get("SHALE_BUILDKIT_CORPUS") or (
    _DEFAULT_CORPUS if os.path.isdir(_DEFAULT_CORPUS) else "")
_SKIP = "SHALE_BUILDKIT_CORPUS is not set (point it at BuildKit's parser/lexer test data)"
_SHELL_DIR = Path(_CORPUS, "frontend", "dockerfile", "shell")
_ENV_VAR_TEST_ENV = ["PWD=/home", "SHELL=bash", "KOREAN=한국어", "NULL="]


def _lines(name: str) -> list[str]:
    return (_SHELL_DIR / name).read_bytes().decode("utf-8").split("\n")


def _env_var_cases() -> list[object]:
    """``PLATFORM|INPUT|EXPECTED`` lines; Windows-only (W) lines are not ours."""
    if not _CORPUS:
        return [pytest.param("", "", marks=pytest.mark.skip(reason=_SKIP))]
    cases: list[object] = []
    for number, line in enumerate(_lines("envVarTest"), 1):
        if line.startswith("#") or not line.strip():
            continue
        platform, source, expected = (part.strip() for part in line.split("|"))
        if platform in ("A", "U"):
            cases.append(pytest.param(source, expected, id=f"line{number}"))
    return cases


def _words_cases() -> list[object]:
    """``INPUT | w1,w2`` lines; ``ENV`` lines add to the environment of later lines."""
    if not _CORPUS:
        return [pytest.param("", [], [], marks=pytest.mark.skip(reason=_SKIP))]
    env: list[str] = []
    cases: list[object] = []
    for number, line in enumerate(_lines("wordsTest"), 1):
        if line.startswith("#") or not line:
            continue
        if line.startswith("ENV "):
            env.append(line[3:].lstrip(" "))
            continue
        source, expected = line.split("|")
        words = expected.lstrip(" ").split(",")
        cases.append(pytest.param(source.strip(), words, list(env), id=f"line{number}"))
    return cases


@pytest.mark.parametrize(("source", "expected"), _env_var_cases())
def test_buildkit_env_var_case(source: str, expected: str) -> None:
    if expected == "error":
        with pytest.raises(ExpansionError):
            process_word(source, _ENV_VAR_TEST_ENV)
    else:
        assert process_word(source, _ENV_VAR_TEST_ENV) == expected
        assert ProcessWord(source, dict(p.split("=", 1) for p in _ENV_VAR_TEST_ENV)) == expected


@pytest.mark.parametrize(("source", "expected", "env"), _words_cases())
def test_buildkit_words_case(source: str, expected: list[str], env: list[str]) -> None:
    if expected == ["error"]:
        with pytest.raises(ExpansionError):
            process_words(source, env)
    else:
        assert ProcessWords(source, env) == expected


@pytest.mark.skipif(not _CORPUS, reason=_SKIP)
def test_buildkit_corpus_counts() -> None:
    assert len(_env_var_cases()) == 228  # 230 cases, 2 of them Windows-only
    assert len(_words_cases()) == 24


# -- lex_test.go TestProcessWithMatches --------------------------------------------------------

_MATCH_CASES = [
    ("x", {"DUMMY": "dummy"}, "x", set(), set()),
    ("x ${UNUSED}", {"DUMMY": "dummy"}, "x ", set(), {"UNUSED"}),
    ("x ${FOO}", {"FOO": "y"}, "x y", {"FOO"}, set()),
    (
        "${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}",
        {"FOO": "xxx", "BAR": ""},
        "xxx  ccc",
        {"FOO", "BAR"},
        {"BAZ"},
    ),
    (
        "${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}",
        {"FOO": "xxx", "BAR": ""},
        "xxx bbb ccc",
        {"FOO", "BAR"},
        {"BAZ"},
    ),
    ("${FOO:-}", {"FOO": "xxx", "BAR": ""}, "xxx", {"FOO"}, set()),
    ("${FOO:-}", {}, "", set(), {"FOO"}),
    (
        "${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}",
        {"FOO": "xxx", "BAR": ""},
        "aaa bbb ",
        {"FOO", "BAR"},
        {"BAZ"},
    ),
    (
        "${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}",
        {"FOO": "xxx", "BAR": ""},
        "aaa  ",
        {"FOO", "BAR"},
        {"BAZ"},
    ),
    ("${FOO?aaa}", {"FOO": "xxx", "BAR": ""}, "xxx", {"FOO"}, set()),
    ("${BAR?bbb}", {"FOO": "xxx", "BAR": ""}, "", {"BAR"}, set()),
    ("${FOO:?aaa}", {"FOO": "xxx", "BAR": ""}, "xxx", {"FOO"}, set()),
    ("${FOO#()[]{\\}^$.\\*\\?|\\\\}", {"FOO": "()[]{}^$.*?|\\x"}, "x", {"FOO"}, set()),
    ("${FOO%%\\**}", {"FOO": "xx**"}, "xx", {"FOO"}, set()),
    ("${FOO#*x*y}", {"FOO": "xxyy"}, "y", {"FOO"}, set()),
    ("${FOO#*}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": "x"}, "xyy", {"FOO", "BAR"}, set()),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy", {"FOO", "BAR"}, set()),
    ("${FOO#}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO##*x}", {"FOO": "xxyy"}, "yy", {"FOO"}, set()),
    ("${FOO##}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO#?\\?}", {"FOO": "???y"}, "?y", {"FOO"}, set()),
    ("${ABC:-.}${FOO%x}${ABC:-.}", {"FOO": "xxyy"}, ".xxyy.", {"FOO"}, {"ABC"}),
    ("${FOO%%\\**\\*}", {"FOO": "a***yy*"}, "a", {"FOO"}, set()),
    ("${FOO%}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO%%$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy", {"FOO", "BAR"}, set()),
    (
        "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
        {"FOO": "/foo*/*/*.txt", "NEEDLE": "\\*/"},
        "/foo.*/*.txt - /foo..*.txt",
        {"FOO", "NEEDLE"},
        set(),
    ),
    (
        "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
        {"FOO": "/tmp/tmp/bar.txt", "NEEDLE": "/tmp"},
        "/tmp/bar.txt - /bar.txt",
        {"FOO", "NEEDLE"},
        set(),
    ),
    (
        "${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
        {"FOO": "/a/foo/b/c.txt", "NEEDLE": "/?/", "REPLACEMENT": "/"},
        "/foo/b/c.txt - /foo/c.txt",
        {"FOO", "NEEDLE", "REPLACEMENT"},
        set(),
    ),
    (
        "${FOO/$NEEDLE/$REPLACEMENT}",
        {"FOO": "http://google.de", "NEEDLE": "http://", "REPLACEMENT": "https://"},
        "https://google.de",
        {"FOO", "NEEDLE", "REPLACEMENT"},
        set(),
    ),
    ("${FOO//\\//\\/}", {"FOO": "/tmp/foo.txt"}, "\\/tmp\\/foo.txt", {"FOO"}, set()),
    ("${FOO/$BAR/ww}", {"FOO": "xxyy", "BAR": ""}, "wwxxyy", {"FOO", "BAR"}, set()),
    ("${FOO///}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO///}", {}, "", set(), {"FOO"}),
    # Go's ReplaceAll skips an empty match right after a match; Python's re.sub would not.
    ("${FOO//*/x}", {"FOO": "abc"}, "x", {"FOO"}, set()),
    ("${FOO//$BAR/-}", {"FOO": "ab", "BAR": ""}, "-a-b-", {"FOO", "BAR"}, set()),
]


@pytest.mark.parametrize(("word", "env", "expected", "matched", "unmatched"), _MATCH_CASES)
def test_process_with_matches(
    word: str, env: dict[str, str], expected: str, matched: set[str], unmatched: set[str]
) -> None:
    result = process_word_with_matches(word, env)
    assert result.result == expected
    assert result.matched == matched
    assert result.unmatched == unmatched


@pytest.mark.parametrize(
    ("word", "env"),
    [
        ("${BAZ?ccc}", {"FOO": "xxx"}),
        ("${BAR:?bbb}", {"BAR": ""}),
        ("${BAZ:?ccc}", {}),
        ("${BAZ:?}", {}),
        ("${FOO=aaa}", {"FOO": "xxx"}),
        ("${FOO=:aaa}", {"FOO": "xxx"}),
        ("${FOO=}", {}),
        ("${FOO//ww}", {"FOO": "xxyy"}),
        ("${FOO//}", {"FOO": "xxyy"}),
        ("${FOO:#x}", {"FOO": "xxyy"}),
        ("${FOO#\\x}", {"FOO": "xxyy"}),
    ],
)
def test_process_errors(word: str, env: dict[str, str]) -> None:
    with pytest.raises(ExpansionError, match=r"^failed to process "):
        process_word(word, env)


def test_mandatory_messages() -> None:
    lex = Lexer()
    assert lex.process_word("${VAR:?message here$ARG}", ["VAR=plain", "ARG=x"]) == "plain"
    assert lex.process_word("${VAR?message here$ARG}", ["VAR=", "ARG=x"]) == ""
    for env in (["VAR=", "ARG=x"], ["ARG=x"]):
        with pytest.raises(ExpansionError, match="VAR: message herex"):
            lex.process_word("${VAR:?message here$ARG}", env)
    with pytest.raises(ExpansionError, match="VAR: is not allowed to be unset"):
        lex.process_word("${VAR?}", [])
    with pytest.raises(ExpansionError, match="VAR: is not allowed to be empty"):
        lex.process_word("${VAR:?}", ["VAR="])


def test_error_message_is_buildkits() -> None:
    with pytest.raises(ExpansionError) as info:
        process_word("he${PWD", {})
    assert str(info.value) == "failed to process \"he${PWD\": syntax error: missing '}'"


def test_pattern_regex_and_reverse() -> None:
    assert _pattern_regex("*", greedy=True, anchored=True).pattern == "^.*"
    assert _pattern_regex("?", greedy=True, anchored=True).pattern == "^."
    assert _pattern_regex("\\*", greedy=True, anchored=True).pattern == "^\\*"
    assert _reverse_pattern("a\\*c") == "c\\*a"
    assert _reverse_pattern("\\\\\\ab") == "b\\a\\\\"
    assert _reverse_pattern("ab\\") == "\\ba"
    assert _reverse_pattern("\\\\b") == "b\\\\"


def test_later_env_entry_wins_and_bare_key_is_empty() -> None:
    assert process_word("$car-$foo.", ["car=hat", "car=bike", "foo"]) == "bike-."


def test_backtick_escape() -> None:
    assert process_word("a`$b`\\c", {"b": "x"}, escape="`") == "a$b\\c"
    assert process_word('"`"x"', {}, escape="`") == '"x'


def test_raw_modes_used_by_heredoc_detection() -> None:
    lex = Lexer(raw_quotes=True, raw_escapes=True, skip_unset_env=True)
    assert lex.process_words("cat <<'EOF' $X ${Y:-z} a\\ b", {}) == [
        "cat",
        "<<'EOF'",
        "$X",
        "${Y:-z}",
        "a\\ b",
    ]


def test_words_split_only_unquoted_expansions() -> None:
    env = {"V": "a  b"}
    assert process_words('x$V "$V" \'$V\' ""', env) == ["xa", "b", "a  b", "$V"]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from([*"ab $\\'\"{}:-+?#%/*", "${A", "${B:-", "$A", "한"]), max_size=25
    ).map("".join)
)
def test_expansion_never_crashes(word: str) -> None:
    env = {"A": "x y", "B": ""}
    try:
        result = process_word_with_matches(word, env)
    except ExpansionError:
        return
    assert isinstance(result.result, str)
    assert all(w for w in result.words)
