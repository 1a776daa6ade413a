"""The one error tree of shale.

Every failure that reaches a user is a ``ShaleError``; the CLI prints its message on one line
and exits with its ``exit_code`` (docker's codes). Nothing below the CLI returns ``False`` for
a failure: it raises one of these.

::

    ShaleError (125: engine error)
     +-- NotFound                 image, container, blob, snapshot, volume, tag missing
     +-- AlreadyExists            name taken; content writers treat it as dedupe, not failure
     +-- InvalidArgument          bad flag value, bad reference, bad Dockerfile line
     |    +-- InvalidReference    docker's "invalid reference format" family
     |    +-- DockerfileError     parse error naming file and line
     +-- Conflict                 ambiguous prefix, state does not allow the operation (exit 1)
     |    +-- InUse               image used by a container, snapshot with children (exit 1)
     +-- DataError                corrupt or hostile input: archives, tars, manifests
     |    +-- DigestMismatch      content does not hash to what it was announced as
     |    +-- UnsafePath          a tar entry or path that would leave its root
     +-- Unsupported              kernel or host lacks what is needed (overlay, openat2, ...)
     +-- LimitExceeded            overlay lower-dir limit and similar hard limits
     +-- RegistryError            distribution API failures (auth, HTTP status, protocol)
     +-- RuntimeFailure           container could not be started (exit 125)
          +-- CannotExecute       entrypoint not executable (126)
          +-- CommandNotFound     entrypoint not found (127)
"""

from __future__ import annotations


class ShaleError(Exception):
    """Base of every error shale raises on purpose. ``exit_code`` is what the CLI returns."""

    exit_code: int = 125

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotFound(ShaleError):
    pass


class AlreadyExists(ShaleError):
    pass


class InvalidArgument(ShaleError):
    pass


class InvalidReference(InvalidArgument):
    pass


class DockerfileError(InvalidArgument):
    pass


class Conflict(ShaleError):
    exit_code = 1


class InUse(Conflict):
    pass


class DataError(ShaleError):
    pass


class DigestMismatch(DataError):
    pass


class UnsafePath(DataError):
    pass


class Unsupported(ShaleError):
    pass


class LimitExceeded(ShaleError):
    pass


class RegistryError(ShaleError):
    exit_code = 1  # docker pull/push/login exit 1 on every registry failure


class RuntimeFailure(ShaleError):
    pass


class CannotExecute(RuntimeFailure):
    exit_code = 126


class CommandNotFound(RuntimeFailure):
    exit_code = 127
