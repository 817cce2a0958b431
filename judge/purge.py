"""Remove the stored conversation text of a run folder, keeping its labels and metrics.

A run folder quotes the chat logs it judged: every verdict carries the response, the judge's prompts
and raw replies, and the evidence quotes; a target run also keeps the transcripts it played. Once a
run has been reviewed, `purge` rewrites the folder so that what is left is what the figures need:
ids, hashes, labels, the deciding tier, each sub-question's answer value, the rule that fired, usage,
the cost ledger and the sampling agreement. So `psyjudge eval`, `gate`, `compare` and `report` still
work on it (the report then shows figures, not quotes).

What happens to each file:

- results.jsonl, record_verdicts.jsonl, probe_results.jsonl: every verdict is rewritten with its
  response, evidence quotes, rationales, judged text, judge prompts and raw replies blanked. A line
  that cannot be read is dropped (it may hold text and no figure is drawn from it).
- responses.jsonl and transcripts.jsonl (a target run's played conversations) are deleted. A rerun of
  the target run plays the cases again (the target's reply cache, if kept, makes that cheap).
- refusals.jsonl: the refusal readings keep label, confidence and usage; evidence, reason and raw
  reply are blanked.
- quarantine.jsonl: rows keep source, line and reason; the raw row is blanked.
- release.json / release.md: the refusal evidence quoted per case is blanked and release.md rewritten.
- probes.json: the perturbed responses quoted as example flips are blanked.
- report.html is deleted: it quotes responses. `psyjudge report` rebuilds one from what is left,
  without the quotes; the text itself is gone for good.
- compare.html / compare.md / compare.json written into the folder are deleted likewise (they can be
  rebuilt with `psyjudge compare`).

The judge and target caches are not in the run folder and are not touched; they also hold text.

Every rewrite is atomic (judge.atomic), so a crash leaves each file whole, old or new. Purging twice
is harmless: the second pass finds nothing to remove. A PURGED file (JSON) records when and what.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from judge.atomic import write_text_atomic

PURGED_FILE = "PURGED"
VERDICT_FILES = ("results.jsonl", "record_verdicts.jsonl", "probe_results.jsonl")
DELETED_FILES = ("responses.jsonl", "transcripts.jsonl", "report.html", "compare.html", "compare.md",
                 "compare.json")
REFUSALS_FILE = "refusals.jsonl"
QUARANTINE_FILE = "quarantine.jsonl"
RELEASE_JSON = "release.json"
RELEASE_MD = "release.md"
PROBES_JSON = "probes.json"
RUN_MARKERS = ("results.jsonl", "probe_results.jsonl", "release.json", "transcripts.jsonl", "summary.json")


class PurgeError(ValueError):
    """The folder is not a psyjudge run folder; the message says what was expected."""


@dataclass
class PurgeSummary:
    """What one purge removed, per file: values blanked, lines dropped, files deleted."""

    run_dir: Path
    blanked: dict[str, int] = field(default_factory=dict)
    dropped_lines: dict[str, int] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)

    @property
    def removed_anything(self) -> bool:
        return bool(self.deleted or any(self.blanked.values()) or any(self.dropped_lines.values()))

    def as_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "blanked": self.blanked, "dropped_lines": self.dropped_lines,
                "deleted": self.deleted}


class _Blanker:
    """Blanks text fields in place and counts the values it changed."""

    def __init__(self) -> None:
        self.count = 0

    def set(self, holder: dict[str, Any], key: str, empty: Any) -> None:
        if key in holder and holder[key] not in (empty, None):
            holder[key] = empty
            self.count += 1

    def verdict(self, row: dict[str, Any]) -> None:
        """A Verdict's JSON form (judge.schema.Verdict), nested rubric verdicts included."""
        self.set(row, "response", "")
        for tier in row.get("tiers") or []:
            self.tier(tier)
        for inner in row.get("rubric_results") or []:
            self.verdict(inner)

    def tier(self, tier: dict[str, Any]) -> None:
        self.set(tier, "judged_text", None)
        for answer in tier.get("answers") or []:
            # Values, spans and sources stay: the figures and the rules need them. Quotes and the
            # judge's rationale restate the conversation.
            self.set(answer, "evidence", "")
            self.set(answer, "rationale", "")
        for exchange in tier.get("exchanges") or []:
            self.set(exchange, "messages", [])
            self.set(exchange, "raw_reply", None)

    def refusal(self, row: dict[str, Any]) -> None:
        reading = row.get("reading")
        if isinstance(reading, dict):
            self.set(reading, "evidence", "")
            self.set(reading, "reason", "")
            self.set(reading, "raw_reply", None)


