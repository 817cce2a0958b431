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
