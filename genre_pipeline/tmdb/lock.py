"""One TMDb client per data folder at a time, held with an OS file lock.

Not Dagster's pool: a run killed with SIGKILL keeps its pool slot until someone deletes the run,
and every later run waits on it forever. The kernel releases a ``flock`` when its process dies,
however it dies, so a killed run can never block the next one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import time
from pathlib import Path
from typing import Callable, Iterator

POLL_S = 1.0  # waiting polls, sleeping in between: no spinning core, and SIGTERM still stops it


@contextlib.contextmanager
def exclusive(path: Path, *, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block; ``on_wait`` hears once who holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        announced = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if on_wait is not None and not announced:
                    handle.seek(0)
                    on_wait(handle.read().strip() or "another process")
                    announced = True
                time.sleep(POLL_S)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
