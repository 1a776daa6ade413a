"""Image references, parsed and normalised the way docker does.

Ported from the grammar of ``distribution/reference`` (``regexp.go``, ``reference.go``,
``normalize.go``)::

    reference := name [ ":" tag ] [ "@" digest ]
    name      := [domain '/'] path-component ['/' path-component]*
    tag       := [\\w][\\w.-]{0,127}

Normalisation follows ``ParseNormalizedNamed`` as Docker Engine 20.10 applies it: the first
component of a name is a registry domain only if it contains ``.`` or ``:`` or is
``localhost``; otherwise the name lives on Docker Hub (``docker.io``) and a one-component
name gets the ``library/`` namespace. Error texts are docker's, word for word (the
"must be lowercase" one in the newer form that names the repository, as the docker CLI
prints it).
"""

from __future__ import annotations

import re

from shale.errors import InvalidArgument, InvalidReference
from shale.record import record, replace

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

# The building blocks of distribution/reference's regexp.go, kept apart so that each one
# can be checked against the grammar above.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = _ALNUM + r"(?:" + _SEPARATOR + _ALNUM + r")*"
_REMOTE_NAME = _PATH_COMPONENT + r"(?:/" + _PATH_COMPONENT + r")*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = _DOMAIN_COMPONENT + r"(?:\." + _DOMAIN_COMPONENT + r")*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN = r"(?:" + _DOMAIN_NAME + "|" + _IPV6 + r")(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

# re.ASCII: Go's \w is [0-9A-Za-z_], never a Unicode letter.
_REFERENCE_RE = re.compile(
    r"((?:" + _DOMAIN + r"/)?" + _REMOTE_NAME + r")"
    r"(?::(" + _TAG + r"))?"
    r"(?:@(" + _DIGEST + r"))?",
    re.ASCII,
)
_NAME_RE = re.compile(r"(?:(" + _DOMAIN + r")/)?(" + _REMOTE_NAME + r")", re.ASCII)
_TAG_RE = re.compile(_TAG, re.ASCII)
_IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}")
_ID_PREFIX_RE = re.compile(r"(?:sha256:)?[a-f0-9]{1,64}")

# go-digest's registered algorithms: hex length and the encoded form each one accepts.
_DIGEST_HEX_LEN = {"sha256": 64, "sha384": 96, "sha512": 128}
_DIGEST_HEX_RE = re.compile(r"[a-f0-9]+")
_DIGEST_ANY_RE = re.compile(_DIGEST, re.ASCII)

ERR_INVALID_FORMAT = "invalid reference format"


@record(frozen=True)
class Reference:
    """A parsed, normalised reference: ``domain/path[:tag][@digest]``.

    ``tag`` and ``digest`` stay ``None`` when the text did not give them, so a caller can
    tell ``busybox`` from ``busybox:latest`` (``pull`` says "Using default tag", ``push``
    without a tag pushes every tag). ``str()`` and ``familiar`` show the default tag the
    way docker's ``TagNameOnly`` does; ``with_default_tag()`` makes it explicit.
    """

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse a user-supplied name (``ParseNormalizedNamed``); raise InvalidReference."""
        return _parse_normalized(text)

    @property
    def name(self) -> str:
        """Full name without tag or digest: ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def repository(self) -> str:
        """Familiar name without tag or digest, as ``docker images`` shows it: ``busybox``."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        rest = self.path.removeprefix(OFFICIAL_REPO_PREFIX)
        # Only a top-level official repository loses "library/" (normalize.go's rule).
        if rest != self.path and "/" not in rest:
            return rest
        return self.path

    @property
    def familiar(self) -> str:
        """Docker's short display form with the default tag: ``busybox:latest``."""
        return self.repository + self._suffix()

    def with_default_tag(self) -> Reference:
        """This reference with tag ``latest`` if it has neither tag nor digest."""
        if self.tag is None and self.digest is None:
            return replace(self, tag=DEFAULT_TAG)
        return self

    def with_tag(self, tag: str) -> Reference:
        """Same name, another tag (``WithTag``); the digest is dropped."""
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReference("invalid tag format")
        return Reference(self.domain, self.path, tag, None)

    def with_digest(self, digest: str) -> Reference:
        """Same name, given digest, no tag: the form of a repo digest."""
        _check_digest(digest)
        return Reference(self.domain, self.path, None, digest)

    def name_only(self) -> Reference:
        """Same name without tag or digest (``TrimNamed``)."""
        return Reference(self.domain, self.path)

    def _suffix(self) -> str:
        tag = self.tag
        if tag is None and self.digest is None:
            tag = DEFAULT_TAG
        out = f":{tag}" if tag is not None else ""
        return out + (f"@{self.digest}" if self.digest is not None else "")

    def __str__(self) -> str:
        return self.name + self._suffix()


