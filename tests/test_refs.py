"""Reference parsing against the behaviour of distribution/reference and docker 20.10.

The cases restate facts from distribution/reference's normalize_test.go and
reference_test.go, and error texts printed by the docker CLI on this project's oracle
machine (`docker tag`, `docker pull` of malformed names).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shale.errors import InvalidArgument, InvalidReference
from shale.refs import Reference, familiar_match, is_image_id_like

HEX = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
DGST = "sha256:" + HEX

# input -> (domain, path, tag, digest)
VALID = {
    "busybox": ("docker.io", "library/busybox", None, None),
    "busybox:latest": ("docker.io", "library/busybox", "latest", None),
    "library/busybox": ("docker.io", "library/busybox", None, None),
    "docker.io/busybox": ("docker.io", "library/busybox", None, None),
    "docker.io/library/busybox": ("docker.io", "library/busybox", None, None),
    "index.docker.io/busybox": ("docker.io", "library/busybox", None, None),
    "index.docker.io/docker/docker": ("docker.io", "docker/docker", None, None),
    "docker/docker": ("docker.io", "docker/docker", None, None),
    "fooo/bar": ("docker.io", "fooo/bar", None, None),
    "library/foo/bar": ("docker.io", "library/foo/bar", None, None),
    "store/foo/bar": ("docker.io", "store/foo/bar", None, None),
    "test_com/foo": ("docker.io", "test_com/foo", None, None),
    "test.com/foo": ("test.com", "foo", None, None),
    "test.com:8080/foo": ("test.com:8080", "foo", None, None),
    "test-com:8080/foo": ("test-com:8080", "foo", None, None),
    "test:5000/repo:tag": ("test:5000", "repo", "tag", None),
    "xn--n3h.com:18080/foo": ("xn--n3h.com:18080", "foo", None, None),
    "localhost/x": ("localhost", "x", None, None),
    "localhost:5000/x:1": ("localhost:5000", "x", "1", None),
    "127.0.0.1:5000/library/debian": ("127.0.0.1:5000", "library/debian", None, None),
    "192.168.0.1": ("docker.io", "library/192.168.0.1", None, None),
    "192.168.0.1:80": ("docker.io", "library/192.168.0.1", "80", None),
    "test.com:5000": ("docker.io", "library/test.com", "5000", None),
    "foo_bar.com:8080": ("docker.io", "library/foo_bar.com", "8080", None),
    "Example.com/foo": ("Example.com", "foo", None, None),
    "[2001:db8::1]:5000/repo:tag": ("[2001:db8::1]:5000", "repo", "tag", None),
    "[::1]:5000/repo": ("[::1]:5000", "repo", None, None),
    "lowercase:Uppercase": ("docker.io", "library/lowercase", "Uppercase", None),
    "docker---rules/docker": ("docker.io", "docker---rules/docker", None, None),
    "dock__er/docker": ("docker.io", "dock__er/docker", None, None),
    "d/docker": ("docker.io", "d/docker", None, None),
    "sub-dom1.foo.com/bar/baz/quux:some-long-tag": (
        "sub-dom1.foo.com",
        "bar/baz/quux",
        "some-long-tag",
        None,
    ),
    "b.gcr.io/test.example.com/my-app:test.example.com": (
        "b.gcr.io",
        "test.example.com/my-app",
        "test.example.com",
        None,
    ),
    "busybox@" + DGST: ("docker.io", "library/busybox", None, DGST),
    "test:5000/repo:tag@" + DGST: ("test:5000", "repo", "tag", DGST),
    # a 64-hex name is refused only bare; with a domain it is an ordinary path
    "docker.io/" + "1a3f" * 16: ("docker.io", "library/" + "1a3f" * 16, None, None),
    # "sha256:<hex>" is a repository "sha256" with a 64-character tag
    DGST: ("docker.io", "library/sha256", HEX, None),
    "a:" + "b" * 128: ("docker.io", "library/a", "b" * 128, None),
    "sha512/x@sha512:" + "a" * 128: ("docker.io", "sha512/x", None, "sha512:" + "a" * 128),
}

# input -> the exact message (docker prints it after its own prefix)
INVALID = {
    "": "invalid reference format",
    ":justtag": "invalid reference format",
    "@" + DGST: "invalid reference format",
    "foo:": "invalid reference format",
    "a..b": "invalid reference format",
    "ab:1a:2": "invalid reference format",
    "aa/asdf$$^/aa": "invalid reference format",
    "docker///docker": "invalid reference format",
    "docker/": "invalid reference format",
    "/foo": "invalid reference format",
    "-docker": "invalid reference format",
    "-docker/docker": "invalid reference format",
    "docker-/docker": "invalid reference format",
    "____/____": "invalid reference format",
    "dock..er/docker": "invalid reference format",
    "dock_.er/docker": "invalid reference format",
    "dock-.er/docker": "invalid reference format",
    "foo___bar": "invalid reference format",
    "https://github.com/docker/docker": "invalid reference format",
    "[fe80::1%eth0]:5000/repo": "invalid reference format",
    "fc00::1:5000/debian": "invalid reference format",
    "a:" + "b" * 129: "invalid reference format",
    "busybox@sha256:abc": "invalid reference format",
    "Bad:Name": "invalid reference format: repository name (library/Bad) must be lowercase",
    "UPPER": "invalid reference format: repository name (library/UPPER) must be lowercase",
    "library/Busybox": (
        "invalid reference format: repository name (library/Busybox) must be lowercase"
    ),
    "foo/Bar:tag": "invalid reference format: repository name (foo/Bar) must be lowercase",
    "localhost:5000/Foo": "invalid reference format: repository name (Foo) must be lowercase",
    "test:5000/Uppercase/lowercase:tag": (
        "invalid reference format: repository name (Uppercase/lowercase) must be lowercase"
    ),
    # docker 20.10 keeps an upper-case first component on Docker Hub, so it is refused
    "Foo/bar": "invalid reference format: repository name (Foo/bar) must be lowercase",
    # the name is cut at the first ':', which here belongs to the digest
    "Busybox@" + DGST: (
        "invalid reference format: repository name (library/Busybox@sha256) must be lowercase"
    ),
    "1a3f" * 16: (
        f"invalid repository name ({'1a3f' * 16}), cannot specify 64-byte hexadecimal strings"
    ),
    "a" * 256: "repository name must not be more than 255 characters",
    "a/" * 128 + "a:tag": "repository name must not be more than 255 characters",
    "busybox@sha256:" + "a" * 32: "invalid checksum digest length",
    "busybox@sha512:" + "a" * 64: "invalid checksum digest length",
    "busybox@md5:" + "a" * 32: "unsupported digest algorithm",
    "validname@invaliddigest:" + HEX: "unsupported digest algorithm",
    "busybox@sha256:" + "A" * 64: "invalid checksum digest format",
}


@pytest.mark.parametrize("text", sorted(VALID))
def test_parse_valid(text: str) -> None:
    ref = Reference.parse(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == VALID[text]


@pytest.mark.parametrize("text", sorted(INVALID))
def test_parse_invalid_message(text: str) -> None:
    with pytest.raises(InvalidReference) as info:
        Reference.parse(text)
    assert str(info.value) == INVALID[text]
    assert isinstance(info.value, InvalidArgument)


# input -> (str(), familiar, repository, name)
FORMS = {
    "busybox": (
        "docker.io/library/busybox:latest",
        "busybox:latest",
        "busybox",
        "docker.io/library/busybox",
    ),
    "user/repo:tag": (
        "docker.io/user/repo:tag",
        "user/repo:tag",
        "user/repo",
        "docker.io/user/repo",
    ),
    "localhost:5000/x:1": (
        "localhost:5000/x:1",
        "localhost:5000/x:1",
        "localhost:5000/x",
        "localhost:5000/x",
    ),
    "docker.io/library/foo/bar": (
        "docker.io/library/foo/bar:latest",
        "library/foo/bar:latest",
        "library/foo/bar",
        "docker.io/library/foo/bar",
    ),
    "127.0.0.1:8000/privatebase": (
        "127.0.0.1:8000/privatebase:latest",
        "127.0.0.1:8000/privatebase:latest",
        "127.0.0.1:8000/privatebase",
        "127.0.0.1:8000/privatebase",
    ),
    "busybox@" + DGST: (
        "docker.io/library/busybox@" + DGST,
        "busybox@" + DGST,
        "busybox",
        "docker.io/library/busybox",
    ),
    "busybox:latest@" + DGST: (
        "docker.io/library/busybox:latest@" + DGST,
        "busybox:latest@" + DGST,
        "busybox",
        "docker.io/library/busybox",
    ),
}


@pytest.mark.parametrize("text", sorted(FORMS))
def test_display_forms(text: str) -> None:
    ref = Reference.parse(text)
    assert (str(ref), ref.familiar, ref.repository, ref.name) == FORMS[text]


def test_default_tag_is_shown_but_not_stored() -> None:
    ref = Reference.parse("busybox")
    assert ref.tag is None
    assert ref.with_default_tag().tag == "latest"
    assert ref.with_default_tag() == Reference.parse("docker.io/library/busybox:latest")
    digested = Reference.parse("busybox@" + DGST)
    assert digested.with_default_tag() == digested


def test_with_tag_digest_and_name_only() -> None:
    ref = Reference.parse("test.com:8000/foo@" + DGST)
    assert str(ref.with_tag("TAG5")) == "test.com:8000/foo:TAG5"
    assert str(ref.name_only()) == "test.com:8000/foo:latest"
    assert str(Reference.parse("foo:1").with_digest(DGST)) == "docker.io/library/foo@" + DGST
    with pytest.raises(InvalidReference, match=r"^invalid tag format$"):
        ref.with_tag("-foo")
    with pytest.raises(InvalidReference, match=r"^invalid checksum digest format$"):
        ref.with_digest("foo")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("abc", True),
        ("667b0b15ab7a", True),
        ("sha256:667b", True),
        (HEX, True),
        (DGST, True),
        ("", False),
        ("sha256:", False),
        ("ABC", False),
        ("busybox", False),
        ("f" * 65, False),
        ("sha512:" + HEX, False),
    ],
)
def test_is_image_id_like(text: str, expected: bool) -> None:
    assert is_image_id_like(text) is expected


@pytest.mark.parametrize(
    ("reference", "pattern", "expected"),
    [
        ("foo", "foo/**/ba[rz]", False),
        ("foo/any/bat", "foo/**/ba[rz]", False),
        ("foo/a/bar", "foo/**/ba[rz]", True),
        ("foo/b/baz", "foo/**/ba[rz]", True),
        ("foo/c/baz:tag", "foo/**/ba[rz]", True),
        ("foo/c/baz:tag", "foo/*/baz:tag", True),
        ("foo/c/baz:tag", "foo/c/baz:tag", True),
        ("example.com/foo/c/baz:tag", "*/foo/c/baz", True),
        ("example.com/foo/c/baz:tag", "example.com/foo/c/baz", True),
        # observed with `docker images --filter reference=...`
        ("shalefmt", "*shalefmt*", True),
        ("localhost:5000/shalefmt/longer-name:v1.2", "*shalefmt*", False),
        ("busybox:1.36", "busybox:1.*", True),
        ("busybox:1.36", "busybox", True),
        ("busybox:1.36", "bus?box", True),
        ("busybox:1.36", "bu?box", False),
        ("busybox", "busy[^a]ox", True),
        ("busybox", "busy\\box", True),
    ],
)
def test_familiar_match(reference: str, pattern: str, expected: bool) -> None:
    assert familiar_match(pattern, Reference.parse(reference)) is expected


@pytest.mark.parametrize("pattern", ["[", "a[", "[]", "[-a]", "a\\", "[a-]"])
def test_familiar_match_bad_pattern(pattern: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^syntax error in pattern$"):
        familiar_match(pattern, Reference.parse("busybox"))


_component = st.from_regex(r"[a-z0-9]+(?:[._-][a-z0-9]+)?", fullmatch=True)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)


@given(
    domain=st.sampled_from(["", "localhost/", "example.com/", "reg.io:5000/"]),
    parts=st.lists(_component, min_size=1, max_size=3),
    tag=st.none() | _tag,
)
def test_round_trip(domain: str, parts: list[str], tag: str | None) -> None:
    text = domain + "/".join(parts) + (f":{tag}" if tag is not None else "")
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return  # a bare 64-hex text is an ID, never a name
    ref = Reference.parse(text)
    assert ref.tag == tag
    assert Reference.parse(str(ref)) == ref.with_default_tag()
    assert Reference.parse(ref.familiar) == ref.with_default_tag()


@given(st.text(max_size=80))
def test_arbitrary_text_parses_or_raises_invalid_reference(text: str) -> None:
    try:
        ref = Reference.parse(text)
    except InvalidReference:
        return
    assert Reference.parse(str(ref)) == ref.with_default_tag()


def test_long_hostile_input_is_fast() -> None:
    # Go's regexp is linear; ours must not backtrack catastrophically either.
    for text in ["a-" * 20000 + "!", "x." + "a-" * 10000 + "/b!", "a/" + "a_" * 10000 + "_"]:
        with pytest.raises(InvalidReference):
            Reference.parse(text)
