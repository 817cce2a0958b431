"""A JSON-only disk cache for judge replies.

Why not diskcache: it unpickles stored values by default (CVE-2025-69872), so a planted cache file
could run code. Here every entry is a JSON document and nothing is ever unpickled. The directory is
owner-only (0700) and entries are 0600, because cached replies quote the chat logs being judged.
Writes go to a temporary file and are renamed into place, so a crash never leaves half an entry.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from judge.atomic import ensure_private_dir, write_text_atomic
from judge.schema import sha256_json

CACHE_DIR_ENV = "PSYJUDGE_CACHE_DIR"


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "psyjudge" / "judge"


def cache_key(**parts: Any) -> str:
    """The key is a hash of everything that changes the answer (model, messages, parameters,
    rubric id@version). Callers leave out what does not: concurrency, retries, timeouts."""
    return sha256_json(parts)


class JsonCache:
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = (directory or default_cache_dir()).expanduser()
        # The cache is psyjudge's own folder whoever made it: 0700 is enforced, not only on creation.
        ensure_private_dir(self.directory, enforce=True)
        self._made: set[Path] = set()

    def _path(self, key: str) -> Path:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"cache key must be a sha256 hex digest, got {key!r}")
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            # A damaged entry is a miss, not a crash; it is overwritten by the next good reply.
            return None
        return data if isinstance(data, dict) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self._path(key)
        if path.parent not in self._made:
            ensure_private_dir(path.parent)
            self._made.add(path.parent)
        # dumps uses the C encoder (dump() does not); entries quote chat logs, so they are 0600.
        write_text_atomic(path, json.dumps(value, ensure_ascii=False))