def _split_docker_domain(text: str) -> tuple[str, str]:
    """Split off a registry domain the way docker 20.10's ``splitDockerDomain`` does."""
    first, sep, rest = text.partition("/")
    if sep and (first == "localhost" or "." in first or ":" in first):
        domain, remainder = first, rest
    else:
        domain, remainder = DEFAULT_DOMAIN, text
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def _parse_normalized(text: str) -> Reference:
    if _IDENTIFIER_RE.fullmatch(text):
        raise InvalidReference(
            f"invalid repository name ({text}), cannot specify 64-byte hexadecimal strings"
        )
    domain, remainder = _split_docker_domain(text)
    # Docker cuts at the first ':' even when it belongs to a digest; the message keeps that.
    remote = remainder.partition(":")[0]
    if remote.lower() != remote:
        raise InvalidReference(
            f"invalid reference format: repository name ({remote}) must be lowercase"
        )
    return _parse(f"{domain}/{remainder}")


def _parse(text: str) -> Reference:
    """``reference.Parse`` for a name that carries its domain."""
    if not text:
        raise InvalidReference("repository name must have at least one component")
    m = _REFERENCE_RE.fullmatch(text)
    if m is None:
        lowered = text.lower()
        if lowered != text and _REFERENCE_RE.fullmatch(lowered):
            raise InvalidReference("repository name must be lowercase")
        raise InvalidReference(ERR_INVALID_FORMAT)
    name, tag, digest = m.group(1), m.group(2), m.group(3)
    nm = _NAME_RE.fullmatch(name)
    assert nm is not None  # the reference regex already matched the same name grammar
    domain, path = nm.group(1) or "", nm.group(2)
    if len(path) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(
            f"repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters"
        )
    if digest is not None:
        _check_digest(digest)
    return Reference(domain, path, tag, digest)


def _check_digest(digest: str) -> None:
    """go-digest's ``Digest.Validate``, with its three messages."""
    algorithm, sep, encoded = digest.partition(":")
    if not algorithm or not sep or not encoded:
        raise InvalidReference("invalid checksum digest format")
    size = _DIGEST_HEX_LEN.get(algorithm)
    if size is None:
        if not _DIGEST_ANY_RE.fullmatch(digest):
            raise InvalidReference("invalid checksum digest format")
        raise InvalidReference("unsupported digest algorithm")
    if len(encoded) != size:
        raise InvalidReference("invalid checksum digest length")
    if not _DIGEST_HEX_RE.fullmatch(encoded):
        raise InvalidReference("invalid checksum digest format")


def is_image_id_like(text: str) -> bool:
    """True if ``text`` could name an image by ID: ``[sha256:]`` + 1 to 64 lowercase hex.

    Docker resolves a name first and an ID prefix second (``abc`` may be a repository),
    so callers look the text up as a reference before treating it as an ID prefix. A full
    64-hex ID is never a valid name (``Reference.parse`` refuses it).
    """
    return bool(_ID_PREFIX_RE.fullmatch(text))


def familiar_match(pattern: str, ref: Reference) -> bool:
    """``reference.FamiliarMatch``: the ``--filter reference=PATTERN`` test of ``images``.

    The pattern is a Go ``path.Match`` glob (``*`` and ``?`` never cross ``/``), tried on
    the familiar string (``busybox:latest``) and then on the familiar name (``busybox``).
    A malformed pattern raises InvalidArgument("syntax error in pattern").
    """
    rx = _go_glob(pattern)
    return bool(rx.fullmatch(ref.familiar) or rx.fullmatch(ref.repository))


def _go_glob(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            cls, i = _go_glob_class(pattern, i + 1)
            out.append(cls)
            continue
        elif c == "\\":
            i += 1
            if i >= n:
                raise InvalidArgument("syntax error in pattern")
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _go_glob_class(pattern: str, i: int) -> tuple[str, int]:
    """Translate a ``[^a-z]`` class starting after ``[``; return regex and next index."""
    negated = pattern.startswith("^", i)
    i += negated
    ranges: list[str] = []
    count = 0
    while True:
        if pattern.startswith("]", i) and count > 0:
            i += 1
            break
        lo, i = _go_glob_char(pattern, i)
        hi = lo
        if pattern.startswith("-", i):
            hi, i = _go_glob_char(pattern, i + 1)
        if lo <= hi:  # Go accepts an inverted range; it simply never matches
            ranges.append(re.escape(lo) + "-" + re.escape(hi))
        count += 1
    if not ranges:
        return ("(?s:.)" if negated else "(?!)"), i
    return "[" + ("^" if negated else "") + "".join(ranges) + "]", i


def _go_glob_char(pattern: str, i: int) -> tuple[str, int]:
    """Go's ``getEsc``: one possibly escaped class character; the class must go on."""
    if i >= len(pattern) or pattern[i] in "-]":
        raise InvalidArgument("syntax error in pattern")
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            raise InvalidArgument("syntax error in pattern")
    if i + 1 >= len(pattern):
        raise InvalidArgument("syntax error in pattern")
    return pattern[i], i + 1
