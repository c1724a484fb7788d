"""The one exception type for user-facing errors: its message says what was wrong and what to do."""


class UserError(Exception):
    """Bad input from the user (file, option, checkpoint, environment); the CLI prints it and exits 1."""
