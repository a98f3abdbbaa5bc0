"""One exception type for problems the user can fix, and the one-line text of machine faults;
the CLI prints either as one line."""

import errno


class AbawError(Exception):
    """A user-facing error: the message names the file/line/frame and what was expected.

    The CLI turns it into a one-line message and a non-zero exit (traceback only with --debug).
    """


def environment_error_message(exc: OSError) -> str:
    """One line for a fault of the machine rather than of the input (disk full, read-only
    folder, a path under a file...): what failed, where, and that a rerun is safe.

    Why a rerun is safe: every output is written to a temporary file and renamed, and long jobs
    resume from what they finished, so the fault cost time, not results.
    """
    where = exc.filename or "a file"
    if exc.filename2:
        where = f"{exc.filename} -> {exc.filename2}"
    advice = {
        errno.ENOSPC: "free some space (or use another --work/--out) and rerun the same command",
        errno.EDQUOT: "free some space (or use another --work/--out) and rerun the same command",
        errno.EROFS: "the file system is read-only: choose a writable --work/--out",
        errno.EACCES: "no permission: choose a folder you can write, or fix its permissions",
        errno.EPERM: "no permission: choose a folder you can write, or fix its permissions",
        errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
        errno.EEXIST: "a file is in the way of a folder: choose another path",
        errno.ENOENT: "the path does not exist: check the spelling",
        errno.EISDIR: "expected a file, got a folder",
    }.get(exc.errno or -1, "check the path and rerun the same command")
    reason = exc.strerror or type(exc).__name__
    return (f"{reason} ({where}); {advice}; finished work is kept and a rerun resumes where "
            "it stopped")


def quote_line(text: str) -> str:
    """A line as quoted in error messages: short, visible when empty, and with invisible
    characters escaped (a byte order mark shows as \\ufeff), so a line that looks like the
    expected one shows where it differs."""
    if not text:
        return "an empty line"
    shown = "".join(c if c == " " or (c.isprintable() and not c.isspace())
                    else c.encode("unicode_escape").decode("ascii") for c in text[:80])
    quoted = f"'{shown}...'" if len(text) > 80 else f"'{shown}'"
    if "\ufeff" in text:
        quoted += " (\\ufeff is a byte order mark: remove it, or save the file as plain UTF-8)"
    return quoted
