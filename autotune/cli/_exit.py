"""The exit codes of every ``autotune`` command, one place (README.md's table lists them).

A script can act on them: ``0`` a result (a winner, a written file), ``2`` fix the command or
its input, ``3`` it ran but nothing reached the target (change the target, the time, the
space), ``130`` interrupted (resume it). Anything else, ``1`` with a traceback, is a bug.
"""

EXIT_OK = 0
"""A winner was found (``search``); the command did what it was asked (the others)."""
EXIT_BUG = 1
"""An unexpected error (Python's own code for an uncaught exception, with its traceback)."""
EXIT_USER_ERROR = 2
"""A usage or input error: a bad flag (argparse's code too), space, recipe, task, path, or a
``--logger`` whose library is not installed; one paragraph on stderr says what to fix."""
EXIT_NO_WINNER = 3
"""The search ran but no recipe reached the target (``autotune train``: the recipe did not);
the records are written, and stderr says why and what to change."""
EXIT_INTERRUPTED = 130
"""Ctrl-C or SIGTERM (128 + SIGINT, the shell's convention); ``--resume`` continues."""
