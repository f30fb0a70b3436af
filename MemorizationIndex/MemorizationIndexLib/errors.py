"""Errors that mean the user gave bad input (shown as one line, exit code 2)."""


class UserError(Exception):
    """A problem with the user's input: the message says what is wrong and what to do."""
