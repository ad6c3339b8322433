"""The one exception type whose message is shown to the user as is."""


class MidigenError(Exception):
    """A problem with the user's input or environment, explained in one line.

    The CLI prints its message (no traceback) and exits with status 2.
    """
