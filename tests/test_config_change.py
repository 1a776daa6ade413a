"""``import -c`` / ``commit -c``: applying change instructions to an image config.

Every expected value below was recorded from Docker 20.10 with
``docker import -c ... x.tar t; docker inspect -f '{{json .Config}}' t`` (or ``docker commit``
for the cases with a base config). Docker is not needed to run these tests. Deliberate
differences, each marked: STOPSIGNAL is accepted (20.10 rejects it, newer engines accept it),
HEALTHCHECK follows BuildKit (``--start-interval`` known, zero durations and ``--retries=0``
mean "default" instead of an error), flag errors use BuildKit's lower-case spelling.
"""

from __future__ import annotations

from typing import Any

import pytest

from shale.dockerfile import (
    apply_changes,
    apply_config_change,
    apply_config_changes,
    parse_instruction,
    parse_port_specs,
    parse_signal,
)
from shale.errors import DockerfileError


def _apply(*changes: str, base: dict[str, Any] | None = None) -> dict[str, Any]:
    config = dict(base or {})
    apply_changes(config, list(changes))
    return config


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (["ENV A=1", "CMD echo hi"], {"Env": ["A=1"], "Cmd": ["/bin/sh", "-c", "echo hi"]}),
        (
            ["ENV A=1 B=2", "ENV A=3", "ENV C $A-x", 'ENV D="q u" E=${A:-z}'],
            {"Env": ["A=3", "B=2", "C=3-x", "D=q u", "E=3"]},
        ),
        (["ENV A=1", "ENV A=5 B=$A"], {"Env": ["A=5", "B=1"]}),
        (
            ["ENV A=1", "ENV X='$A' Y=\"$A\" Z=\\$A W=a\\ b"],
            {"Env": ["A=1", "X=$A", "Y=1", "Z=$A", "W=a b"]},
        ),
        (['ENV X "a b"'], {"Env": ["X=a b"]}),
        (["ENV PATH=/x:$PATH"], {"Env": ["PATH=/x:"]}),
        (["WORKDIR rel", "WORKDIR sub"], {"WorkingDir": "/rel/sub"}),
        (["WORKDIR /a", "WORKDIR ../b/./c/"], {"WorkingDir": "/b/c"}),
        (["WORKDIR $HOME/x"], {"WorkingDir": "/x"}),
        (["WORKDIR a b"], {"WorkingDir": "/a b"}),
        (
            ["EXPOSE 80 443/udp 9000-9002/tcp 53/UDP"],
            {
                "ExposedPorts": {
                    "443/udp": {},
                    "53/udp": {},
                    "80/tcp": {},
                    "9000/tcp": {},
                    "9001/tcp": {},
                    "9002/tcp": {},
                }
            },
        ),
        (
            ["EXPOSE 8080/tcp 8080 [::1]:90:90/sctp"],
            {"ExposedPorts": {"8080/tcp": {}, "90/sctp": {}}},
        ),
        (["EXPOSE 0"], {"ExposedPorts": {"0/tcp": {}}}),
        (["EXPOSE 127.0.0.1:80:80"], {"ExposedPorts": {"80/tcp": {}}}),
        (["EXPOSE :80"], {"ExposedPorts": {"80/tcp": {}}}),
        (["VOLUME /data /x", 'VOLUME ["/j"]'], {"Volumes": {"/data": {}, "/j": {}, "/x": {}}}),
        (["VOLUME /a /a"], {"Volumes": {"/a": {}}}),
        (
            ['LABEL a=b "c d"=e', "LABEL legacy value here"],
            {"Labels": {"a": "b", "c d": "e", "legacy": "value here"}},
        ),
        (['LABEL "a b"="c\\"d" e=\'f g\''], {"Labels": {"a b": 'c"d', "e": "f g"}}),
        (['LABEL multi="a" b=c', "LABEL multi=z"], {"Labels": {"b": "c", "multi": "z"}}),
        (
            ["ONBUILD RUN echo hi", "  onbuild   copy . /x"],
            {"OnBuild": ["RUN echo hi", "copy . /x"]},
        ),
        (["ONBUILD FOO x"], {"OnBuild": ["FOO x"]}),
        (['ENTRYPOINT ["/bin/x"]', 'CMD ["a"]'], {"Entrypoint": ["/bin/x"], "Cmd": ["a"]}),
        (
            ['CMD ["a"]', "ENTRYPOINT /bin/x"],
            {"Entrypoint": ["/bin/sh", "-c", "/bin/x"], "Cmd": ["a"]},
        ),
        (
            ['CMD ["a", "b c"]', 'ENTRYPOINT echo "$X"'],
            {"Entrypoint": ["/bin/sh", "-c", 'echo "$X"'], "Cmd": ["a", "b c"]},
        ),
        (["ENTRYPOINT []"], {}),
        (["CMD []"], {}),
        (["cmd echo"], {"Cmd": ["/bin/sh", "-c", "echo"]}),
        (["USER a b"], {"User": "a b"}),
        (["USER ${NOPE:-nobody}"], {"User": "nobody"}),
        (
            [
                "ENV A=1",
                "USER $A:${A}0",
                "WORKDIR /w/$A",
                "LABEL l$A=v$A",
                'VOLUME /v$A ["/j$A"]',
                "EXPOSE 8$A",
            ],
            {
                "Env": ["A=1"],
                "User": "1:10",
                "WorkingDir": "/w/1",
                "Labels": {"l1": "v1"},
                "Volumes": {"/v1": {}, "[/j1]": {}},
                "ExposedPorts": {"81/tcp": {}},
            },
        ),
        (
            ["ENV A=1", 'VOLUME ["/j$A"]', "CMD echo $A", "ONBUILD RUN $A"],
            {
                "Env": ["A=1"],
                "Volumes": {"/j1": {}},
                "Cmd": ["/bin/sh", "-c", "echo $A"],
                "OnBuild": ["RUN $A"],
            },
        ),
        (
            ["HEALTHCHECK --interval=5s --retries=2 CMD curl x"],
            {
                "Healthcheck": {
                    "Test": ["CMD-SHELL", "curl x"],
                    "Interval": 5_000_000_000,
                    "Retries": 2,
                }
            },
        ),
        (["HEALTHCHECK NONE"], {"Healthcheck": {"Test": ["NONE"]}}),
        (['HEALTHCHECK CMD ["a","b"]'], {"Healthcheck": {"Test": ["CMD", "a", "b"]}}),
    ],
)
def test_recorded_from_docker(changes: list[str], expected: dict[str, Any]) -> None:
    assert _apply(*changes) == expected


