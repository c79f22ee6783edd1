"""Errors that reach the user as one clear line (the jobs print them without a traceback)."""


class SongrecError(Exception):
    """A problem the user can fix: bad input, bad config, missing upstream output."""


class InputError(SongrecError):
    """An input file or table is missing, empty or malformed; the message names the file and problem."""
