"""One exception type for problems the user can fix; the CLI prints it as one line."""


class AbawError(Exception):
    """A user-facing error: the message names the file/line/frame and what was expected.

    The CLI turns it into a one-line message and a non-zero exit (traceback only with --debug).
    """
