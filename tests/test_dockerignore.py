""".dockerignore: moby/patternmatcher's test tables, ignorefile reading, directory pruning."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shale.dockerfile import Matcher, read_dockerignore
from shale.dockerfile.ignore import _compile
from shale.errors import InvalidArgument

# patternmatcher_test.go TestMatches: (pattern, path, excluded). Its two cases matching the
# raw path "/" are left out: Matcher.matches cleans paths, and "/" is the context root.
_MATCHES = [
    ("**", "file", True), ("**", "file/", True), ("**/", "file", True), ("**/", "file/", True),
    ("**", "dir/file", True), ("**/", "dir/file", True),
    ("**", "dir/file/", True), ("**/", "dir/file/", True), ("**/**", "dir/file", True),
    ("**/**", "dir/file/", True), ("dir/**", "dir/file", True), ("dir/**", "dir/file/", True),
    ("dir/**", "dir/dir2/file", True), ("dir/**", "dir/dir2/file/", True),
    ("**/dir", "dir", True), ("**/dir", "dir/file", True), ("**/dir2/*", "dir/dir2/file", True),
    ("**/dir2/*", "dir/dir2/file/", True), ("**/dir2/**", "dir/dir2/dir3/file", True),
    ("**/dir2/**", "dir/dir2/dir3/file/", True), ("**file", "file", True),
    ("**file", "dir/file", True), ("**/file", "dir/file", True), ("**file", "dir/dir/file", True),
    ("**/file", "dir/dir/file", True), ("**/file*", "dir/dir/file", True),
    ("**/file*", "dir/dir/file.txt", True), ("**/file*txt", "dir/dir/file.txt", True),
    ("**/file*.txt", "dir/dir/file.txt", True), ("**/file*.txt*", "dir/dir/file.txt", True),
    ("**/**/*.txt", "dir/dir/file.txt", True), ("**/**/*.txt2", "dir/dir/file.txt", False),
    ("**/*.txt", "file.txt", True), ("**/**/*.txt", "file.txt", True),
    ("a**/*.txt", "a/file.txt", True), ("a**/*.txt", "a/dir/file.txt", True),
    ("a**/*.txt", "a/dir/dir/file.txt", True), ("a/*.txt", "a/dir/file.txt", False),
    ("a/*.txt", "a/file.txt", True), ("a/*.txt**", "a/file.txt", True),
    ("a[b-d]e", "ae", False), ("a[b-d]e", "ace", True), ("a[b-d]e", "aae", False),
    ("a[^b-d]e", "aze", True), (".*", ".foo", True), (".*", "foo", False),
    ("abc.def", "abcdef", False), ("abc.def", "abc.def", True), ("abc.def", "abcZdef", False),
    ("abc?def", "abcZdef", True), ("abc?def", "abcdef", False), ("**/foo/bar", "foo/bar", True),
    ("**/foo/bar", "dir/foo/bar", True), ("**/foo/bar", "dir/dir2/foo/bar", True),
    ("abc/**", "abc", False), ("abc/**", "abc/def", True), ("abc/**", "abc/def/ghi", True),
    ("**/.foo", ".foo", True), ("**/.foo", "bar.foo", False), ("a(b)c/def", "a(b)c/def", True),
    ("a(b)c/def", "a(b)c/xyz", False), ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    ("dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
     "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("a\\\\", "a\\", True), ("a\\*b", "a*b", True),
]  # fmt: skip

_MULTI = [
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (["**", "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"],
     "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
]  # fmt: skip


@pytest.mark.parametrize(("pattern", "path", "excluded"), _MATCHES)
def test_patternmatcher_matches(pattern: str, path: str, excluded: bool) -> None:
    assert Matcher([pattern]).matches(path) is excluded


@pytest.mark.parametrize(("patterns", "path", "excluded"), _MULTI)
def test_patternmatcher_multi(patterns: list[str], path: str, excluded: bool) -> None:
    assert Matcher(patterns).matches(path) is excluded


# TestMatch (Go's filepath.Match table run through Matches): (pattern, path, match) or error.
_FILEPATH_MATCH = [
    ("abc", "abc", True), ("*", "abc", True), ("*c", "abc", True), ("a*", "a", True),
    ("a*", "abc", True), ("a*", "ab/c", True), ("a*/b", "abc/b", True), ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True), ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False), ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True), ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[c]", "abc", True), ("ab[b-d]", "abc", True), ("ab[e-g]", "abc", False),
    ("ab[^c]", "abc", False), ("ab[^b-d]", "abc", False), ("ab[^e-g]", "abc", True),
    ("a\\*b", "a*b", True), ("a\\*b", "ab", False), ("a?b", "a☺b", True), ("a[^a]b", "a☺b", True),
    ("a???b", "a☺b", False), ("a[^a][^a][^a]b", "a☺b", False), ("[a-ζ]*", "α", True),
    ("*[a-ζ]", "A", False), ("a?b", "a/b", False), ("a*b", "a/b", False), ("[\\]a]", "]", True),
    ("[\\-]", "-", True), ("[x\\-]", "x", True), ("[x\\-]", "-", True), ("[x\\-]", "z", False),
    ("[\\-x]", "x", True), ("[\\-x]", "-", True), ("[\\-x]", "a", False), ("*x", "xxx", True),
]  # fmt: skip
_BAD_PATTERNS = [
    "[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "[^bc", "a[", "!",
]  # fmt: skip


@pytest.mark.parametrize(("pattern", "path", "excluded"), _FILEPATH_MATCH)
def test_filepath_match_table(pattern: str, path: str, excluded: bool) -> None:
    assert Matcher([pattern]).matches(path) is excluded


@pytest.mark.parametrize("pattern", _BAD_PATTERNS)
def test_bad_patterns(pattern: str) -> None:
    with pytest.raises(InvalidArgument):
        Matcher([pattern])


def test_regex_invalid_pattern_fails_at_match_time_every_time() -> None:
    # Valid for filepath.Match, rejected by the regex engine (moby/moby#52203).
    matcher = Matcher(["[Local-Only]/"])
    for _ in range(2):
        with pytest.raises(InvalidArgument):
            matcher.matches("x")


@pytest.mark.parametrize(
    ("pattern", "kind", "regex"),
    [
        ("*", "regexp", "^[^/]*$"),
        ("file*", "regexp", "^file[^/]*$"),
        ("a*/b", "regexp", "^a[^/]*/b$"),
        ("**", "suffix", None),
        ("**/**", "regexp", "^(.*/)?.*$"),
        ("dir/**", "prefix", None),
        ("**/dir2/*", "regexp", "^(.*/)?dir2/[^/]*$"),
        ("**/**/*.txt", "regexp", "^(.*/)?(.*/)?[^/]*\\.txt$"),
        ("a[b-d]e", "regexp", "^a[b-d]e$"),
        (".*", "regexp", "^\\.[^/]*$"),
        ("abc.def", "exact", None),
        ("abc?def", "regexp", "^abc[^/]def$"),
        ("**/foo/bar", "suffix", None),
        ("a.|)$(}+{bc", "exact", None),
    ],
)
def test_compile_kinds(pattern: str, kind: str, regex: str | None) -> None:
    got_kind, got_regex = _compile(pattern)
    assert got_kind == kind
    assert (got_regex.pattern if got_regex else None) == regex


def test_read_dockerignore() -> None:
    content = (
        "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! "
    )
    assert read_dockerignore(content) == [
        "test1",
        "test2",
        "a/file/here",
        "lastfile",
        "!inverted/abs/path",
        "!",
        "!",
    ]
    assert read_dockerignore("\ufeff# c\r\n  ./x/../y/  \r\n #not a comment\n") == [
        "y",
        "#not a comment",
    ]
    assert read_dockerignore("") == []


def test_classic_builder_example() -> None:
    # The .dockerignore checked against Docker 20.10's classic builder (reference §1.6).
    matcher = Matcher.from_dockerignore(
        "*.md\n!README.md\n**/*.log\nlogs/\n/docs/*\n!docs/keep.txt\n./sub/.hidden\n*.tmp\n"
        "  sp ace.txt  \n.dockerignore\n"
    )
    kept = [".env", "Dockerfile", "README.md", "a/x.md", "docs/keep.txt", "sub/f.tmp"]
    dropped = ["a.md", "z.log", "a/b/c/y.log", "logs", "logs/1.txt", "docs/drop.txt"]
    dropped += ["sub/.hidden", "f.tmp", "sp ace.txt", ".dockerignore"]
    assert [p for p in kept if matcher.matches(p)] == []
    assert [p for p in dropped if not matcher.matches(p)] == []


def test_paths_are_cleaned_and_root_is_never_excluded() -> None:
    matcher = Matcher(["**"])
    assert not matcher.matches(".")
    assert not matcher.matches("")
    assert matcher.matches("./a/../b") and matcher.matches("/b")


def test_folder_exceptions() -> None:
    for patterns in (["docs", "!docs/README.md"], ["docs/", "!docs/README.md"]):
        matcher = Matcher(patterns)
        assert not matcher.matches("docs/README.md")
        assert matcher.matches("docs/other.md")
    assert Matcher(["!fileutils.go", "*.go"]).matches("fileutils.go")
    assert not Matcher(["*.go", "!fileutils.go"]).matches("fileutils.go")


@pytest.mark.parametrize(
    ("patterns", "directory", "skip"),
    [
        (["build"], "build", True),
        (["build"], "src", False),
        (["node_modules", "!node_modules/keep"], "node_modules", False),
        (["node_modules", "!node_modules/keep"], "node_modules/other", True),
        (["**", "!**/*.py"], "a/b", False),  # the classic builder's prefix test got this wrong
        (["*", "!src/*/Dockerfile"], "src", False),
        (["*", "!src/*/Dockerfile"], "lib", True),
        (["*", "!src/*/Dockerfile"], "src/x", False),
        (["*", "!src/*/Dockerfile"], "src/x/y", True),
        (["a", "!b/c"], "a", True),
        (["a", "!a*/x"], "ab", False),
        (["a/**", "!a/b"], "a/b", False),
        (["a/**", "!a/b"], "a/b/c", False),
        (["a/**", "!a/b", "a/b/c"], "a/b/c", True),
    ],
)
def test_may_skip_dir(patterns: list[str], directory: str, skip: bool) -> None:
    assert Matcher(patterns).may_skip_dir(directory) is skip


_PART = st.sampled_from(["a", "b", "*", "**", "?", "[ab]", "!", "x.y"])
_PATTERN = st.lists(_PART, min_size=1, max_size=3).map("/".join)
_PATH = st.lists(st.sampled_from(["a", "b", "x.y", "ab"]), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.lists(_PATTERN, max_size=4), _PATH, _PATH)
def test_skipped_dir_hides_nothing(
    patterns: list[str], dir_parts: list[str], below: list[str]
) -> None:
    """Whatever may_skip_dir prunes must really be excluded, all the way down."""
    try:
        matcher = Matcher(patterns)
        if not matcher.may_skip_dir("/".join(dir_parts)):
            return
        assert matcher.matches("/".join(dir_parts + below))
    except InvalidArgument:
        return
