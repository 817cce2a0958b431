"""The studio's version store: save a rubric as a new version, list its history, restore an old one.

Every save of `<root>/<id>/rubric.yaml` goes through here, so that a clinician's edit is never lost
and never half-written, and two people editing one rubric cannot silently overwrite each other:

- the editor sends the sha256 of the file it loaded; a save against a file that changed since then
  is refused (StaleVersion) and nothing is written;
- every version is kept whole in `versions/<version>.yaml`, with its record (who, when, why) in
  `versions/<version>.json`; `CHANGELOG.md` beside the rubric is regenerated from those records;
- each file is replaced in one step (judge.atomic), and rubric.yaml is written after the snapshot,
  so a crash leaves either the old version in force or the new one fully recorded. A snapshot newer
  than rubric.yaml (a crash between the two) is not history: it is ignored and overwritten later.

Ids and versions come from a web form. An id becomes a path only in `RubricStore.folder`, and a
version only after it matches the version pattern; anything else is answered as "not found" without
saying where on disk the studio looked.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, ValidationError, field_validator
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, LiteralScalarString

from judge.atomic import write_text_atomic
from judge.rubrics import RUBRIC_FILE, DefinitionError, load_yaml
from judge.schema import Strict
from judge.studio.yamledit import set_fields

log = logging.getLogger(__name__)

VERSIONS_DIR = "versions"
CHANGELOG_FILE = "CHANGELOG.md"
LOCK_FILE = ".studio.lock"
BUMPS = ("patch", "minor", "major")
MAX_NOTE_CHARS = 2000
MAX_AUTHOR_CHARS = 100
MAX_TEXT_CHARS = 2_000_000  # the largest built-in rubric is ~40 kB; this only stops a runaway form
FIRST_BASELINE_NOTE = "Version before the first studio save"
OUTSIDE_NOTE = "Version edited outside the studio"

# fullmatch with ASCII classes: `$` would accept a trailing newline and `\d` any script's digits.
_ID = re.compile(r"[a-z][a-z0-9_]{0,63}", re.ASCII)
_VERSION = re.compile(r"[0-9]{1,9}\.[0-9]{1,9}(?:\.[0-9]{1,9})?", re.ASCII)
_VersionText = Annotated[str, StringConstraints(pattern=f"^{_VERSION.pattern}$")]
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_LINE_BREAKS = re.compile(r"\r\n?|[\x85\u2028\u2029]")  # YAML and str.splitlines break lines at these too
_NOT_ONE_LINE = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


class StoreError(Exception):
    """A save, read or restore that cannot be done; `message` is written for a clinician, `status` is
    the HTTP status the studio answers with."""

    status = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class UnsafePath(StoreError):
    """An id or version that is not allowed or not there; answered as not found, naming no path."""

    status = 404


class StaleVersion(StoreError):
    """The file changed since the editor loaded it; the edit was not saved."""

    status = 409


class InvalidRubric(StoreError):
    """The validator refused the text that would have been saved; `cause` is what it raised."""

    status = 422

    def __init__(self, message: str, cause: BaseException) -> None:
        super().__init__(message)
        self.cause = cause


@dataclass(frozen=True)
class VersionEntry:
    """One saved version, as recorded in `versions/<version>.json`."""

    version: str
    saved_at: str  # ISO 8601, UTC, whole seconds
    note: str
    author: str | None
    bump: str | None  # patch / minor / major; None for a version the studio found rather than made
    restored_from: str | None
    sha256: str  # of the snapshot's bytes (and of rubric.yaml while this version is in force)


class _EntryFile(Strict):
    """The JSON record as read back: a record that does not fit is reported, not half-trusted."""

    version: _VersionText
    saved_at: str
    note: str
    author: str | None
    bump: Literal["patch", "minor", "major"] | None
    restored_from: _VersionText | None
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("saved_at")
    @classmethod
    def _utc_time(cls, value: str) -> str:
        if datetime.fromisoformat(value).utcoffset() is None:
            raise ValueError("expected a time with its UTC offset")
        return value


@dataclass(frozen=True)
class _OnDisk:
    """rubric.yaml as it is now."""

    text: str
    sha256: str
    version: str
    change_note: str
    mtime: float


def _version_key(version: str) -> tuple[int, int, int]:
    parts = [int(p) for p in version.split(".")]
    return (parts[0], parts[1], parts[2] if len(parts) > 2 else 0)


def bump_version(version: str, bump: str) -> str:
    """The next version: x.y counts as x.y.0; patch 1.2.3 -> 1.2.4, minor -> 1.3.0, major -> 2.0.0."""
    major, minor, patch = _version_key(version)
    if bump == "patch":
        return f"{major}.{minor}.{patch + 1}"
    if bump == "minor":
        return f"{major}.{minor + 1}.0"
    if bump == "major":
        return f"{major + 1}.0.0"
    raise StoreError(f"Unknown version step {bump!r:.40}; expected one of: {', '.join(BUMPS)}.", 422)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(int(timestamp), UTC).isoformat(timespec="seconds")


def _clean_note(note: str, *, required: bool = True) -> str:
    if not isinstance(note, str):
        raise StoreError("The change note must be text.", 422)
    note = _LINE_BREAKS.sub("\n", note).strip()
    if not note and required:
        raise StoreError("A change note is required: say what changed and why.", 422)
    if len(note) > MAX_NOTE_CHARS:
        raise StoreError(f"The change note is {len(note)} characters long; the most is {MAX_NOTE_CHARS}.", 422)
    if _CONTROL.search(note):
        raise StoreError("The change note contains control characters; please retype it.", 422)
    return note


def _clean_author(author: str | None) -> str | None:
    if author is None or (isinstance(author, str) and not author.strip()):
        return None
    if not isinstance(author, str):
        raise StoreError("The author name must be text.", 422)
    author = author.strip()
    if len(author) > MAX_AUTHOR_CHARS:
        raise StoreError(f"The author name is {len(author)} characters long; the most is {MAX_AUTHOR_CHARS}.", 422)
    if _NOT_ONE_LINE.search(author):
        raise StoreError("The author name must be one line of text.", 422)
    return author


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class RubricStore:
    """Versioned saves of the rubric folders under one root (a rubrics folder)."""

    def __init__(self, root: Path, *, lock_timeout_s: float = 10.0) -> None:
        resolved = Path(root).resolve()
        if not resolved.is_dir():
            raise NotADirectoryError(f"{root}: not a folder")
        self._root = resolved
        self._lock_timeout_s = lock_timeout_s
        self._thread_lock = threading.Lock()

    @property
    def root(self) -> Path:
        return self._root

    # --- paths: the only places user input meets the file system -----------------------------------

    def ids(self) -> list[str]:
        """The rubric ids under the root: child folders holding rubric.yaml, not `_shared` or hidden."""
        found = []
        for child in sorted(self._root.iterdir()):
            if child.name.startswith(("_", ".")):
                continue
            try:
                self.folder(child.name)
            except UnsafePath:
                continue  # not an id (capitals, dashes), no rubric.yaml, or a link out of the root
            found.append(child.name)
        return found

    def folder(self, rubric_id: str) -> Path:
        """The resolved folder of a rubric id, or UnsafePath. No other code builds a path from an id."""
        if not isinstance(rubric_id, str) or not _ID.fullmatch(rubric_id):
            raise UnsafePath("There is no rubric by that name.")  # not echoed: it may be a path
        refused = UnsafePath(f"There is no rubric named {rubric_id!r}.")
        try:
            folder = (self._root / rubric_id).resolve()
            rubric = (folder / RUBRIC_FILE).resolve()
        except (OSError, RuntimeError):  # a symlink loop
            raise refused from None
        # Resolved, the folder must still be the root's child of that name: a link that leads out of
        # the root (or to another rubric under a second name) is refused, and so is a linked rubric.yaml.
        if folder != self._root / rubric_id or rubric != folder / RUBRIC_FILE or not rubric.is_file():
            raise refused
        return folder

    def _version_name(self, rubric_id: str, version: str) -> str:
        if not isinstance(version, str) or not _VERSION.fullmatch(version):
            raise UnsafePath(f"Rubric {rubric_id!r} has no version by that name.")
        return version

    def _versions_dir(self, folder: Path) -> Path:
        versions = folder / VERSIONS_DIR
        if versions.is_symlink() or (versions.exists() and not versions.is_dir()):
            raise StoreError("The rubric's versions folder is not a plain folder; the history cannot be used.")
        return versions

    # --- reading -----------------------------------------------------------------------------------

    def read(self, rubric_id: str) -> tuple[str, str]:
        """The rubric file's text and the sha256 of its bytes (the editor sends it back as base_sha)."""
        data, _ = self._file_bytes(self.folder(rubric_id))
        return data.decode("utf-8"), _sha256(data)

    def history(self, rubric_id: str) -> list[VersionEntry]:
        """Every version, newest first, down to the version the studio found before its first save.
        A version in force that the studio has no record of (an edit made outside the studio) is
        listed from rubric.yaml itself; the next save records it."""
        folder = self.folder(rubric_id)
        current = self._on_disk(folder)
        return self._listed(folder, current)

    def version_text(self, rubric_id: str, version: str) -> str:
        """The full rubric file as it was saved at `version`."""
        folder = self.folder(rubric_id)
        version = self._version_name(rubric_id, version)
        current = self._on_disk(folder)
        recorded = self._recorded(folder)
        entry = next((e for e in self._listed(folder, current, recorded) if e.version == version), None)
        if entry is None:
            raise UnsafePath(f"Rubric {rubric_id!r} has no version {version!r}.")
        if version not in recorded:
            return current.text  # the version in force, listed from rubric.yaml: not recorded yet
        snapshot = self._versions_dir(folder) / f"{version}.yaml"
        if snapshot.is_symlink():
            raise StoreError(f"The saved text of version {version} of {rubric_id!r} is a link, not a saved "
                             "version; it will not be shown or restored.")
        try:
            data = snapshot.read_bytes()
            text = data.decode("utf-8")
        except FileNotFoundError:
            raise StoreError(f"The saved text of version {version} of {rubric_id!r} is missing; "
                             "the version is listed but cannot be shown or restored.") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"The saved text of version {version} of {rubric_id!r} cannot be read "
                             f"({getattr(exc, 'strerror', None) or type(exc).__name__}).") from None
        if _sha256(data) != entry.sha256:
            raise StoreError(f"The saved text of version {version} of {rubric_id!r} does not match its "
                             "record (it was changed after it was saved); it will not be shown or restored.")
        return text

    @staticmethod
    def _file_bytes(folder: Path) -> tuple[bytes, float]:
        """rubric.yaml's bytes (as they are: read_text would rewrite CRLF line ends) and its mtime."""
        path = folder / RUBRIC_FILE
        try:
            data = path.read_bytes()
            mtime = path.stat().st_mtime
            data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"The rubric {folder.name!r} cannot be read "
                             f"({getattr(exc, 'strerror', None) or type(exc).__name__}).") from None
        return data, mtime

    def _on_disk(self, folder: Path) -> _OnDisk:
        path = folder / RUBRIC_FILE
        data, mtime = self._file_bytes(folder)
        text = data.decode("utf-8")
        try:
            raw = load_yaml(path, text)
        except DefinitionError as exc:
            raise StoreError(f"The rubric {folder.name!r} on disk is not valid YAML ({exc.field}: {exc.problem}); "
                             "fix the file before saving from the studio.", 422) from None
        fields: dict[str, Any] = raw if isinstance(raw, dict) else {}
        version, note = fields.get("version"), fields.get("change_note")
        if not isinstance(version, str) or not _VERSION.fullmatch(version):
            raise StoreError(f"The rubric {folder.name!r} on disk has no valid version (expected one like "
                             "\"1.2.0\"); fix the file before saving from the studio.", 422)
        return _OnDisk(text, _sha256(data), version, note.strip() if isinstance(note, str) else "", mtime)

    def _recorded(self, folder: Path) -> dict[str, VersionEntry]:
        """Every JSON record in versions/, including any newer than rubric.yaml."""
        versions = self._versions_dir(folder)
        if not versions.is_dir():
            return {}
        entries: dict[str, VersionEntry] = {}
        for path in versions.iterdir():
            if path.suffix != ".json" or not _VERSION.fullmatch(path.stem) or path.is_symlink():
                continue  # temporary files of an interrupted write, or something the studio did not write
            try:
                record = _EntryFile.model_validate_json(path.read_bytes())
            except (OSError, ValidationError) as exc:
                raise StoreError(f"The record of version {path.stem} of {folder.name!r} cannot be read "
                                 f"({getattr(exc, 'strerror', None) or 'not a version record'}); "
                                 "the history cannot be shown until it is repaired.") from None
            if record.version != path.stem:
                raise StoreError(f"The record of version {path.stem} of {folder.name!r} names version "
                                 f"{record.version}; the history cannot be shown until it is repaired.")
            entries[record.version] = VersionEntry(**record.model_dump())
        return entries

    def _listed(self, folder: Path, current: _OnDisk,
                recorded: dict[str, VersionEntry] | None = None) -> list[VersionEntry]:
        ceiling = _version_key(current.version)
        recorded = self._recorded(folder) if recorded is None else recorded
        # A record newer than the file is a save that crashed before its commit point: not history.
        kept = [e for e in recorded.values() if _version_key(e.version) <= ceiling]
        if not any(e.version == current.version for e in kept):
            kept.append(self._found_entry(current, first=not kept))
        return sorted(kept, key=lambda e: (_version_key(e.version), e.saved_at), reverse=True)

    @staticmethod
    def _found_entry(current: _OnDisk, *, first: bool) -> VersionEntry:
        note = current.change_note or (FIRST_BASELINE_NOTE if first else OUTSIDE_NOTE)
        return VersionEntry(version=current.version, saved_at=_utc(current.mtime), note=note, author=None,
                            bump=None, restored_from=None, sha256=current.sha256)

    # --- writing -----------------------------------------------------------------------------------

    def save(self, rubric_id: str, text: str, *, base_sha: str, bump: str, note: str, author: str | None,
             validate: Callable[[str], None]) -> VersionEntry:
        """Save `text` as the next version (`bump` of the version on disk) with `note` in the file and
        the changelog. Refused, with nothing written, when the file changed since `base_sha` was read
        (StaleVersion) or when `validate` raises on the text to be saved (InvalidRubric)."""
        return self._commit(rubric_id, text, base_sha=base_sha, bump=bump, note=_clean_note(note),
                            author=_clean_author(author), validate=validate, restored_from=None)

    def check_fresh(self, rubric_id: str, base_sha: str) -> None:
        """Raise StaleVersion (with the message a save would give) if the file is no longer the one the
        editor loaded. save() checks again under the lock; this lets the editor stop before it applies
        a form to a file it was not built from."""
        folder = self.folder(rubric_id)
        current = self._on_disk(folder)
        if current.sha256 != str(base_sha).strip().lower():
            raise StaleVersion(self._stale_message(rubric_id, current, self._recorded(folder).get(current.version)))

    def restore(self, rubric_id: str, version: str, *, base_sha: str, note: str, author: str | None,
                validate: Callable[[str], None]) -> VersionEntry:
        """Bring back an old version's content as a new minor version; history is never rewritten."""
        own = _clean_note(note, required=False)
        author = _clean_author(author)
        text = self.version_text(rubric_id, version)
        full = f"Restored version {version}: {own}" if own else f"Restored version {version}"
        return self._commit(rubric_id, text, base_sha=base_sha, bump="minor", note=full, author=author,
                            validate=validate, restored_from=version)

    def _commit(self, rubric_id: str, text: str, *, base_sha: str, bump: str, note: str, author: str | None,
                validate: Callable[[str], None], restored_from: str | None) -> VersionEntry:
        folder = self.folder(rubric_id)
        if bump not in BUMPS:
            raise StoreError(f"Unknown version step {bump!r:.40}; expected one of: {', '.join(BUMPS)}.", 422)
        if not isinstance(text, str):
            raise StoreError("The rubric text must be text.", 422)
        if len(text) > MAX_TEXT_CHARS:
            raise StoreError("The rubric text is too large to save.", 413)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise StoreError("The rubric text contains characters that cannot be saved; please retype them.",
                             422) from None
        with self._locked():
            current = self._on_disk(folder)
            recorded = self._recorded(folder)
            listed = self._listed(folder, current, recorded)
            if current.sha256 != str(base_sha).strip().lower():
                raise StaleVersion(self._stale_message(rubric_id, current, recorded.get(current.version)))
            new = bump_version(current.version, bump)
            final = self._final_text(text, new, note, validate)
            entry = VersionEntry(version=new, saved_at=_utc(time.time()), note=note, author=author, bump=bump,
                                 restored_from=restored_from, sha256=_sha256(final.encode("utf-8")))
            try:
                self._write(folder, current, listed, entry, final)
            except OSError as exc:
                raise StoreError(f"The rubric could not be saved ({exc.strerror or type(exc).__name__}); "
                                 f"version {current.version} is still in force and nothing was lost.") from exc
            return entry

    @staticmethod
    def _stale_message(rubric_id: str, current: _OnDisk, entry: VersionEntry | None) -> str:
        if entry is None:
            who = ", changed outside the studio"
        elif entry.sha256 != current.sha256:
            who = ", changed outside the studio without a new version number"
        elif entry.bump is not None:
            who = f", saved by {entry.author}" if entry.author else ", saved in the studio"
            who += f" with the note \u201c{entry.note}\u201d"
        else:
            who = ""  # the version the studio found and recorded: nothing more is known of it
        return (f"Your edit was NOT saved: {rubric_id} changed after you opened it. Version {current.version} "
                f"is now on disk{who}. Your form is kept; open the current version, then make your change again.")

    @staticmethod
    def _final_text(text: str, new: str, note: str, validate: Callable[[str], None]) -> str:
        value: Any = LiteralScalarString(note) if "\n" in note else note
        try:
            # Quoted, as in the built-in files, so that a version never reads as a number.
            final = set_fields(text, {"version": DoubleQuotedScalarString(new), "change_note": value},
                               after="version")
        except ValueError as exc:
            raise InvalidRubric(f"The rubric was not saved: {exc}", exc) from exc
        try:
            validate(final)
        except Exception as exc:  # whatever the validator raises, the rubric is refused, not the studio
            problem = f"{exc.field}: {exc.problem}" if isinstance(exc, DefinitionError) else str(exc)
            raise InvalidRubric(f"The rubric was not saved: {problem or type(exc).__name__}", exc) from exc
        # The file must say what the record says, whatever the validator checks.
        try:
            written = load_yaml(Path(RUBRIC_FILE), final)
        except DefinitionError as exc:  # read differently by the judge's YAML reader than by the editor's
            raise InvalidRubric(f"The rubric was not saved: {exc.field}: {exc.problem}", exc) from exc
        if not isinstance(written, dict) or written.get("version") != new or written.get("change_note") != note:
            raise StoreError("The rubric could not be saved: its version and note could not be written into it.")
        return final

    def _write(self, folder: Path, current: _OnDisk, listed: list[VersionEntry], entry: VersionEntry,
               final: str) -> None:
        rubric = folder / RUBRIC_FILE
        file_mode = _mode(rubric)  # clinicians share these folders: new files read as rubric.yaml does
        versions = self._versions_dir(folder)
        if not versions.is_dir():
            versions.mkdir()
            os.chmod(versions, _mode(folder))  # mkdir's mode is cut by the umask
        in_force = next(e for e in listed if e.version == current.version)
        if not (versions / f"{current.version}.json").exists():
            # The version the studio found (before its first save, or after an edit made outside it)
            # is kept too, so that it can be shown and restored like any other.
            self._write_version(versions, in_force, current.text, file_mode)
        self._write_version(versions, entry, final, file_mode)
        write_text_atomic(rubric, final, mode=file_mode, fsync=True)  # the commit point
        try:
            write_text_atomic(folder / CHANGELOG_FILE, changelog(folder.name, [entry, *listed]),
                              mode=file_mode, fsync=True)
        except OSError as exc:
            # The version is saved; the changelog is derived and the next save writes it whole.
            log.warning("%s: %s not updated: %s", folder.name, CHANGELOG_FILE, exc)

    @staticmethod
    def _write_version(versions: Path, entry: VersionEntry, text: str, mode: int) -> None:
        # The text first: a record without its text would list a version that cannot be shown.
        write_text_atomic(versions / f"{entry.version}.yaml", text, mode=mode, fsync=True)
        record = json.dumps(asdict(entry), indent=2, ensure_ascii=False) + "\n"
        write_text_atomic(versions / f"{entry.version}.json", record, mode=mode, fsync=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One save at a time per root: a thread lock within this process, flock across processes."""
        deadline = time.monotonic() + self._lock_timeout_s
        busy = StoreError("Another save of these rubrics is in progress; please try again in a moment.", 503)
        if not self._thread_lock.acquire(timeout=self._lock_timeout_s):
            raise busy
        try:
            try:
                fd = os.open(self._root / LOCK_FILE, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            except OSError as exc:
                raise StoreError(f"The rubrics folder cannot be locked for saving ({exc.strerror}).") from None
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise busy from None
                        time.sleep(0.02)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the flock
        finally:
            self._thread_lock.release()


def changelog(rubric_id: str, entries: list[VersionEntry]) -> str:
    """CHANGELOG.md for a rubric, newest version first. It is written from the version records and
    never read back: the records are the history."""
    ordered = sorted(entries, key=lambda e: (_version_key(e.version), e.saved_at), reverse=True)
    lines = [f"# Changelog: {rubric_id}", "",
             "Written by `psyjudge studio` from `versions/*.json` on every save; edits here are overwritten.", ""]
    for entry in ordered:
        when = datetime.fromisoformat(entry.saved_at).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines += [f"## {entry.version} \u2014 {when}", ""]
        meta = [f"by {entry.author}"] if entry.author else []
        if entry.restored_from:
            meta.append(f"restored from {entry.restored_from}")
        if meta:
            lines += [", ".join(meta), ""]
        # A note line that starts with '#' would read as a heading of its own.
        lines += [("\\" + line if line.startswith("#") else line) for line in entry.note.split("\n")]
        lines.append("")
    return "\n".join(lines)
