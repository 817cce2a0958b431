"""The HTML report of a run folder: one self-contained file that opens from disk with the network off.

Everything the page shows is read from the run folder (results.jsonl, record_verdicts.jsonl,
summary.json, and eval.json, probes.json and a target run's release.json when they exist). The
figures are matplotlib (Agg) rendered to inline <svg>; there is no script, no stylesheet, font or
image from anywhere else, and a Content-Security-Policy that forbids them in case a later edit slips
one in. Responses are untrusted text: the template escapes everything (autoescape) and the only
markup built here is the evidence highlighting, which escapes every piece of text it wraps.

results.jsonl is read twice and never held: once for the line that holds each (record, rubric)
verdict last (a rerun appends a newer verdict for the same key), once to add up those lines. The
offenders list is the only thing that keeps text, and it is bounded.
"""

from __future__ import annotations

import heapq
import io
import itertools
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from markupsafe import Markup, escape
from pydantic import BaseModel, ValidationError

from judge.atomic import ensure_private_dir, write_text_atomic
from judge.ledger import CascadeSummary, TierSpend, spends_of, summarise_ledgers
from judge.outputs import EVAL_FILE, PROBES_FILE, Estimate, EvalReport, ProbeReport
from judge.release_report import RELEASE_FILE, ReleaseReport, pct
from judge.runner import RECORD_VERDICTS_FILE, RESULTS_FILE, SUMMARY_FILE
from judge.schema import Answer

_M = TypeVar("_M", bound=BaseModel)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from judge.redact import Redactor

REPORT_FILE = "report.html"
TEMPLATE = "report.html.j2"
LABELS = ("SAFE", "BORDERLINE", "HARMFUL", "ERROR")
COLOURS = {"SAFE": "#3a8f5c", "BORDERLINE": "#e0a526", "HARMFUL": "#c0392b", "ERROR": "#7f8c8d"}
OUTCOMES = ("decided", "abstained", "error", "compared", "skipped")
OUTCOME_COLOURS = {"decided": "#2c6fbb", "abstained": "#9ecae1", "error": "#c0392b", "compared": "#b39ddb",
                   "skipped": "#e5e5e5"}
MAX_OFFENDERS = 25
MAX_SHOWN_CHARS = 4000
"""Characters of a response shown in the offenders list; marks beyond them are listed below it."""
MAX_CATEGORIES = 30
"""Categories drawn and tabulated; the rest are summed into one row (a free-text column can have thousands)."""
NO_CATEGORY = "(none)"
REDACTED_TITLE = " (redacted)"


class ReportError(ValueError):
    """The run folder, or a file in it, cannot make a report; the message names the file and field."""


# --- reading the run folder ---------------------------------------------------------------------

_STRING = rb'("(?:[^"\\]|\\.)*")'
_KEY_PREFIX = re.compile(rb'^\{"record_id":' + _STRING + rb',"record_sha256":"[0-9a-f]*","rubric":' + _STRING)


def _key_of(line: bytes) -> tuple[str, str] | None:
    """The (record id, rubric) of a results line. A complete line as pydantic writes it starts with
    both fields, so they are read from its first bytes; anything else is parsed in full."""
    match = _KEY_PREFIX.match(line) if line.endswith(b"}\n") else None
    if match:
        return json.loads(match[1]), json.loads(match[2])
    try:
        row = json.loads(line)
        return str(row["record_id"]), str(row["rubric"])
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class _Rows:
    """The latest verdict row per (record, rubric) of a results.jsonl, read on demand."""

    path: Path
    keep: set[int] | None
    """Line numbers to read: the last one of each key; None when no key repeats (all of them)."""
    bad: set[int]
    """Line numbers that could not be read (a torn last line, a hand edit): counted, never guessed at."""

    @property
    def unreadable(self) -> int:
        return len(self.bad)

    @classmethod
    def scan(cls, path: Path) -> _Rows:
        latest: dict[tuple[str, str], int] = {}
        bad: set[int] = set()
        lines = 0
        with open(path, "rb") as handle:
            for number, line in enumerate(handle):
                if not line.strip():
                    continue
                lines += 1
                key = _key_of(line)
                if key is None:
                    bad.add(number)
                else:
                    latest[key] = number
        keep = None if len(latest) == lines - len(bad) else set(latest.values())
        return cls(path, keep, bad)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with open(self.path, "rb") as handle:
            for number, line in enumerate(handle):
                if number in self.bad or not line.strip() or (self.keep is not None and number not in self.keep):
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict) or "record_id" not in row or "rubric" not in row:
                        raise ValueError("not a verdict")
                except ValueError:
                    self.bad.add(number)
                    continue
                yield row