_BASE = {"Cmd": ["base"], "Env": ["A=1", "B=2"]}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [  # docker commit -c ... on a container of an image with this base config
        (['ENTRYPOINT ["/y"]'], {"Env": ["A=1", "B=2"], "Entrypoint": ["/y"]}),
        (["ENV A=9"], {"Env": ["A=9", "B=2"], "Cmd": ["base"]}),
        (["WORKDIR rel"], {"Env": ["A=1", "B=2"], "Cmd": ["base"], "WorkingDir": "/rel"}),
        (
            ['CMD ["c"]', 'ENTRYPOINT ["/y"]'],
            {"Env": ["A=1", "B=2"], "Entrypoint": ["/y"], "Cmd": ["c"]},
        ),
    ],
)
def test_recorded_from_docker_commit(changes: list[str], expected: dict[str, Any]) -> None:
    assert _apply(*changes, base=_BASE) == expected


@pytest.mark.parametrize(
    ("change", "message"),
    [  # Docker 20.10's messages (flag errors: BuildKit's lower-case spelling)
        ("EXPOSE abc", "Invalid containerPort: abc"),
        ("EXPOSE 80/xyz", "Invalid proto: xyz"),
        ("EXPOSE 70000", "Invalid containerPort: 70000"),
        ("EXPOSE 5-3", "Invalid containerPort: 5-3"),
        ('VOLUME ""', "VOLUME specified can not be an empty string"),
        ('VOLUME [""]', "VOLUME specified can not be an empty string"),
        ("LABEL", "LABEL requires at least one argument"),
        ("LABEL =x", "LABEL names can not be blank"),
        ("LABEL a", "LABEL must have two arguments"),
        ("ENV a", "ENV must have two arguments"),
        ("WORKDIR", "WORKDIR requires exactly one argument"),
        ("USER", "USER requires exactly one argument"),
        ("ONBUILD", "ONBUILD requires at least one argument"),
        ("ONBUILD ONBUILD RUN x", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
        ("ONBUILD FROM x", "FROM isn't allowed as an ONBUILD trigger"),
        ("HEALTHCHECK --start-period=1us CMD x", 'Interval "start-period" cannot be less than 1ms'),
        ("HEALTHCHECK --foo=1s CMD x", "unknown flag: foo"),
        ("HEALTHCHECK FOO x", 'Unknown type "FOO" in HEALTHCHECK (try CMD)'),
        ("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments"),
        ("HEALTHCHECK CMD", "Missing command after HEALTHCHECK CMD"),
        ("HEALTHCHECK", "HEALTHCHECK requires at least one argument"),
        ("CMD --foo echo", "unknown flag: foo"),
        ("RUN x", "run is not a valid change command"),
        ("STOPSIGNAL a b", "Invalid signal: a b"),
    ],
)
def test_errors(change: str, message: str) -> None:
    with pytest.raises(DockerfileError) as info:
        _apply(change)
    assert str(info.value) == message


def test_deliberate_differences_from_docker_20_10() -> None:
    assert _apply("STOPSIGNAL SIGKILL") == {"StopSignal": "SIGKILL"}  # 20.10: not a change
    assert _apply("HEALTHCHECK --retries=0 --interval=0s --start-interval=2s CMD x") == {
        "Healthcheck": {"Test": ["CMD-SHELL", "x"], "StartInterval": 2_000_000_000}
    }


def test_a_failing_batch_changes_nothing() -> None:
    config: dict[str, Any] = {"Env": ["A=1"]}
    with pytest.raises(DockerfileError):
        apply_changes(config, ["ENV B=2", "EXPOSE nope"])
    assert config == {"Env": ["A=1"]}


def test_single_instruction_api() -> None:
    config: dict[str, Any] = {"Cmd": ["old"], "Shell": ["/bin/bash", "-c"]}
    apply_config_change(config, parse_instruction("ENTRYPOINT run.sh"), cmd_set=True)
    assert config == {
        "Cmd": ["old"],
        "Shell": ["/bin/bash", "-c"],
        "Entrypoint": ["/bin/bash", "-c", "run.sh"],
    }
    apply_config_change(config, parse_instruction("ENTRYPOINT run.sh"))
    assert "Cmd" not in config
    apply_config_changes(config, [parse_instruction("CMD x"), parse_instruction("ENTRYPOINT []")])
    assert config == {"Shell": ["/bin/bash", "-c"], "Cmd": ["/bin/bash", "-c", "x"]}


def test_escape_token_is_used_for_expansion() -> None:
    config: dict[str, Any] = {"Env": ["A=1"]}
    apply_config_change(config, parse_instruction("LABEL x=`$A\\$A"), escape="`")
    assert config["Labels"] == {"x": "$A\\1"}


def test_port_specs_and_signals() -> None:
    assert parse_port_specs(["8000-8002/udp", "80", "80/tcp", "1-2-3"]) == [
        "1/tcp",
        "2/tcp",
        "80/tcp",
        "8000/udp",
        "8001/udp",
        "8002/udp",
    ]
    with pytest.raises(DockerfileError, match="Invalid ip address: nope"):
        parse_port_specs(["nope:80:80"])
    with pytest.raises(DockerfileError, match="No port specified: 80:<empty>"):
        parse_port_specs(["80:"])
    assert parse_port_specs(["80-81:90"]) == ["90/tcp"]  # recorded from Docker 20.10
    with pytest.raises(DockerfileError, match="Invalid ranges specified for container and host"):
        parse_port_specs(["90:80-81"])
    assert parse_signal("SIGTERM") == 15 == parse_signal("term") == parse_signal("15")
    assert parse_signal("RTMIN+3") == 37 and parse_signal("SIGRTMAX") == 64
    for bad in ("0", "SIGNOPE", "", "1.5"):
        with pytest.raises(DockerfileError, match="Invalid signal"):
            parse_signal(bad)
