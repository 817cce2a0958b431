"""The studio's version store: versioned saves, history, restore, refusals that write nothing, and
path safety for ids and versions that come from a web form."""

from __future__ import annotations

import difflib
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import judge.studio.store as store_module
from judge.atomic import write_text_atomic
from judge.rubrics import RubricError, builtin_rubrics_dir, load_rubric_folder, load_yaml
from judge.schema import RubricSpec
from judge.studio.store import (
    InvalidRubric,
    RubricStore,
    StaleVersion,
    StoreError,
    UnsafePath,
    VersionEntry,
    bump_version,
)

BUILTIN_IDS = ["dangerous_instructions", "eating_disorders", "self_harm", "substance_misuse"]
MARKER = "REFUSE-THIS-DRAFT"


def check_spec(text: str) -> None:
    """A quick validator: the text parses as a rubric file and fits RubricSpec; a marker is refused."""
    if MARKER in text:
        raise ValueError(f"the draft contains {MARKER}")
    RubricSpec.model_validate(load_yaml(Path("rubric.yaml"), text))


def full_validator(root: Path, rubric_id: str, scratch: Path) -> Callable[[str], None]:
    """The real check: load the draft as a rubric folder with the shared partials beside it."""

    def validate(text: str) -> None:
        base = scratch / f"check{len(list(scratch.glob('check*')))}"
        shutil.copytree(root / "_shared", base / "_shared")
        (base / rubric_id).mkdir()
        (base / rubric_id / "rubric.yaml").write_text(text, encoding="utf-8")
        load_rubric_folder(base / rubric_id)

    return validate


@pytest.fixture
def root(tmp_path: Path) -> Path:
    target = tmp_path / "rubrics"
    shutil.copytree(builtin_rubrics_dir(), target)
    return target


