"""Errors that reach the user as one clear paragraph (exit code 2), never as a traceback."""

from __future__ import annotations

from collections.abc import Iterable


class UserError(Exception):
    """A mistake in what the user asked for: bad flag value, missing file, unknown model.

    The CLI prints the message alone and exits with code 2. The message states the rule, echoes
    the value, and offers the fix.
    """


class ConfigError(UserError):
    """Every problem found in one configuration (a search-space file, a recipe), raised once.

    ``problems`` holds one line per problem, each naming the file, key, and line where known.
    """

    def __init__(self, source: str, problems: Iterable[str]) -> None:
        self.source = source
        self.problems = list(problems)
        count = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {count} problem{'s' if count != 1 else ''}:\n{lines}")