def _load_model(path: Path, model: type[_M]) -> _M:
    try:
        return model.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(the whole file)"
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise ReportError(f"{path}: field {where}: {first['msg']}{more}") from exc
    except OSError as exc:
        raise ReportError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _load_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / SUMMARY_FILE
    if not path.exists():
        return {}
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ReportError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(summary, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(summary).__name__}")
    return summary


def _category(row: Mapping[str, Any], column: str) -> str | None:
    extra = (row.get("meta") or {}).get("extra") or {}
    if column not in extra:
        return None
    value = extra[column]
    return NO_CATEGORY if value is None or value == "" else str(value)


# --- evidence highlighting ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Mark:
    """Evidence for sub-question `question` at text[start:end]."""

    start: int
    end: int
    question: str


def highlight(text: str, marks: Sequence[Mark]) -> Markup:
    """`text` escaped, with <mark> around each mark's characters and the sub-question ids after
    each mark's end. Overlapping marks split the text where any of them starts or ends; a piece
    under several marks names all of them (data-q) and is drawn darker. Marks outside the text are
    dropped (the caller lists them)."""
    usable = [m for m in marks if 0 <= m.start < m.end <= len(text)]
    bounds = sorted({0, len(text), *(m.start for m in usable), *(m.end for m in usable)})
    out: list[str] = []
    for a, b in itertools.pairwise(bounds):
        covering = sorted({m.question for m in usable if m.start <= a and b <= m.end})
        piece = escape(text[a:b])
        if covering:
            names = " ".join(covering)
            out.append(Markup('<mark class="m{}" data-q="{}" title="{}">{}</mark>').format(
                min(len(covering), 3), names, ", ".join(covering), piece))
        else:
            out.append(piece)
        ending = sorted({m.question for m in usable if m.end == b})
        if ending:
            out.append(Markup('<sup class="qid">{}</sup>').format(", ".join(ending)))
    return Markup("").join(out)


_QUOTE_TRIM = " \t\r\n\"'“”‘’«»"


def find_quote(text: str, quote: str) -> tuple[int, int] | None:
    """Where a judge's verbatim quote is in `text`: exactly, else ignoring case and runs of
    whitespace (judges re-wrap lines and fix capitals). Surrounding quote marks and a trailing
    ellipsis are not part of the quote."""
    q = quote.strip(_QUOTE_TRIM)
    q = re.sub(r"(\.\.\.|…)$", "", q).strip(_QUOTE_TRIM)
    if not q:
        return None
    at = text.find(q)
    if at >= 0:
        return at, at + len(q)
    pattern = r"\s+".join(re.escape(word) for word in q.split())
    match = re.search(pattern, text, re.IGNORECASE)
    return (match.start(), match.end()) if match else None


@dataclass
class Evidence:
    """A verdict's "yes" answers placed on its response, and those that could not be placed."""

    html: Markup
    shown_chars: int
    total_chars: int
    marked: list[str] = field(default_factory=list)
    not_found: list[tuple[str, str]] = field(default_factory=list)
    """(sub-question, quote): an LLM quote that is not in the response (often a quote of the user's turn)."""
    elsewhere: list[tuple[str, str, str]] = field(default_factory=list)
    """(sub-question, where, quote): programmatic evidence in the conversation, or beyond the shown text."""
    unquoted: list[str] = field(default_factory=list)
    """Sub-questions answered yes with no quote."""


def place_evidence(response: str, answers: Sequence[Mapping[str, Any] | Answer], *,
                   shown_chars: int = MAX_SHOWN_CHARS, redactor: Redactor | None = None) -> Evidence:
    """Highlight the evidence of every "yes" answer in `response` (its first `shown_chars` characters).
    A programmatic answer's span is used as it is (it indexes the original response when `where` is
    "response"); an LLM answer's quote is looked for in the response. Answers are judge.schema.Answer
    models or their JSON form (a results.jsonl row's).

    With a `redactor` (judge.redact.Redactor) the shown text and every quote are redacted: the marks
    are placed on the original text (where the quotes were found) and then moved onto the redacted
    text, a mark that ends inside a redacted span widened to cover its placeholder."""
    shown = response[:shown_chars]
    marks: list[Mark] = []
    ev = Evidence(Markup(""), len(shown), len(response))
    for item in answers:
        answer = item.model_dump(mode="json") if isinstance(item, Answer) else item
        if answer.get("value") != "yes":
            continue
        qid = str(answer.get("question_id", "?"))
        quote = str(answer.get("evidence") or "")
        span = answer.get("span")
        where = answer.get("where")
        located: tuple[int, int] | None = None
        if span is not None and where not in (None, "response"):
            ev.elsewhere.append((qid, str(where), _scrub(quote, redactor)))
            continue
        if span is not None and len(span) == 2 and 0 <= int(span[0]) < int(span[1]) <= len(response):
            located = (int(span[0]), int(span[1]))
        elif quote.strip():
            located = find_quote(response, quote)
        if located is None:
            if quote.strip():
                ev.not_found.append((qid, _scrub(quote, redactor)))
            else:
                ev.unquoted.append(qid)
            continue
        start, end = located
        if start >= len(shown):
            ev.elsewhere.append((qid, f"response, character {start:,}", _scrub(response[start:end], redactor)))
            continue
        marks.append(Mark(start, min(end, len(shown)), qid))
        ev.marked.append(qid)
    if redactor is not None:
        shown, marks = redact_marked(shown, marks, redactor)
    ev.html = highlight(shown, marks)
    return ev


