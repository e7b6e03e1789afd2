"""Stopping a training run on SIGINT / SIGTERM: cleanly when the step returns, in bounded time when not.

A Python signal handler runs only between bytecodes of the main thread, so a training step stuck
inside a native kernel (a oneDNN convolution that never returns, ``docs/troubleshooting.md``) would
never see it: the process would ignore SIGTERM until the scheduler's SIGKILL. Here the signal also
wakes a watchdog thread (``signal.set_wakeup_fd`` writes the signal number from C, whatever the
main thread is doing). If the trainer has not taken up the request within a grace period, the
watchdog prints what was saved and how to resume, and ends the process.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
from typing import Callable

#: A step may take this long after a stop signal before the run is ended without it; the grace
#: grows to three times the slowest step seen so far (large 3D patches on a CPU).
STOP_GRACE_S = 60.0
#: After a second signal, how long the main thread has to act on it before the watchdog does.
SECOND_SIGNAL_WAIT_S = 2.0


class StopSignals:
    """While active, SIGINT and SIGTERM only set ``signum``: the trainer finishes its current step,
    saves ``checkpoint_latest.pt`` and returns, calling :meth:`acknowledge` once it has seen the
    request. Without that acknowledgement within the grace period, or on a second signal while the
    main thread is stuck, the process ends with a message built by ``describe_saved`` and exit
    status 128 + the signal's number. A second signal to a responsive main thread restores the
    previous handler and is delivered again, so it stops the process at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, describe_saved: Callable[[], str] = lambda: "", grace_s: float | None = None):
        self.signum: int | None = None
        self.describe_saved = describe_saved
        self.grace_s = STOP_GRACE_S if grace_s is None else grace_s
        self.slowest_step_s = 0.0
        self._acknowledged = threading.Event()
        self._previous: dict = {}
        self._previous_wakeup: int | None = None
        self._sockets: tuple[socket.socket, socket.socket] | None = None
        self._watchdog: threading.Thread | None = None

    # -- the trainer's side ----------------------------------------------------------------------
    def note_step(self, seconds: float) -> None:
        self.slowest_step_s = max(self.slowest_step_s, seconds)

    def acknowledge(self) -> None:
        """The main thread saw the request and is stopping cleanly: no forced exit."""
        self._acknowledged.set()

    def grace(self) -> float:
        return max(self.grace_s, 3 * self.slowest_step_s)

    # -- installation ----------------------------------------------------------------------------
    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self  # signals go to the main thread only; whoever runs us there handles them
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        self._sockets = (reader, writer)
        self._previous_wakeup = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self._watchdog = threading.Thread(target=self._watch, name="ahnet-stop-watchdog", daemon=True)
        self._watchdog.start()
        return self

    def _handle(self, signum, frame) -> None:  # no printing here: it could re-enter a busy stderr
        if self.signum is None:
            self.signum = signum
            return
        self._restore()
        signal.raise_signal(signum)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
        if self._sockets is not None:
            signal.set_wakeup_fd(self._previous_wakeup if self._previous_wakeup is not None else -1)
            self._sockets[1].close()  # the watchdog reads end-of-file and returns

    def __exit__(self, *exc) -> None:
        self._restore()
        if self._watchdog is not None:
            self._watchdog.join()
            self._watchdog = None
        if self._sockets is not None:
            self._sockets[0].close()
            self._sockets = None

    # -- the watchdog thread ---------------------------------------------------------------------
    def _watch(self) -> None:
        reader = self._sockets[0]
        first: int | None = None  # the first stop signal, then the grace it was given
        grace = deadline = 0.0
        while True:
            waiting = first is not None and not self._acknowledged.is_set()
            ready, _, _ = select.select([reader], [], [], max(0.0, deadline - time.monotonic()) if waiting else None)
            if not ready:
                if not self._acknowledged.is_set():
                    self._end(first, f"the training step in progress did not return within {grace:.0f} s")
                continue
            data = reader.recv(64)
            if not data:
                return
            for signum in data:
                if signum not in self.SIGNALS:
                    continue
                if first is None:
                    first, grace = signum, self.grace()
                    deadline = time.monotonic() + grace
                elif not self._acknowledged.is_set() and not self._handled_in_time(reader):
                    self._end(signum, "a second signal arrived while the training step was still running")

    @staticmethod
    def _handled_in_time(reader: socket.socket) -> bool:
        """A main thread that can still run Python handlers restores the previous handler on a
        second signal and closes the wakeup socket: then that handler stops the process."""
        ready, _, _ = select.select([reader], [], [], SECOND_SIGNAL_WAIT_S)
        return bool(ready) and not reader.recv(64, socket.MSG_PEEK)

    def _end(self, signum: int, why: str) -> None:
        name = signal.Signals(signum).name
        saved = self.describe_saved()
        message = (f"\nahnet: stopping on {name}: {why} (a native kernel that hangs? see "
                   f"docs/troubleshooting.md). {saved}\n")
        os.write(2, message.encode())
        os._exit(128 + signum)