def _rewrite_jsonl(path: Path, blank: Callable[[dict[str, Any]], None], summary: PurgeSummary,
                   blanker: _Blanker) -> None:
    before, dropped = blanker.count, 0

    def lines() -> Iterator[str]:
        nonlocal dropped
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    row = None
                if not isinstance(row, dict):
                    dropped += 1  # a torn or foreign line: it may hold text and feeds no figure
                    continue
                blank(row)
                yield json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"

    # Rows are streamed into the temporary file beside the original, so a large results file is
    # never held in memory, and the rename replaces it in one step.
    write_text_atomic(path, lines())
    summary.blanked[path.name] = blanker.count - before
    summary.dropped_lines[path.name] = dropped


def _rewrite_json(path: Path, blank: Callable[[dict[str, Any]], None], summary: PurgeSummary,
                  blanker: _Blanker) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise PurgeError(f"{path}: not JSON ({exc}); fix or delete it, then purge again") from exc
    if not isinstance(data, dict):
        raise PurgeError(f"{path}: expected a JSON object")
    before = blanker.count
    blank(data)
    summary.blanked[path.name] = blanker.count - before
    if blanker.count > before:
        write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return data


def _release(blanker: _Blanker) -> Callable[[dict[str, Any]], None]:
    def blank(data: dict[str, Any]) -> None:
        for outcome in data.get("outcomes") or []:
            blanker.set(outcome, "refusal_evidence", "")
    return blank


def _probes(blanker: _Blanker) -> Callable[[dict[str, Any]], None]:
    def blank(data: dict[str, Any]) -> None:
        for probe in data.get("probes") or []:
            for example in probe.get("examples") or []:
                blanker.set(example, "probed_text", "")
    return blank


def purge_run(run_dir: Path) -> PurgeSummary:
    """Remove the conversation text stored in `run_dir` (see the module docstring) and return what
    was removed. Raises PurgeError when the folder is not a run folder."""
    if not run_dir.is_dir():
        raise PurgeError(f"{run_dir}: no such folder")
    if not any((run_dir / name).exists() for name in RUN_MARKERS):
        raise PurgeError(f"{run_dir}: not a psyjudge run folder (none of {', '.join(RUN_MARKERS)} is in it)")
    summary = PurgeSummary(run_dir)
    blanker = _Blanker()
    for name in VERDICT_FILES:
        if (run_dir / name).is_file():
            _rewrite_jsonl(run_dir / name, blanker.verdict, summary, blanker)
    if (run_dir / REFUSALS_FILE).is_file():
        _rewrite_jsonl(run_dir / REFUSALS_FILE, blanker.refusal, summary, blanker)
    if (run_dir / QUARANTINE_FILE).is_file():
        _rewrite_jsonl(run_dir / QUARANTINE_FILE, lambda row: blanker.set(row, "raw", ""), summary, blanker)
    if (run_dir / RELEASE_JSON).is_file():
        _rewrite_json(run_dir / RELEASE_JSON, _release(blanker), summary, blanker)
        _rewrite_release_markdown(run_dir, summary)
    if (run_dir / PROBES_JSON).is_file():
        _rewrite_json(run_dir / PROBES_JSON, _probes(blanker), summary, blanker)
    for name in DELETED_FILES:
        if (run_dir / name).is_file():
            (run_dir / name).unlink()
            summary.deleted.append(name)
    # A temporary file left by a crashed atomic write holds whatever was being written.
    for leftover in run_dir.glob(".*.tmp"):
        leftover.unlink()
        summary.deleted.append(leftover.name)
    _mark(run_dir, summary)
    return summary


def _rewrite_release_markdown(run_dir: Path, summary: PurgeSummary) -> None:
    """release.md quotes the refusal evidence: rebuild it from the blanked release.json."""
    from judge.release_report import ReleaseReport, format_release

    report = ReleaseReport.model_validate_json((run_dir / RELEASE_JSON).read_text(encoding="utf-8"))
    write_text_atomic(run_dir / RELEASE_MD, format_release(report))


def _mark(run_dir: Path, summary: PurgeSummary) -> None:
    """The PURGED file: the first purge's time, the last one's, and what each removed. Verdict rows
    carry no marker of their own (judge.schema.Verdict is strict), so this file is the record."""
    path = run_dir / PURGED_FILE
    history: list[dict[str, Any]] = []
    if path.is_file():
        try:
            history = list(json.loads(path.read_text(encoding="utf-8")).get("purges") or [])
        except (ValueError, AttributeError):
            history = []
    now = datetime.now(UTC).isoformat(timespec="seconds")
    entry = {"at": now, **{k: v for k, v in summary.as_dict().items() if k != "run_dir"}}
    write_text_atomic(path, json.dumps({"purged": True, "purges": [*history, entry]}, indent=2) + "\n")


def is_purged(run_dir: Path) -> bool:
    """Whether `purge_run` has been run on the folder (its verdicts carry no text)."""
    return (run_dir / PURGED_FILE).is_file()