@pytest.fixture
def store(root: Path) -> RubricStore:
    return RubricStore(root)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its bytes (None for folders), the lock file aside."""
    found: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        if path.name == store_module.LOCK_FILE:
            continue
        found[str(path.relative_to(root))] = None if path.is_dir() else path.read_bytes()
    return found


def edit(store: RubricStore, rubric_id: str = "self_harm", old: str = "owner: psyjudge clinical content",
         new: str = "owner: psyjudge clinical content team") -> tuple[str, str]:
    text, sha = store.read(rubric_id)
    assert old in text
    return text.replace(old, new, 1), sha


def changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.ndiff(before.splitlines(keepends=True), after.splitlines(keepends=True))
            if line[:2] in ("- ", "+ ")]


# --- versions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "bump", "expected"), [
    ("1.2.3", "patch", "1.2.4"), ("1.2.3", "minor", "1.3.0"), ("1.2.3", "major", "2.0.0"),
    ("1.2", "patch", "1.2.1"), ("1.2", "minor", "1.3.0"), ("1.2", "major", "2.0.0"),
    ("0.9.9", "minor", "0.10.0"), ("1.10.0", "patch", "1.10.1"),
])
def test_bump_version(version: str, bump: str, expected: str) -> None:
    assert bump_version(version, bump) == expected


@pytest.mark.parametrize("rubric_id", BUILTIN_IDS)
def test_save_bumps_version_and_writes_note_changing_only_those_lines(store: RubricStore, root: Path,
                                                                      rubric_id: str) -> None:
    before, sha = store.read(rubric_id)
    old_version = load_yaml(Path("x"), before)["version"]
    entry = store.save(rubric_id, before, base_sha=sha, bump="minor", note="Clarified the guidance",
                       author="Dr Ada Lee", validate=check_spec)

    assert entry.version == bump_version(old_version, "minor")
    after_bytes = (root / rubric_id / "rubric.yaml").read_bytes()
    after = after_bytes.decode("utf-8")
    data = load_yaml(Path("x"), after)
    assert data["version"] == entry.version and data["change_note"] == "Clarified the guidance"
    # Byte for byte, the only lines that differ are the version and the (added) change note.
    assert changed_lines(before, after) == [f'- version: "{old_version}"\n', f'+ version: "{entry.version}"\n',
                                            "+ change_note: Clarified the guidance\n"]
    assert after.index("change_note:") == after.index("\n", after.index("version:")) + 1
    assert store.read(rubric_id) == (after, entry.sha256)
    assert entry.bump == "minor" and entry.author == "Dr Ada Lee" and entry.restored_from is None


def test_a_second_save_rewrites_the_note_in_place(store: RubricStore, root: Path) -> None:
    text, sha = edit(store)
    first = store.save("self_harm", text, base_sha=sha, bump="patch", note="One", author=None, validate=check_spec)
    saved, sha = store.read("self_harm")
    second = store.save("self_harm", saved, base_sha=sha, bump="major", note="Two\nlines", author=None,
                        validate=check_spec)
    assert (first.version, second.version) == ("2.0.1", "3.0.0")
    final = (root / "self_harm" / "rubric.yaml").read_text(encoding="utf-8")
    assert changed_lines(saved, final) == ['- version: "2.0.1"\n', '+ version: "3.0.0"\n', "- change_note: One\n",
                                           "+ change_note: |-\n", "+   Two\n", "+   lines\n"]


@pytest.mark.parametrize("note", ["yes", "1.5", "# not a comment", "key: value", "- a dash", "\u00e9t\u00e9 \u2713",
                                  "first line\n  indented second\nthird", "tab\there", "'single' and \"double\"",
                                  "windows\r\nline ends", "  padded  "])
def test_any_note_reads_back_exactly_from_the_file(store: RubricStore, root: Path, note: str) -> None:
    text, sha = store.read("self_harm")
    entry = store.save("self_harm", text, base_sha=sha, bump="patch", note=note, author=None, validate=check_spec)
    assert entry.note == note.replace("\r\n", "\n").strip()
    on_disk = load_yaml(Path("x"), (root / "self_harm" / "rubric.yaml").read_text(encoding="utf-8"))
    assert on_disk["change_note"] == entry.note


# --- history, changelog, version text ---------------------------------------------------------------


def test_history_newest_first_with_the_baseline(store: RubricStore, root: Path) -> None:
    original = (root / "self_harm" / "rubric.yaml").read_bytes()
    mtime = (root / "self_harm" / "rubric.yaml").stat().st_mtime
    [found] = store.history("self_harm")
    assert found == VersionEntry(version="2.0.0", saved_at=store_module._utc(mtime),
                                 note="Version before the first studio save", author=None, bump=None,
                                 restored_from=None, sha256=store.read("self_harm")[1])
    assert store.version_text("self_harm", "2.0.0").encode() == original

    text, sha = edit(store)
    first = store.save("self_harm", text, base_sha=sha, bump="minor", note="Owner", author="Sam", validate=check_spec)
    text, sha = edit(store, old="title: Suicide", new="title: Suicidal")
    second = store.save("self_harm", text, base_sha=sha, bump="patch", note="Title", author=None, validate=check_spec)

    history = store.history("self_harm")
    assert [e.version for e in history] == ["2.1.1", "2.1.0", "2.0.0"]
    assert history[:2] == [second, first]
    assert history[2] == found  # the baseline was recorded as it was listed
    assert json.loads((root / "self_harm" / "versions" / "2.0.0.json").read_text()) == {
        "version": "2.0.0", "saved_at": found.saved_at, "note": "Version before the first studio save",
        "author": None, "bump": None, "restored_from": None, "sha256": found.sha256}
    # Every version's text round-trips, byte for byte.
    assert store.version_text("self_harm", "2.0.0").encode() == original
    assert store.version_text("self_harm", "2.1.1") == (root / "self_harm" / "rubric.yaml").read_text()
    assert "owner: psyjudge clinical content team" in store.version_text("self_harm", "2.1.0")
    assert "title: Suicidal" not in store.version_text("self_harm", "2.1.0")


def test_baseline_takes_the_files_own_change_note(store: RubricStore, root: Path) -> None:
    path = root / "eating_disorders" / "rubric.yaml"
    path.write_text(path.read_text().replace('version: "1.0.0"\n', 'version: "1.0"\nchange_note: Reviewed in May\n'))
    [found] = store.history("eating_disorders")
    assert (found.version, found.note) == ("1.0", "Reviewed in May")
    text, sha = store.read("eating_disorders")
    entry = store.save("eating_disorders", text, base_sha=sha, bump="patch", note="x", author=None,
                       validate=check_spec)
    assert entry.version == "1.0.1"
    assert [(e.version, e.note) for e in store.history("eating_disorders")] == [("1.0.1", "x"),
                                                                                ("1.0", "Reviewed in May")]


def test_changelog_is_regenerated_newest_first(store: RubricStore, root: Path) -> None:
    text, sha = edit(store)
    first = store.save("self_harm", text, base_sha=sha, bump="minor", note="Owner renamed\n# kept as text",
                       author="Dr Ada Lee", validate=check_spec)
    _, sha = store.read("self_harm")
    restored = store.restore("self_harm", "2.0.0", base_sha=sha, note="owner name was right", author=None,
                             validate=check_spec)
    baseline = store.history("self_harm")[-1]

    def when(entry: VersionEntry) -> str:
        return entry.saved_at[:10] + " " + entry.saved_at[11:16] + " UTC"

    assert (root / "self_harm" / "CHANGELOG.md").read_text(encoding="utf-8") == (
        "# Changelog: self_harm\n\n"
        "Written by `psyjudge studio` from `versions/*.json` on every save; edits here are overwritten.\n\n"
        f"## 2.2.0 \u2014 {when(restored)}\n\nrestored from 2.0.0\n\n"
        "Restored version 2.0.0: owner name was right\n\n"
        f"## 2.1.0 \u2014 {when(first)}\n\nby Dr Ada Lee\n\nOwner renamed\n\\# kept as text\n\n"
        f"## 2.0.0 \u2014 {when(baseline)}\n\nVersion before the first studio save\n")
    # The changelog is derived: history does not read it.
    (root / "self_harm" / "CHANGELOG.md").write_text("scribbled over")
    assert [e.version for e in store.history("self_harm")] == ["2.2.0", "2.1.0", "2.0.0"]


def test_restore_is_a_new_version_with_the_old_content(store: RubricStore, root: Path) -> None:
    original = store.version_text("self_harm", "2.0.0")
    text, sha = edit(store)
    store.save("self_harm", text, base_sha=sha, bump="major", note="Owner", author=None, validate=check_spec)
    records_before = {p.name: p.read_bytes() for p in (root / "self_harm" / "versions").iterdir()}
    _, sha = store.read("self_harm")

    entry = store.restore("self_harm", "2.0.0", base_sha=sha, note="", author="Kim", validate=check_spec)

    assert (entry.version, entry.bump, entry.restored_from) == ("3.1.0", "minor", "2.0.0")
    assert entry.note == "Restored version 2.0.0" and entry.author == "Kim"
    now = (root / "self_harm" / "rubric.yaml").read_text()
    assert changed_lines(original, now) == ['- version: "2.0.0"\n', '+ version: "3.1.0"\n',
                                            "+ change_note: Restored version 2.0.0\n"]
    assert [e.version for e in store.history("self_harm")] == ["3.1.0", "3.0.0", "2.0.0"]
    # History is never rewritten: the older records are untouched.
    for name, data in records_before.items():
        assert (root / "self_harm" / "versions" / name).read_bytes() == data


def test_restore_refuses_an_unknown_version(store: RubricStore, root: Path) -> None:
    _, sha = store.read("self_harm")
    before = tree(root)
    with pytest.raises(UnsafePath) as caught:
        store.restore("self_harm", "1.0.0", base_sha=sha, note="", author=None, validate=check_spec)
    assert caught.value.status == 404
    assert tree(root) == before


def test_a_version_edited_outside_the_studio_is_listed_and_recorded(store: RubricStore, root: Path) -> None:
    text, sha = edit(store)
    store.save("self_harm", text, base_sha=sha, bump="minor", note="Owner", author=None, validate=check_spec)
    path = root / "self_harm" / "rubric.yaml"
    hand = path.read_text().replace('version: "2.1.0"\nchange_note: Owner\n', 'version: "4.0.0"\n')
    path.write_text(hand)
    listed = store.history("self_harm")
    assert [(e.version, e.note, e.bump) for e in listed] == [
        ("4.0.0", "Version edited outside the studio", None), ("2.1.0", "Owner", "minor"), ("2.0.0", store_module.
                                                                                         FIRST_BASELINE_NOTE, None)]
    assert store.version_text("self_harm", "4.0.0") == hand
    text, sha = store.read("self_harm")
    store.save("self_harm", text, base_sha=sha, bump="patch", note="After", author=None, validate=check_spec)
    assert (root / "self_harm" / "versions" / "4.0.0.yaml").read_text() == hand
    assert [e.version for e in store.history("self_harm")] == ["4.0.1", "4.0.0", "2.1.0", "2.0.0"]


# --- refusals write nothing -------------------------------------------------------------------------


def test_stale_base_sha_is_refused_with_nothing_written(store: RubricStore, root: Path) -> None:
    text, old_sha = edit(store)
    store.save("self_harm", text, base_sha=old_sha, bump="minor", note="Tightened the dose rule",
               author="Dr Ada Lee", validate=check_spec)
    before = tree(root)
    mine, _ = edit(store, old="title: Suicide", new="title: Suicidal")
    with pytest.raises(StaleVersion) as caught:
        store.save("self_harm", mine, base_sha=old_sha, bump="patch", note="Mine", author="Bo", validate=check_spec)
    assert caught.value.status == 409
    message = caught.value.message
    assert "NOT saved" in message and "2.1.0" in message
    assert "Dr Ada Lee" in message and "Tightened the dose rule" in message
    assert tree(root) == before


def test_stale_after_an_edit_outside_the_studio(store: RubricStore, root: Path) -> None:
    _, sha = store.read("self_harm")
    path = root / "self_harm" / "rubric.yaml"
    path.write_text(path.read_text() + "# a comment added by hand\n")
    before = tree(root)
    with pytest.raises(StaleVersion, match="outside the studio"):
        store.save("self_harm", path.read_text(), base_sha=sha, bump="patch", note="x", author=None,
                   validate=check_spec)
    assert tree(root) == before


@pytest.mark.parametrize(("text_change", "expected"), [
    (lambda t: t.replace("owner: psyjudge clinical content", f"owner: {MARKER}"), MARKER),
    (lambda t: t.replace("title: Suicide", "title: [Suicide"), "not valid YAML"),
    (lambda t: "- just\n- a list\n", "mapping"),
])
def test_invalid_text_is_refused_with_nothing_written(store: RubricStore, root: Path,
                                                      text_change: Callable[[str], str], expected: str) -> None:
    text, sha = store.read("self_harm")
    before = tree(root)
    with pytest.raises(InvalidRubric) as caught:
        store.save("self_harm", text_change(text), base_sha=sha, bump="patch", note="x", author=None,
                   validate=check_spec)
    assert caught.value.status == 422 and expected in caught.value.message
    assert caught.value.cause is caught.value.__cause__
    assert tree(root) == before


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"note": "   \n "}, "a change note is required"),
    ({"note": "x" * 2001}, "2001 characters"),
    ({"note": "bad \x00 byte"}, "control characters"),
    ({"author": "x" * 101}, "101 characters"),
    ({"author": "two\nlines"}, "one line"),
    ({"bump": "huge"}, "expected one of: patch, minor, major"),
])
def test_bad_form_fields_are_refused_with_nothing_written(store: RubricStore, root: Path, kwargs: dict[str, Any],
                                                          expected: str) -> None:
    text, sha = store.read("self_harm")
    before = tree(root)
    args: dict[str, Any] = {"base_sha": sha, "bump": "patch", "note": "ok", "author": None, "validate": check_spec,
                            **kwargs}
    with pytest.raises(StoreError) as caught:
        store.save("self_harm", text, **args)
    assert caught.value.status == 422 and expected in caught.value.message.lower()
    assert tree(root) == before


def test_the_real_validator_accepts_an_edit_and_refuses_a_broken_rule(store: RubricStore, root: Path,
                                                                      tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    validate = full_validator(root, "self_harm", scratch)
    text, sha = edit(store)
    entry = store.save("self_harm", text, base_sha=sha, bump="minor", note="Owner", author=None, validate=validate)
    assert load_rubric_folder(root / "self_harm").version == entry.version

    text, sha = store.read("self_harm")
    assert "any_yes: [" in text
    broken = text.replace("any_yes: [", "any_yes: [no_such_question, ", 1)
    before = tree(root)
    with pytest.raises(InvalidRubric) as caught:
        store.save("self_harm", broken, base_sha=sha, bump="patch", note="x", author=None, validate=validate)
    assert isinstance(caught.value.cause, RubricError)
    assert "no_such_question" in caught.value.message and str(scratch) not in caught.value.message
    assert tree(root) == before


# --- concurrency and crashes ------------------------------------------------------------------------


def _race(stores: list[RubricStore], base_sha: str, texts: list[str]) -> list[VersionEntry | StoreError]:
    start = threading.Barrier(len(stores))
    results: list[VersionEntry | StoreError] = [StoreError("not run")] * len(stores)

    def slow_check(text: str) -> None:
        time.sleep(0.05)  # widen the window between reading the file and writing it
        check_spec(text)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = stores[i].save("self_harm", texts[i], base_sha=base_sha, bump="minor", note=f"editor {i}",
                                        author=f"editor {i}", validate=slow_check)
        except StoreError as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.parametrize("separate_stores", [False, True], ids=["one store", "two stores (flock)"])
def test_two_saves_from_the_same_base_one_wins(root: Path, separate_stores: bool) -> None:
    stores = [RubricStore(root), RubricStore(root)] if separate_stores else [RubricStore(root)] * 2
    for _ in range(3):
        text, sha = stores[0].read("self_harm")
        texts = [text.replace("title: ", f"title: {i} ", 1) for i in range(2)]
        results = _race(stores, sha, texts)
        won = [r for r in results if isinstance(r, VersionEntry)]
        lost = [r for r in results if isinstance(r, StaleVersion)]
        assert len(won) == 1 and len(lost) == 1, results
        assert f"saved by {won[0].author}" in lost[0].message
        assert stores[0].read("self_harm")[1] == won[0].sha256
    assert [e.version for e in stores[0].history("self_harm")] == ["2.3.0", "2.2.0", "2.1.0", "2.0.0"]


def test_another_process_holding_the_lock_blocks_a_save(root: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(root / store_module.LOCK_FILE)!r}, os.O_RDONLY | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\nsys.stdin.readline()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        store = RubricStore(root, lock_timeout_s=0.3)
        text, sha = edit(store)
        before = tree(root)
        with pytest.raises(StoreError) as caught:
            store.save("self_harm", text, base_sha=sha, bump="patch", note="x", author=None, validate=check_spec)
        assert caught.value.status == 503
        assert tree(root) == before
    finally:
        holder.communicate("\n", timeout=10)
    assert store.save("self_harm", text, base_sha=sha, bump="patch", note="x", author=None,
                      validate=check_spec).version == "2.0.1"


def test_a_failed_rubric_write_leaves_the_file_and_history_intact(store: RubricStore, root: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    original = (root / "self_harm" / "rubric.yaml").read_bytes()
    text, sha = edit(store)

    def failing(path: Path, content: Any, **kwargs: Any) -> None:
        if path.name == "rubric.yaml":
            raise OSError(errno.ENOSPC, "No space left on device")
        write_text_atomic(path, content, **kwargs)

    monkeypatch.setattr(store_module, "write_text_atomic", failing)
    with pytest.raises(StoreError) as caught:
        store.save("self_harm", text, base_sha=sha, bump="minor", note="Lost", author="A", validate=check_spec)
    assert caught.value.status == 500 and "No space left" in caught.value.message
    assert (root / "self_harm" / "rubric.yaml").read_bytes() == original
    # The snapshot written before the failure is newer than the file: it is not history.
    assert (root / "self_harm" / "versions" / "2.1.0.json").exists()
    assert [e.version for e in store.history("self_harm")] == ["2.0.0"]
    with pytest.raises(UnsafePath):
        store.version_text("self_harm", "2.1.0")
    assert not (root / "self_harm" / "CHANGELOG.md").exists()

    monkeypatch.setattr(store_module, "write_text_atomic", write_text_atomic)
    again = store.save("self_harm", text, base_sha=sha, bump="minor", note="Kept", author="B", validate=check_spec)
    assert again.version == "2.1.0"
    assert json.loads((root / "self_harm" / "versions" / "2.1.0.json").read_text())["author"] == "B"
    assert [e.note for e in store.history("self_harm")] == ["Kept", "Version before the first studio save"]


def test_a_failed_changelog_write_does_not_lose_the_version(store: RubricStore, root: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    text, sha = edit(store)

    def failing(path: Path, content: Any, **kwargs: Any) -> None:
        if path.name == "CHANGELOG.md":
            raise OSError(errno.EIO, "Input/output error")
        write_text_atomic(path, content, **kwargs)

    monkeypatch.setattr(store_module, "write_text_atomic", failing)
    entry = store.save("self_harm", text, base_sha=sha, bump="minor", note="Saved", author=None, validate=check_spec)
    assert store.read("self_harm")[1] == entry.sha256
    assert not (root / "self_harm" / "CHANGELOG.md").exists()
    monkeypatch.setattr(store_module, "write_text_atomic", write_text_atomic)
    text, sha = store.read("self_harm")
    store.save("self_harm", text, base_sha=sha, bump="patch", note="Next", author=None, validate=check_spec)
    assert "## 2.1.0" in (root / "self_harm" / "CHANGELOG.md").read_text()


def test_missing_tampered_or_corrupt_records_are_clear_errors(store: RubricStore, root: Path) -> None:
    text, sha = edit(store)
    store.save("self_harm", text, base_sha=sha, bump="minor", note="Owner", author=None, validate=check_spec)
    versions = root / "self_harm" / "versions"

    (versions / "2.0.0.yaml").write_text("tampered\n")
    with pytest.raises(StoreError, match="does not match its record") as caught:
        store.version_text("self_harm", "2.0.0")
    assert type(caught.value) is StoreError

    (versions / "2.0.0.yaml").unlink()
    _, sha = store.read("self_harm")
    with pytest.raises(StoreError, match="missing"):
        store.restore("self_harm", "2.0.0", base_sha=sha, note="", author=None, validate=check_spec)

    (versions / "2.0.0.json").write_text("{not json")
    with pytest.raises(StoreError, match=r"record of version 2\.0\.0"):
        store.history("self_harm")


# --- path safety ------------------------------------------------------------------------------------

BAD_IDS = ["../x", "..", ".", "a/../b", "self_harm/../self_harm", "/etc", "/tmp", "%2e%2e", "%2e%2e%2fself_harm",
           urllib.parse.unquote("%2e%2e%2fself_harm"), "self_harm\x00", "self_harm\x00/../x", "self_harm\n",
           "self_harm/", "Self_harm", "_shared", "resources", "", "\uff53elf_harm", "x" * 65, "self-harm"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_ids_that_are_not_rubrics_are_not_found(store: RubricStore, root: Path, bad: str) -> None:
    _, sha = store.read("self_harm")
    before = tree(root)
    calls: list[Callable[[], object]] = [
        lambda: store.folder(bad), lambda: store.read(bad), lambda: store.history(bad),
        lambda: store.version_text(bad, "2.0.0"),
        lambda: store.save(bad, "id: x\n", base_sha=sha, bump="patch", note="x", author=None, validate=check_spec),
        lambda: store.restore(bad, "2.0.0", base_sha=sha, note="", author=None, validate=check_spec)]
    for call in calls:
        with pytest.raises(UnsafePath) as caught:
            call()
        assert caught.value.status == 404 and str(root) not in caught.value.message
    assert tree(root) == before


def test_an_absolute_path_to_a_real_rubric_is_not_an_id(store: RubricStore, root: Path) -> None:
    with pytest.raises(UnsafePath) as caught:
        store.folder(str(root / "self_harm"))
    assert str(root) not in caught.value.message and "/" not in caught.value.message


@pytest.mark.parametrize("bad", ["../../rubric", "../rubric", "2.0.0/../../rubric", "2.0.0\n", "2.0.0\x00",
                                 "\u0662.\u0660.\u0660", "", "2", "2.0.0.0", "/etc/passwd", "v2.0.0", "2.0.0.yaml"])
def test_versions_that_are_not_versions_are_not_found(store: RubricStore, root: Path, bad: str) -> None:
    (root / "rubric.yaml").write_text("a file outside any rubric folder\n")
    _, sha = store.read("self_harm")
    before = tree(root)
    for call in (lambda: store.version_text("self_harm", bad),
                 lambda: store.restore("self_harm", bad, base_sha=sha, note="", author=None, validate=check_spec)):
        with pytest.raises(UnsafePath) as caught:
            call()
        assert caught.value.status == 404 and str(root) not in caught.value.message
    assert tree(root) == before


def test_symlinks_out_of_the_root_are_refused(store: RubricStore, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(root / "self_harm", outside / "elsewhere")
    (root / "escape").symlink_to(outside / "elsewhere", target_is_directory=True)
    (root / "alias").symlink_to(root / "self_harm", target_is_directory=True)
    (root / "linked").mkdir()
    (root / "linked" / "rubric.yaml").symlink_to(outside / "elsewhere" / "rubric.yaml")
    for name in ("escape", "alias", "linked"):
        with pytest.raises(UnsafePath):
            store.folder(name)
    assert store.ids() == BUILTIN_IDS

    # A versions folder that leads elsewhere is not written through.
    (outside / "versions").mkdir()
    (root / "self_harm" / "versions").symlink_to(outside / "versions", target_is_directory=True)
    text, sha = store.read("self_harm")
    with pytest.raises(StoreError, match="not a plain folder"):
        store.save("self_harm", text, base_sha=sha, bump="patch", note="x", author=None, validate=check_spec)
    assert list((outside / "versions").iterdir()) == []


def test_ids_lists_rubric_folders_only(store: RubricStore, root: Path) -> None:
    (root / ".hidden").mkdir()
    shutil.copy(root / "self_harm" / "rubric.yaml", root / ".hidden" / "rubric.yaml")
    (root / "notes").mkdir()
    assert store.ids() == BUILTIN_IDS
    assert "_shared" not in store.ids() and "resources" not in store.ids()


def test_the_root_must_be_a_folder(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        RubricStore(tmp_path / "missing")


# --- file modes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("file_mode", "folder_mode"), [(0o664, 0o775), (0o640, 0o750)])
def test_new_files_take_the_rubric_files_mode(store: RubricStore, root: Path, file_mode: int,
                                              folder_mode: int) -> None:
    folder = root / "self_harm"
    os.chmod(folder / "rubric.yaml", file_mode)
    os.chmod(folder, folder_mode)
    text, sha = edit(store)
    old_umask = os.umask(0o077)  # the modes come from the rubric folder, not from the process's umask
    try:
        store.save("self_harm", text, base_sha=sha, bump="minor", note="x", author=None, validate=check_spec)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((folder / "versions").stat().st_mode) == folder_mode
    written = [folder / "rubric.yaml", folder / "CHANGELOG.md", *(folder / "versions").iterdir()]
    assert len(written) == 6
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in written} == {p.name: file_mode for p in written}
