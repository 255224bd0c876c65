"""The one exception type for mistakes a user can fix."""


class UserError(Exception):
    """A problem with the user's input or environment: main.py prints the message alone and exits with code 2."""


class Terminated(BaseException):
    """SIGTERM arrived (cluster walltime, scancel, kill): unwinds like Ctrl-C so that the run is marked failed."""
