"""The one exception type for errors a user can cause."""


class SocmapError(Exception):
    """Bad input or params: the message names the file, row, band, year or key and what is valid.

    The CLI prints it on one line without a traceback and exits non-zero.
    """
