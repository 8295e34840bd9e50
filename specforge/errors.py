"""User-facing errors.

A :class:`SpecforgeError` carries one line that says what was wrong and what to do.
The CLI prints it (without a traceback) and exits with status 2.
"""


class SpecforgeError(Exception):
    """An error caused by user input or environment, with a one-line actionable message."""

    exit_code = 2
