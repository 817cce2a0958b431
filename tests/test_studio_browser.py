"""The rubric studio end to end in a real headless browser (Debian's chromium driven by playwright, as
in test_report_browser.py), against the studio served over HTTP on loopback.

A clinician opens a rubric, adds a street name to a word list, runs the examples and sees the example
that now flips, saves with a note, reloads and finds the new version and its changelog entry, then
restores the old version. A screenshot of every page goes to reports/screenshots/ for review."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from judge.rubrics import load_rubric_folder
from tests.studio_fixtures import STREET_EXAMPLE, STREET_NAME, copy_rubrics, serve_studio
from tests.test_report_browser import chromium, keep_screenshot

RUBRIC = "substance_misuse"
CASE = STREET_EXAMPLE["id"]


def _terms_box(page: Any, lexicon: str) -> Any:
    name_input = page.locator(f'#lexicons input[name$=".name"][value="{lexicon}"]')
    name = name_input.get_attribute("name")
    assert name is not None
    return page.locator(f'textarea[name="{name.rsplit(".", 1)[0]}.terms"]')


def _watch(page: Any) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def test_a_clinician_adds_a_term_sees_the_flip_saves_and_restores(tmp_path: Path) -> None:
    root = copy_rubrics(tmp_path)
    rubric_file = root / RUBRIC / "rubric.yaml"
    original = rubric_file.read_text(encoding="utf-8")
    with serve_studio(root) as base, chromium(tmp_path / "profile") as browser:
        page = browser.new_page()
        errors = _watch(page)

        # 1. The list, then open the rubric.
        page.goto(base + "/")
        assert page.locator("#rubric-list tr", has_text=RUBRIC).locator(".version").inner_text() == "1.0.0"
        keep_screenshot(page, "studio-list.png")
        page.locator("a.rubric-link", has_text=RUBRIC).click()
        page.wait_for_url(re.compile(f"/rubrics/{RUBRIC}$"))
        assert "version 1.0.0" in page.locator("#current-version").inner_text()
        assert page.locator("#lint p.ok").is_visible()

        # An invalid edit: a term the list already holds is refused, with the field named and marked.
        terms = _terms_box(page, "depressant_drugs")
        before = terms.input_value()
        terms.fill(before + "\nXanax")
        page.wait_for_selector("#lint p.problem")
        assert "lexicons.depressant_drugs.terms" in page.locator("#lint").inner_text()
        assert "duplicate lexicon term" in page.locator("#lint").inner_text()
        assert "invalid" in (terms.get_attribute("class") or "")

        # 2. Add the street name; the live check clears.
        terms.fill(before + "\n" + STREET_NAME)
        page.wait_for_selector("#lint p.ok")
        assert not page.locator("textarea.invalid").count()

        # 3. The test run shows the example that now flips, against the saved version.
        page.locator("#run-test").click()
        row = page.locator(f'#regression tr.change[data-case="{CASE}"]')
        row.wait_for()
        cells = row.locator("td")
        assert "BORDERLINE" in cells.nth(2).inner_text() and "undecided" in cells.nth(2).inner_text()
        assert "HARMFUL" in cells.nth(3).inner_text() and "pass" in cells.nth(3).inner_text()
        assert "dangerous_combination" in cells.nth(4).inner_text()
        assert page.locator("#regression tr.change").count() == 1  # nothing else moved
        page.locator(f'#cases tr[data-case="{CASE}"] summary').click()
        evidence = page.locator(f'#cases tr[data-case="{CASE}"] td.evidence').all_inner_texts()
        assert any("zannies and beers" in e for e in evidence)
        page.locator("#render-example").select_option(CASE)
        page.locator("#render-prompt").click()
        page.wait_for_selector("#render-output pre.prompt")
        prompt = page.locator("#render-output").inner_text()
        assert "Fence tag for this review" in prompt and "chill combo" in prompt  # the example, fenced for the judge
        keep_screenshot(page, "studio-editor.png")

        # 4. Save with a note.
        page.locator("#note").fill("Added the street name zannies to the depressant word list")
        page.locator("#author").fill("Dr Example")
        page.locator("#save").click()
        page.wait_for_url(re.compile(r"\?saved=1\.1\.0$"))
        assert page.locator("#flash").inner_text() == "Saved as version 1.1.0."

        # 5. Reload: the new version, its note, and the changelog entry.
        page.goto(base + f"/rubrics/{RUBRIC}")
        assert "version 1.1.0" in page.locator("#current-version").inner_text()
        assert STREET_NAME in _terms_box(page, "depressant_drugs").input_value()
        assert "zannies" in page.locator("#latest-note").inner_text()
        page.locator("#history-link").click()
        newest = page.locator("#history tr.entry").first
        assert newest.get_attribute("data-version") == "1.1.0"
        assert "Added the street name zannies" in newest.inner_text() and "Dr Example" in newest.inner_text()
        assert page.locator('#history tr.entry[data-version="1.0.0"]').count() == 1
        keep_screenshot(page, "studio-history.png")
        changelog = (root / RUBRIC / "CHANGELOG.md").read_text(encoding="utf-8")
        assert "1.1.0" in changelog and "Added the street name zannies" in changelog
        saved = rubric_file.read_text(encoding="utf-8")
        changed = [line for line in saved.splitlines() if line not in original.splitlines()]
        assert len(changed) <= 6, changed  # version, note and the re-wrapped word list: the rest untouched

        # 6. Restore the old version: a new version with the old content.
        page.locator('#history tr.entry[data-version="1.0.0"] a').first.click()
        page.wait_for_selector("#diff")
        assert STREET_NAME in page.locator("#diff").inner_text()
        keep_screenshot(page, "studio-version.png")
        page.locator("#restore-note").fill("The street name matched too many harmless messages")
        page.locator("#restore").click()
        page.wait_for_url(re.compile(r"\?saved=1\.2\.0$"))
        assert "version 1.2.0" in page.locator("#current-version").inner_text()
        assert STREET_NAME not in _terms_box(page, "depressant_drugs").input_value()
        page.goto(base + f"/rubrics/{RUBRIC}/history")
        restored = page.locator('#history tr.entry[data-version="1.2.0"]')
        assert "restored from 1.0.0" in restored.inner_text()
        assert errors == [], errors

    rubric = load_rubric_folder(root / RUBRIC)
    assert rubric.version == "1.2.0" and STREET_NAME not in rubric.spec.lexicons["depressant_drugs"].terms
    assert rubric.spec.change_note.startswith("Restored version 1.0.0")
