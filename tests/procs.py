"""Process checks for the no-orphan tests (Linux /proc)."""

from __future__ import annotations

import time
from pathlib import Path


def children(pid: int) -> list[int]:
    task = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in task.read_text().split()] if task.exists() else []


def running(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited; it only waits to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return False


def still_running(pids: list[int], within_s: float) -> list[int]:
    """The pids still running after waiting up to `within_s` for them to exit."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and any(running(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if running(p)]