def _scrub(text: str, redactor: Redactor | None) -> str:
    return text if redactor is None or not text else redactor.redact(text).text


def redact_marked(text: str, marks: Sequence[Mark], redactor: Redactor) -> tuple[str, list[Mark]]:
    """`text` with its personal data replaced by the redactor's placeholders, and `marks` moved onto
    it. The redacted text is rebuilt from the spans the redactor reports, so every mark's offset can
    be carried over; should the redactor's own text differ (spans it does not report), its text is
    used and the marks are dropped, since no offset on it can be trusted: privacy before highlights."""
    redaction = redactor.redact(text)
    found = sorted((f for f in redaction.found if 0 <= f.start < f.end <= len(text)), key=lambda f: (f.start, -f.end))
    expected = redaction.text
    moved: list[tuple[int, int, int, int]] = []  # original start, end -> redacted start, end
    out: list[str] = []
    pos = length = 0
    for item in found:
        if item.start < pos:
            continue  # nested in a span already replaced
        out.append(text[pos:item.start])
        length += item.start - pos
        out.append(item.placeholder)
        moved.append((item.start, item.end, length, length + len(item.placeholder)))
        length += len(item.placeholder)
        pos = item.end
    out.append(text[pos:])
    redacted = "".join(out)
    if redacted != expected:
        return expected, []

    def at(index: int, end: bool) -> int:
        shift = 0
        for start, stop, new_start, new_stop in moved:
            if index <= start:
                break
            if index >= stop:
                shift = new_stop - stop
                continue
            return new_stop if end else new_start  # inside a placeholder: cover all of it
        return index + shift

    return redacted, [Mark(at(m.start, False), at(m.end, True), m.question) for m in marks]


# --- figures ------------------------------------------------------------------------------------

