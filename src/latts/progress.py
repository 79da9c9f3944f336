"""How a long workflow (an evaluation, ``optimize``, the server's start-up) tells its caller what it is doing.

The workflows in the library never print: they call a :class:`Reporter`, which the command line turns
into lines and progress bars on stderr, and which a Python caller can leave quiet or log as it likes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from latts.backends import Opened

# progress(done, total, record): see latts.eval.harness.evaluate (record is None at the start)
ProgressFn = Callable[[int, int, "dict[str, Any] | None"], None]


class Reporter:
    """The hooks a workflow calls as it goes; this base class ignores them all (a quiet run)."""

    def opened(self, opened: Opened) -> None:
        """The backend is loaded (or reached) and warmed up: nothing after this counts its start-up time."""

    def note(self, message: str) -> None:
        """A line worth telling the user: what is about to happen and why."""

    @contextmanager
    def progress(self, title: str) -> Iterator[ProgressFn | None]:
        """A ``progress`` callback for :func:`latts.eval.harness.evaluate` while the block runs (None: none)."""
        yield None
