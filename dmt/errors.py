"""User mistakes: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input, config or file. The message names the bad value and what is allowed."""