def _plain(text: str, limit: int = 48) -> str:
    """A data value as a figure label: never read as mathtext, and not too long."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("$", r"\$")


class _Figures:
    """Renders matplotlib figures to inline SVG, each with ids of its own (several share the page)."""

    def __init__(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        self._count = 0

    def new(self, width: float, height: float) -> Figure:
        from matplotlib.figure import Figure

        return Figure(figsize=(width, height), layout="constrained")

    def svg(self, fig: Figure, label: str) -> Markup:
        import matplotlib

        self._count += 1
        prefix = f"f{self._count}"
        buf = io.StringIO()
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": prefix}):
            fig.savefig(buf, format="svg", metadata={"Date": None})
        text = buf.getvalue()
        # Inline SVG needs neither the XML declaration nor the DOCTYPE, and the metadata block only
        # names matplotlib. Ids get the figure's prefix so that two figures never share one.
        text = text[text.index("<svg"):]
        text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)
        text = re.sub(r"<[^>]+>", lambda tag: _prefix_ids(tag.group(), prefix), text)
        text = text.replace("<svg ", f'<svg role="img" aria-label="{escape(label)}" class="chart" ', 1)
        return Markup(text)


def _prefix_ids(tag: str, prefix: str) -> str:
    """An SVG tag with its id and its references to ids (url(#..), xlink:href="#..") prefixed. Only tags
    are rewritten: text between them is a label from the data, left as it is."""
    tag = re.sub(r'(\s)id="', rf'\1id="{prefix}-', tag)
    tag = tag.replace("url(#", f"url(#{prefix}-")
    return tag.replace('xlink:href="#', f'xlink:href="#{prefix}-')


_RC: dict[Any, Any] = {
    "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial", "Helvetica"],
    "font.size": 9, "axes.spines.top": False, "axes.spines.right": False}


def _stacked_bars(ax: Axes, names: Sequence[str], parts: Sequence[Sequence[float]], keys: Sequence[str],
                  colours: Mapping[str, str], counts: Sequence[Sequence[int]] | None = None) -> None:
    """Horizontal bars, one per name, of shares (each row sums to 1 or 0), stacked in `keys` order."""
    positions = list(range(len(names)))[::-1]
    left = [0.0] * len(names)
    for k, key in enumerate(keys):
        widths = [row[k] for row in parts]
        if not any(widths):
            continue
        bars = ax.barh(positions, widths, left=left, color=colours[key], label=key, height=0.7,
                       edgecolor="white", linewidth=0.5)
        if counts is not None:
            texts = [str(c[k]) if w >= 0.06 else "" for c, w in zip(counts, widths, strict=True)]
            ax.bar_label(bars, labels=texts, label_type="center", fontsize=7,
                         color="black" if key in ("BORDERLINE", "skipped", "abstained") else "white")
        left = [a + w for a, w in zip(left, widths, strict=True)]
    ax.set_yticks(positions, [_plain(n) for n in names])
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    if ax.get_legend_handles_labels()[0]:  # all-zero rows (e.g. a tier that never ran) draw no bar
        ax.legend(ncols=len(keys), loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False, fontsize=8)


def _shares(counter: Mapping[str, int], keys: Sequence[str]) -> tuple[list[float], list[int]]:
    counts = [int(counter.get(k, 0)) for k in keys]
    total = sum(counts)
    return [c / total if total else 0.0 for c in counts], counts


def fig_labels(figs: _Figures, rows: Sequence[tuple[str, Mapping[str, int]]], label: str, xlabel: str) -> Markup:
    import matplotlib

    with matplotlib.rc_context(_RC):
        fig = figs.new(7.5, 0.9 + 0.32 * len(rows))
        ax = fig.add_subplot()
        shares = [_shares(counter, LABELS) for _, counter in rows]
        _stacked_bars(ax, [n for n, _ in rows], [s for s, _ in shares], LABELS, COLOURS, [c for _, c in shares])
        ax.set_xlabel(xlabel)
        return figs.svg(fig, label)


def fig_confusion(figs: _Figures, labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> Markup:
    import matplotlib

    with matplotlib.rc_context(_RC):
        fig = figs.new(5.0, 4.2)
        ax = fig.add_subplot()
        totals = [sum(row) for row in matrix]
        shares = [[c / t if t else 0.0 for c in row] for row, t in zip(matrix, totals, strict=True)]
        # pcolormesh, not imshow: vector cells, where imshow would embed a raster image (and so would a
        # colorbar; each cell is labelled with its count and share instead).
        ax.pcolormesh(shares, cmap="Blues", vmin=0.0, vmax=1.0, edgecolors="white", linewidth=1.0)
        ax.invert_yaxis()
        ax.set_aspect("equal")
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                ax.text(j + 0.5, i + 0.5, f"{count}\n{shares[i][j]:.0%}", ha="center", va="center", fontsize=9,
                        color="white" if shares[i][j] > 0.55 else "black")
        ticks = [k + 0.5 for k in range(len(labels))]
        ax.set_xticks(ticks, [_plain(x) for x in labels])
        ax.set_yticks(ticks, [_plain(x) for x in labels])
        ax.set_xlabel("psyjudge")
        ax.set_ylabel("gold")
        return figs.svg(fig, "confusion matrix: gold rows, psyjudge columns")


def fig_tiers(figs: _Figures, ledger: CascadeSummary) -> Markup:
    import matplotlib

    with matplotlib.rc_context(_RC):
        fig = figs.new(7.5, 0.9 + 0.36 * max(1, len(ledger.by_tier)))
        ax = fig.add_subplot()
        n = ledger.verdicts or 1
        counts = [[t.decided, t.abstained, t.errors, t.compared, t.skipped] for t in ledger.by_tier]
        parts = [[c / n for c in row] for row in counts]
        _stacked_bars(ax, [t.tier for t in ledger.by_tier], parts, OUTCOMES, OUTCOME_COLOURS, counts)
        ax.set_xlabel(f"share of the run's {ledger.verdicts} verdicts")
        return figs.svg(fig, "what each tier did, as a share of verdicts")


def fig_hits(figs: _Figures, rubric: str, rows: Sequence[QuestionHits], decided: int) -> Markup:
    import matplotlib

    with matplotlib.rc_context(_RC):
        fig = figs.new(7.5, 0.8 + 0.24 * len(rows))
        ax = fig.add_subplot()
        positions = list(range(len(rows)))[::-1]
        d = decided or 1
        ax.barh(positions, [r.answered / d for r in rows], color="#d6e4f0", height=0.75, label="answered")
        bars = ax.barh(positions, [r.yes / d for r in rows], color="#2c6fbb", height=0.45, label="yes")
        ax.bar_label(bars, labels=[f"{r.yes / d:.0%}" for r in rows], padding=3, fontsize=7)
        ax.set_yticks(positions, [_plain(r.question) for r in rows])
        ax.set_xlim(0, 1.08)
        ax.xaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
        ax.set_xlabel(f"share of the {decided} {_plain(rubric)} verdicts with a deciding tier")
        ax.legend(ncols=2, loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False, fontsize=8)
        return figs.svg(fig, f"sub-question hit rates, {rubric}")


def fig_probes(figs: _Figures, report: ProbeReport) -> Markup:
    import matplotlib

    with matplotlib.rc_context(_RC):
        rows = report.probes
        fig = figs.new(7.5, 1.0 + 0.36 * max(1, len(rows)))
        ax = fig.add_subplot()
        positions = list(range(len(rows)))[::-1]
        for y, probe in zip(positions, rows, strict=True):
            est = probe.flip_rate
            if est.value is None:
                continue
            low = est.value - est.low if est.low is not None else 0.0
            high = est.high - est.value if est.high is not None else 0.0
            ax.errorbar([est.value], [y], xerr=[[max(low, 0.0)], [max(high, 0.0)]], fmt="o", color="#2c6fbb",
                        ecolor="#2c6fbb", capsize=3, label="flip rate (Wilson 95%)" if y == positions[0] else None)
        targets = [(y, p.target) for y, p in zip(positions, rows, strict=True) if p.target is not None]
        if targets:
            ax.scatter([t for _, t in targets], [y for y, _ in targets], marker="|", s=220, color="#c0392b",
                       linewidths=2, label="target", zorder=3)
        ax.set_yticks(positions, [_plain(p.probe) for p in rows])
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_xlim(-0.02, 1.02)
        ax.xaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
        ax.set_xlabel("share of pairs whose label flipped")
        ax.grid(axis="x", color="#eeeeee")
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncols=2, frameon=False, fontsize=8)
        return figs.svg(fig, "bias-probe flip rates with Wilson intervals and targets")


def draw_intervals(ax: Axes, names: Sequence[str], series: Sequence[tuple[str, str, Sequence[Estimate]]],
                   xlabel: str) -> None:
    """Dot-and-whisker rows: one row per name (top to bottom), one dot per series, dodged within the row,
    with its 95% interval as whiskers. An undefined rate draws nothing; the table beside says n/a."""
    positions = list(range(len(names)))[::-1]
    step = 0.6 / max(len(series), 1)
    for i, (label, colour, estimates) in enumerate(series):
        offset = (len(series) - 1) / 2 * step - i * step  # the first series on top of each row
        points = [(y + offset, e) for y, e in zip(positions, estimates, strict=True) if e.value is not None]
        if not points:
            continue
        xs = [float(e.value) for _, e in points if e.value is not None]
        below = [max(e.value - e.low, 0.0) if e.value is not None and e.low is not None else 0.0 for _, e in points]
        above = [max(e.high - e.value, 0.0) if e.value is not None and e.high is not None else 0.0 for _, e in points]
        ax.errorbar(xs, [y for y, _ in points], xerr=[below, above], fmt="o", color=colour, ecolor=colour,
                    capsize=3, markersize=4.5, linewidth=1.2, label=label)
    ax.set_yticks(positions, [_plain(n) for n in names])
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlim(-0.02, 1.02)
    ax.xaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", color="#eeeeee")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncols=len(series), frameon=False, fontsize=8)


RELEASE_COLOURS = {"harm": "#c0392b", "over_refusal": "#2c6fbb", "partial": "#9ecae1"}


def fig_release(figs: _Figures, release: ReleaseReport) -> Markup:
    """Harm rate on unsafe prompts beside over-refusal on safe ones, per category and overall."""
    import matplotlib

    rows = [*release.by_category, release.overall]
    names = [r.category for r in rows]
    with matplotlib.rc_context(_RC):
        fig = figs.new(7.5, 1.2 + 0.42 * len(rows))
        harm, refusal = fig.subplots(1, 2, sharey=True)
        draw_intervals(harm, names, [("harm rate (Wilson 95%)", RELEASE_COLOURS["harm"],
                                      [r.harm_rate for r in rows])], "HARMFUL among graded unsafe cases")
        draw_intervals(refusal, names, [
            ("over-refusal", RELEASE_COLOURS["over_refusal"], [r.over_refusal for r in rows]),
            ("with partial", RELEASE_COLOURS["partial"], [r.over_refusal_with_partial for r in rows])],
            "safe cases refused, among those read")
        refusal.tick_params(axis="y", labelleft=False)
        return figs.svg(fig, "harm rate and over-refusal per category with Wilson intervals")


# --- adding up the run --------------------------------------------------------------------------

@dataclass
class QuestionHits:
    question: str
    answered: int = 0
    yes: int = 0


@dataclass
class Offender:
    record_id: str
    rubric: str
    label: str
    decided_by: str | None
    confidence: float | None
    rule: str | None
    degraded: bool
    error: str | None
    category: str | None
    evidence: Evidence


@dataclass
class _Tally:
    """What one pass over the latest verdict rows adds up."""

    category_column: str
    labels: Counter[str] = field(default_factory=Counter)
    degraded: Counter[str] = field(default_factory=Counter)
    by_rubric: dict[str, Counter[str]] = field(default_factory=dict)
    degraded_by_rubric: Counter[str] = field(default_factory=Counter)
    by_category: dict[str, Counter[str]] = field(default_factory=dict)
    hits: dict[str, dict[str, QuestionHits]] = field(default_factory=dict)
    decided: Counter[str] = field(default_factory=Counter)
    judges: Counter[str] = field(default_factory=Counter)
    first_created: str | None = None
    last_created: str | None = None
    redactor: Redactor | None = None
    _heaps: dict[str, list[tuple[float, int, Offender]]] = field(default_factory=dict)
    _seq: int = 0

    def add(self, row: Mapping[str, Any]) -> None:
        label = str(row.get("label"))
        rubric = str(row["rubric"])
        self.labels[label] += 1
        self.by_rubric.setdefault(rubric, Counter())[label] += 1
        if row.get("degraded"):
            self.degraded[label] += 1
            self.degraded_by_rubric[rubric] += 1
        category = _category(row, self.category_column)
        if category is not None:
            self.by_category.setdefault(category, Counter())[label] += 1
        created = row.get("created_at")
        if isinstance(created, str):
            self.first_created = min(self.first_created or created, created)
            self.last_created = max(self.last_created or created, created)
        tiers = row.get("tiers") or []
        for tier in tiers:
            if tier.get("tier") == "llm" and tier.get("model"):
                self.judges[str(tier["model"])] += 1
        deciding = next((t for t in tiers if t.get("tier") == row.get("decided_by")), None)
        if deciding is None:
            return
        self.decided[rubric] += 1
        questions = self.hits.setdefault(rubric, {})
        for answer in deciding.get("answers") or []:
            q = str(answer.get("question_id"))
            hit = questions.get(q) or questions.setdefault(q, QuestionHits(q))
            hit.answered += 1
            hit.yes += answer.get("value") == "yes"
        if label in ("HARMFUL", "BORDERLINE"):
            self._offer(row, deciding, label, category)

    def _offer(self, row: Mapping[str, Any], deciding: Mapping[str, Any], label: str, category: str | None) -> None:
        """Keep the MAX_OFFENDERS most confident verdicts of the label, earliest first on a tie."""
        heap = self._heaps.setdefault(label, [])
        confidence = deciding.get("confidence")
        key = float(confidence) if confidence is not None else -1.0
        self._seq += 1
        if len(heap) >= MAX_OFFENDERS and (key, -self._seq) <= heap[0][:2]:
            return
        rule = deciding.get("fallback_rule") if row.get("degraded") else deciding.get("fired_rule")
        offender = Offender(str(row["record_id"]), str(row["rubric"]), label, row.get("decided_by"),
                            confidence, rule, bool(row.get("degraded")), row.get("error"), category,
                            place_evidence(str(row.get("response") or ""), deciding.get("answers") or [],
                                           redactor=self.redactor))
        item = (key, -self._seq, offender)
        if len(heap) < MAX_OFFENDERS:
            heapq.heappush(heap, item)
        else:
            heapq.heapreplace(heap, item)

    def offenders(self) -> list[Offender]:
        """HARMFUL verdicts, most confident first, then BORDERLINE ones up to MAX_OFFENDERS in all."""
        out: list[Offender] = []
        for label in ("HARMFUL", "BORDERLINE"):
            ranked = sorted(self._heaps.get(label, []), key=lambda item: (item[0], item[1]), reverse=True)
            out += [item[2] for item in ranked][: MAX_OFFENDERS - len(out)]
        return out


@dataclass
class _RecordLevel:
    source: str
    labels: Counter[str] = field(default_factory=Counter)
    degraded: int = 0
    by_category: dict[str, Counter[str]] = field(default_factory=dict)


def _record_level(run_dir: Path, tally: _Tally, multi: bool, column: str) -> _RecordLevel | None:
    """One label per record: record_verdicts.jsonl with several rubrics, the verdicts themselves with one."""
    if not multi:
        return _RecordLevel(RESULTS_FILE, Counter(tally.labels), sum(tally.degraded.values()), tally.by_category)
    path = run_dir / RECORD_VERDICTS_FILE
    if not path.exists():
        return None
    level = _RecordLevel(RECORD_VERDICTS_FILE)
    with open(path, "rb") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            label = str(row.get("label"))
            level.labels[label] += 1
            level.degraded += bool(row.get("degraded"))
            category = _category(row, column)
            if category is not None:
                level.by_category.setdefault(category, Counter())[label] += 1
    return level


def _top_categories(by_category: Mapping[str, Counter[str]]) -> list[tuple[str, Counter[str]]]:
    ranked = sorted(by_category.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    if len(ranked) <= MAX_CATEGORIES:
        return ranked
    rest: Counter[str] = Counter()
    for _, counter in ranked[MAX_CATEGORIES - 1:]:
        rest.update(counter)
    return [*ranked[: MAX_CATEGORIES - 1], (f"({len(ranked) - MAX_CATEGORIES + 1} other categories)", rest)]


# --- the page -----------------------------------------------------------------------------------

def _resolve_run(run_dir: Path) -> Path:
    if run_dir.is_file() and run_dir.name == RESULTS_FILE:
        run_dir = run_dir.parent
    if not run_dir.exists():
        raise ReportError(f"{run_dir}: no such folder")
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: not a folder (give the run folder that psyjudge score --out wrote)")
    if not (run_dir / RESULTS_FILE).is_file():
        raise ReportError(f"{run_dir}: not a psyjudge run folder: it has no {RESULTS_FILE} "
                          f"(make one with: psyjudge score INPUT --rubric RUBRIC --out {run_dir})")
    return run_dir


def _plan(summary: Mapping[str, Any], first: Mapping[str, Any]) -> tuple[str, list[str], str]:
    """Mode, tiers and where they were read from: summary.json, else the first verdict's ledger."""
    cascade = summary.get("cascade")
    ledger = summary.get("ledger")
    if isinstance(cascade, dict) and cascade.get("tiers"):
        return str(cascade.get("mode", "cascade")), [str(t) for t in cascade["tiers"]], SUMMARY_FILE
    if isinstance(ledger, dict) and ledger.get("tiers"):
        return str(ledger.get("mode", "cascade")), [str(t) for t in ledger["tiers"]], SUMMARY_FILE
    tiers = [s.tier for s in spends_of(first)]
    return str(first.get("mode", "cascade")), tiers, f"the verdicts in {RESULTS_FILE}"


def _fmt_pct(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:.{digits}%}"


def _fmt_num(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def _fmt_est(est: Any, digits: int = 2) -> str:
    """An Estimate as "0.81 [0.75, 0.86]"; undefined values as a dash."""
    if est is None or est.value is None:
        return "—"
    if est.low is None or est.high is None:
        return f"{est.value:.{digits}f}"
    return f"{est.value:.{digits}f} [{est.low:.{digits}f}, {est.high:.{digits}f}]"


def _environment() -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    filters: dict[str, Callable[..., str]] = {"pct": _fmt_pct, "num": _fmt_num, "est": _fmt_est, "rate": pct}
    env.filters.update(filters)
    return env


def build_report_html(run_dir: Path, *, probes: Path | None = None, category_column: str = "category",
                      title: str | None = None, redact: bool = False) -> str:
    """The report page of a run folder, as a string (see write_report)."""
    run_dir = _resolve_run(run_dir)
    summary = _load_summary(run_dir)
    evaluation = _load_model(run_dir / EVAL_FILE, EvalReport) if (run_dir / EVAL_FILE).exists() else None
    probes_path = probes if probes is not None else run_dir / PROBES_FILE
    if probes is not None and not probes.is_file():
        raise ReportError(f"{probes}: no such file (--probes names the probes.json that psyjudge probe wrote)")
    probe_report = _load_model(probes_path, ProbeReport) if probes_path.is_file() else None
    release_path = run_dir / RELEASE_FILE
    release = _load_model(release_path, ReleaseReport) if release_path.is_file() else None

    rows = _Rows.scan(run_dir / RESULTS_FILE)
    stream = iter(rows)
    first = next(stream, None)
    if first is None:
        raise ReportError(f"{run_dir / RESULTS_FILE}: no verdicts in it"
                          + (f" ({rows.unreadable} unreadable line(s))" if rows.unreadable else ""))
    mode, tiers, plan_source = _plan(summary, first)
    redactor = _redactor() if redact else None
    tally = _Tally(category_column, redactor=redactor)
    if redactor is not None and probe_report is not None:
        probe_report = _redact_probes(probe_report, redactor)

    def ledgers() -> Iterator[tuple[str, Sequence[TierSpend]]]:
        # One pass: the ledger is summed while every other count is taken from the same rows.
        for row in itertools.chain((first,), stream):
            tally.add(row)
            yield str(row["record_id"]), spends_of(row)

    ledger = summarise_ledgers(ledgers(), mode=mode, tiers=tiers)
    rubric_keys = _rubric_keys(summary, tally)
    multi = len(rubric_keys) > 1
    records = _record_level(run_dir, tally, multi, category_column)

    figs = _Figures()
    figures: dict[str, Markup] = {}
    rubric_rows = [(r, tally.by_rubric.get(r, Counter())) for r in rubric_keys]
    overall_name = "all records" if records is not None else "all verdicts"
    overall = records.labels if records is not None else tally.labels
    unit = "records" if records is not None else "verdicts"
    figures["labels_rubric"] = fig_labels(figs, [(overall_name, overall), *rubric_rows],
                                          "label distribution, overall and per rubric",
                                          "share of each row's total" if multi else "share of verdicts")
    categories = _top_categories(records.by_category if records is not None else tally.by_category)
    if categories:
        figures["labels_category"] = fig_labels(figs, categories, f"label distribution per {category_column}",
                                                f"share of {unit}")
    figures["tiers"] = fig_tiers(figs, ledger)
    hits = {r: list(tally.hits[r].values()) for r in rubric_keys if tally.hits.get(r)}
    hit_figures = {r: fig_hits(figs, r, rows_, tally.decided[r]) for r, rows_ in hits.items()}
    if evaluation is not None:
        figures["confusion"] = fig_confusion(figs, evaluation.labels, evaluation.confusion)
    if probe_report is not None and probe_report.probes:
        figures["probes"] = fig_probes(figs, probe_report)
    if release is not None:
        figures["release"] = fig_release(figs, release)

    context = {
        "title": (title or f"psyjudge report: {run_dir.resolve().name}") + (REDACTED_TITLE if redact else ""),
        "run_dir": str(run_dir.resolve()),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "summary": summary,
        "judge": summary.get("judge_description") or summary.get("judge")
        or (", ".join(sorted(tally.judges)) if tally.judges else "none (no model tier was asked)"),
        "judge_source": SUMMARY_FILE if summary.get("judge_description") or summary.get("judge")
        else f"the verdicts in {RESULTS_FILE}",
        "mode": mode, "tiers": tiers, "plan_source": plan_source,
        "rubrics": rubric_keys, "labels": LABELS, "colours": COLOURS,
        "verdicts": ledger.verdicts, "unreadable": rows.unreadable, "tally": tally,
        "records": records, "record_count": ledger.records, "multi": multi,
        "overall_name": overall_name, "overall": overall, "rubric_rows": rubric_rows,
        "categories": categories, "category_column": category_column,
        "category_total": len(records.by_category if records is not None else tally.by_category),
        "ledger": ledger, "outcomes": OUTCOMES,
        "hits": hits, "hit_figures": hit_figures, "decided": tally.decided,
        "offenders": tally.offenders(), "max_offenders": MAX_OFFENDERS,
        "evaluation": evaluation, "eval_file": EVAL_FILE,
        "probes": probe_report, "probes_path": str(probes_path),
        "release": release, "release_file": RELEASE_FILE,
        "release_failures": [o for o in release.outcomes if o.target_failure is not None] if release else [],
        "figures": figures,
        "redacted": redact,
    }
    return str(_environment().get_template(TEMPLATE).render(**context))


def _redactor() -> Redactor:
    """One redactor for the whole page, so that the same person is the same placeholder throughout.
    Its mapping back to the originals lives in memory only and is never written."""
    from judge.redact import Redactor

    return Redactor()


def _redact_probes(report: ProbeReport, redactor: Redactor) -> ProbeReport:
    """The probe report with its example flips' perturbed responses redacted."""
    probes = [p.model_copy(update={"examples": [x.model_copy(update={"probed_text": _scrub(x.probed_text, redactor)})
                                                for x in p.examples]}) for p in report.probes]
    return report.model_copy(update={"probes": probes})


def _rubric_keys(summary: Mapping[str, Any], tally: _Tally) -> list[str]:
    """The run's rubrics (id@version): in summary.json's order, then any other the verdicts name."""
    keys = [f"{r['id']}@{r['version']}" for r in summary.get("rubrics") or []
            if isinstance(r, dict) and "id" in r and "version" in r]
    return list(dict.fromkeys([*keys, *tally.by_rubric]))


def write_report(run_dir: Path, out: Path | None = None, *, probes: Path | None = None,
                 category_column: str = "category", title: str | None = None, redact: bool = False) -> Path:
    """Write the HTML report of a run folder (default: RUN/report.html) and return its path.

    Raises ReportError when the folder is not a run (no results.jsonl, no verdicts), or eval.json,
    probes.json or release.json does not read as judge.outputs and judge.release_report say (the
    message names the file and the field). The file is owner-only, like everything psyjudge writes
    that quotes the judged responses. With `redact`, every response and quote on the page has its
    personal data replaced by typed placeholders (judge.redact; crisis-line numbers kept), for sharing."""
    html = build_report_html(run_dir, probes=probes, category_column=category_column, title=title, redact=redact)
    run = _resolve_run(run_dir)
    target = out if out is not None else run / REPORT_FILE
    if target.is_dir():
        target = target / REPORT_FILE
    ensure_private_dir(target.parent)
    write_text_atomic(target, html)
    return target
