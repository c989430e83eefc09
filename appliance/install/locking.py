"""One install at a time per prefix, and the test hooks that kill or pause an install mid-way.

The lock is an flock on PREFIX/.install.lock. Children (uv, pip, dpkg) inherit its fd,
so after a kill -9 the lock is held until they have exited too: the next install waits
for them instead of deleting a directory they are still writing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Callable, Iterator

from appliance.install.errors import InstallBusy
from appliance.paths import Layout

LOCK_NAME = ".install.lock"
LOCK_WAIT_ENV = "ENCLAVE_LOCK_WAIT"
DEFAULT_WAIT_S = 300.0

KILL_ENV = "ENCLAVE_TEST_KILL_AT"
"""Test hook: `ENCLAVE_TEST_KILL_AT=PHASE` makes the install SIGKILL itself at PHASE
(`verified`, `venv`, `models`, `switch`), so the crash-safety tests can kill it exactly
there. It only ever makes an install die; it never skips a check."""
KILL_PHASES = ("verified", "venv", "models", "switch")
STOP_ENV = "ENCLAVE_TEST_STOP_AT"
"""Test hook: `ENCLAVE_TEST_STOP_AT=PHASE` makes the install SIGSTOP itself at PHASE, so a
test can change the world right there (swap a file on the bundle media after verification)
and SIGCONT it. Like the kill hook, it only ever pauses an install; it never skips a check."""


def kill_point(phase: str) -> None:
    if os.environ.get(KILL_ENV) == phase:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(STOP_ENV) == phase:
        os.kill(os.getpid(), signal.SIGSTOP)


@contextlib.contextmanager
def prefix_lock(layout: Layout, on_wait: Callable[[], None] | None = None) -> Iterator[int]:
    """Hold the prefix's install lock; yields its fd (pass it to children)."""
    layout.prefix.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.prefix / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        wait = float(os.environ.get(LOCK_WAIT_ENV, DEFAULT_WAIT_S))
        deadline = time.monotonic() + wait
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise InstallBusy(
                        f"{layout.prefix / LOCK_NAME}: another install (or its uv/pip) still holds the lock "
                        f"after {wait:.0f}s"
                    ) from None
                if not told and on_wait is not None:
                    on_wait()
                    told = True
                time.sleep(0.2)
        yield fd
    finally:
        os.close(fd)
