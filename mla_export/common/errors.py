"""The exception types for user-facing errors: each message says what was wrong and what to do."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (file, option, checkpoint, environment); the CLI prints it and exits 1."""


class FieldError(UserError):
    """A bad value of a named field of a spec or config (`max_seq_len`, `num_layers`, ...).

    Core code names the field; the CLI, which knows which option set it, names the option instead.
    """

    def __init__(self, field: str, value, expected: str):
        self.field, self.value, self.expected = field, value, expected
        super().__init__(f"{field}={value!r}: {expected}")
