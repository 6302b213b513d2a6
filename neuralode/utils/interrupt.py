"""Stop training cleanly on Ctrl-C (SIGINT) or SIGTERM, at a point where nothing is half written.

Python turns SIGINT into a KeyboardInterrupt wherever the interpreter happens to be, including inside a
``__del__`` (where it is printed and discarded) or between a checkpoint write and its rename. Instead, the
handler below only records the signal; the trainer asks :meth:`StopSignals.check` at its safe points
(between batches, after a checkpoint) and raises :class:`Interrupted` there. A second signal while the first
is pending ends the process at once, by the signal's default action: every checkpoint is written
atomically, so even then the last complete one survives.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType, TracebackType

_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(Exception):
    """Training stopped on a signal at a safe point; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, where: str) -> None:
        self.signum = signum
        self.exit_code = _EXIT_CODES.get(signum, 128 + signum)
        super().__init__(f"stopped by {signal.Signals(signum).name} {where}")


class StopSignals:
    """Context manager: while active, SIGINT/SIGTERM request a stop instead of raising anywhere.

    Outside the main thread (where Python allows no handlers) it does nothing and signals act as usual.
    """

    def __init__(self) -> None:
        self.pending: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in _EXIT_CODES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.pending is not None:  # asked twice: the user wants out now
            print(f"\n{signal.Signals(signum).name} again: stopping now", file=sys.stderr, flush=True)
            # An exception raised here could land in a __del__ and be discarded; the default action cannot.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.pending = signum
        print(f"\n{signal.Signals(signum).name}: stopping at the next safe point (send it again to stop now)",
              file=sys.stderr, flush=True)

    def check(self, where: str) -> None:
        """Raise :class:`Interrupted` if a stop was requested; ``where`` says what is kept, for the message."""
        if self.pending is not None:
            raise Interrupted(self.pending, where)
