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
