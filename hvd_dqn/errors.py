"""Errors a user can act on. The CLI prints them as one line and exits with code 2, never a traceback."""


class UserError(Exception):
    """A mistake in the user's input (config, env id, paths). Its message names the problem in one line."""

    exit_code = 2
