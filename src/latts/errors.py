"""The one exception type latts raises for bad input or unusable files."""


class LattsError(Exception):
    """A problem the user can fix (bad argument, missing file, unsupported model), said in one line."""
