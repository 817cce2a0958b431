"""Replace a file in one step: a reader (or a crash) sees the old file or the new one, never half."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def write_text_atomic(path: Path, text: str | Iterable[str], *, mode: int | None = None,
                      fsync: bool = False) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`. The temporary
    file is in the same directory so the rename stays on one file system; it is removed if the
    write fails. Files are owner-only (0600, as mkstemp makes them) unless `mode` says otherwise:
    what psyjudge writes quotes the chat logs it judges. The directory must exist. `text` may be
    an iterable of chunks, so that a large file is streamed rather than built in memory."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace", newline="\n") as handle:
            if isinstance(text, str):
                handle.write(text)
            else:
                handle.writelines(text)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


PRIVATE_DIR_MODE = 0o700


def ensure_private_dir(path: Path, *, enforce: bool = False) -> Path:
    """Create `path`, and any missing parent, owner-only (0700), and return it.

    mkdir's mode is masked by the umask (022 leaves 0755 on a plain mkdir), so every folder made
    here is chmodded after it is made. A folder that already existed is left as its owner set it
    (a shared `reports/` folder, a home directory): psyjudge tightens only what it creates, unless
    `enforce` says the folder is psyjudge's own whoever made it (the judge cache)."""
    path = path.expanduser()
    missing: list[Path] = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by another process: not ours to tighten
        os.chmod(folder, PRIVATE_DIR_MODE)
    if not path.is_dir():
        raise NotADirectoryError(f"{path}: not a folder")
    if enforce:
        os.chmod(path, PRIVATE_DIR_MODE)
    return path


def append_line(path: Path, line: str) -> int:
    """Append one line (a newline is added) with a single O_APPEND write, creating the file 0600, and
    return the offset where the line starts. Whole-line appends are not interleaved by the kernel, so
    several processes can share the file, and a kill loses at most the line being written."""
    data = (line + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        written = os.write(fd, data)
        while written < len(data):  # regular files write whole, but never assume it
            written += os.write(fd, data[written:])
        return os.lseek(fd, 0, os.SEEK_CUR) - len(data)
    finally:
        os.close(fd)


def cut_torn_tail(path: Path) -> int:
    """Cut off a last line left without its newline by a kill mid-write (it is not a record), so that
    the next append starts on a clean line; the number of bytes cut (0 when none or no file)."""
    if not path.exists():
        return 0
    with open(path, "rb+") as handle:
        data = handle.read()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        handle.truncate(keep)
        return len(data) - keep
