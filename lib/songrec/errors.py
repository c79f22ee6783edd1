"""Errors that reach the user as one clear line (the jobs print them without a traceback)."""


class SongrecError(Exception):
    """A problem the user can fix: bad input, bad config, missing upstream output."""


class InputError(SongrecError):
    """An input file or table is missing, empty or malformed; the message names the file and problem."""


def first_line(text: str, limit: int = 300) -> str:
    """The first non-blank line of ``text`` (an exception message), cut to ``limit`` characters."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."
