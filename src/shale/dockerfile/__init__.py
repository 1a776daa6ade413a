"""The Dockerfile language: parsing, word expansion, .dockerignore, config changes.

Pure code over text: nothing here touches the filesystem, the network or an image store.

- ``parse(text, filename)`` -> ``Dockerfile`` (directives, instructions, meta args, stages).
- ``parse_ast`` -> BuildKit's line-level AST, whose ``dump()`` matches BuildKit's test files.
- ``Lexer`` / ``process_word`` / ``process_words``: BuildKit's ``$VAR`` expansion.
- ``Matcher``: .dockerignore matching (moby/patternmatcher).
- ``parse_instruction`` / ``parse_changes`` / ``apply_config_change`` / ``apply_changes``:
  ``docker import -c`` and ``docker commit -c``.
"""

from shale.dockerfile.config import (
    DEFAULT_SHELL,
    apply_changes,
    apply_config_change,
    apply_config_changes,
    parse_port_specs,
    parse_signal,
)
from shale.dockerfile.health import healthcheck_config
from shale.dockerfile.ignore import Matcher, Pattern, read_dockerignore
from shale.dockerfile.parser import (
    CHANGE_COMMANDS,
    Dockerfile,
    Instruction,
    Stage,
    parse,
    parse_changes,
    parse_instruction,
)
from shale.dockerfile.shell import (
    Expansion,
    ExpansionError,
    Lexer,
    ProcessWord,
    ProcessWords,
    process_word,
    process_word_with_matches,
    process_words,
)
from shale.dockerfile.syntax import AstResult, DockerfileParseError, Heredoc, Node, parse_ast

__all__ = [
    "CHANGE_COMMANDS",
    "DEFAULT_SHELL",
    "AstResult",
    "Dockerfile",
    "DockerfileParseError",
    "Expansion",
    "ExpansionError",
    "Heredoc",
    "Instruction",
    "Lexer",
    "Matcher",
    "Node",
    "Pattern",
    "ProcessWord",
    "ProcessWords",
    "Stage",
    "apply_changes",
    "apply_config_change",
    "apply_config_changes",
    "healthcheck_config",
    "parse",
    "parse_ast",
    "parse_changes",
    "parse_instruction",
    "parse_port_specs",
    "parse_signal",
    "process_word",
    "process_word_with_matches",
    "process_words",
    "read_dockerignore",
]
