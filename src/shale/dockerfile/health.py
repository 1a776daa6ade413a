"""HEALTHCHECK options to Docker's ``Healthcheck`` config object (BuildKit's parseHealthcheck).

Kept apart from ``parser.py`` because both the parser (to reject bad options early, as
BuildKit does) and ``config.py`` (to apply ``commit -c 'HEALTHCHECK ...'``) need it.
"""

from __future__ import annotations

from shale.dockerfile._go import atoi, parse_duration

__all__ = ["HEALTHCHECK_FLAGS", "MINIMUM_DURATION_NS", "healthcheck_config"]

HEALTHCHECK_FLAGS = ("interval", "timeout", "start-period", "start-interval", "retries")
MINIMUM_DURATION_NS = 1_000_000
"""Docker's ``container.MinimumDuration`` (1ms); 0 means "use the default"."""

_DURATION_KEYS = {
    "interval": "Interval",
    "timeout": "Timeout",
    "start-period": "StartPeriod",
    "start-interval": "StartInterval",
}


def _interval(name: str, value: str) -> int:
    if value == "":
        return 0
    nanos = parse_duration(value)
    if nanos == 0:
        return 0
    if nanos < MINIMUM_DURATION_NS:
        raise ValueError(f'Interval "{name}" cannot be less than 1ms')
    return nanos


def healthcheck_config(
    args: list[str], is_json: bool, flags: dict[str, list[str]]
) -> dict[str, object]:
    """The ``Healthcheck`` object for ``HEALTHCHECK [flags] NONE|CMD ...``.

    ``args`` are the parser's (type first, then the command). Zero durations and retries are
    left out, as Docker's JSON does (``omitempty``). Raises ValueError with BuildKit's message.
    """
    if not args:
        raise ValueError("HEALTHCHECK requires at least one argument")
    kind = args[0].upper()
    rest = args[1:]
    if kind == "NONE":
        if rest:
            raise ValueError("HEALTHCHECK NONE takes no arguments")
        return {"Test": ["NONE"]}
    if kind != "CMD":
        raise ValueError(f'Unknown type "{kind}" in HEALTHCHECK (try CMD)')
    command = rest if is_json else [" ".join(rest)] if rest else []
    if not command:
        raise ValueError("Missing command after HEALTHCHECK CMD")
    config: dict[str, object] = {"Test": ["CMD" if is_json else "CMD-SHELL", *command]}
    for flag, key in _DURATION_KEYS.items():
        nanos = _interval(flag, _last(flags, flag))
        if nanos:
            config[key] = nanos
    retries_text = _last(flags, "retries")
    if retries_text:
        retries = atoi(retries_text, 32)
        if retries < 0:
            raise ValueError(f"--retries cannot be negative ({retries})")
        if retries:
            config["Retries"] = retries
    return config


def _last(flags: dict[str, list[str]], name: str) -> str:
    values = flags.get(name)
    return values[-1] if values else ""
