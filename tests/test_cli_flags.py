"""Docker's boolean flags: bare, ``=true`` or ``=false``; a bare one never swallows the
next word (``build --pull CONTEXT``, ``commit -p CTR IMAGE``, ``run --sig-proxy IMAGE``)."""

from __future__ import annotations

import pytest
from conftest import Cli

from shale.cli import UsageError, build_parser


def parse(*argv: str) -> dict[str, object]:
    return vars(build_parser(argv[0]).parse_args(list(argv)))


def test_bare_and_valued_forms() -> None:
    ns = parse("build", "--pull", "--rm", "ctx")
    assert (ns["pull"], ns["rm"], ns["context"]) == (True, True, "ctx")
    ns = parse("build", "ctx", "--pull=false", "--rm=FALSE", "--no-cache=1", "-q=t")
    assert (ns["pull"], ns["rm"], ns["no_cache"], ns["quiet"]) == (False, False, True, True)
    ns = parse("build", "--force-rm=true", "ctx")
    assert ns["force_rm"] is True and parse("build", "ctx")["rm"] is True
    ns = parse("commit", "-p", "ctr", "img")
    assert (ns["pause"], ns["container"]) == (True, "ctr")
    assert parse("commit", "--pause=false", "ctr")["pause"] is False
    ns = parse("run", "--sig-proxy", "busybox", "true")
    assert (ns["sig_proxy"], ns["image"]) == (True, "busybox")
    assert parse("run", "--sig-proxy=0", "busybox")["sig_proxy"] is False
    # after "--" nothing is rewritten
    assert parse("run", "busybox", "--", "--sig-proxy=false")["sig_proxy"] is True


def test_a_bad_value_is_a_usage_error(cli: Cli) -> None:
    with pytest.raises(UsageError, match='invalid argument "maybe" for "--pull" flag'):
        parse("build", "--pull=maybe", "ctx")
    res = cli("build", "--rm=nope", ".")
    assert res.code == 125 and "strconv.ParseBool" in res.err
