"""The one exception type latts raises for bad input or unusable files, and the engine's own signal that a
deadline passed inside a forward."""


class LattsError(Exception):
    """A problem the user can fix (bad argument, missing file, unsupported model), said in one line."""


class DeadlineReached(Exception):
    """A request's deadline passed inside a forward (the prompt's prefill), which was abandoned there: the
    engine returns the request cut by its deadline. Never reaches a user."""
