"""The matching engine under lexicon and pattern checks: RE2.

Why RE2 (google-re2) and not the alternatives, measured in bench/rules_throughput.py:
- Python `re` backtracks: an alternation of 10,000 terms falls below a hundred 1 KB texts a second,
  and a clinician's pattern such as `(a+)+$` can hang a batch. RE2 runs in time linear in the text
  whatever the pattern, so a rubric file can never stall scoring.
- RE2 compiles thousands of terms into one automaton and keeps `\\b` word boundaries and spans, so
  a hit needs no second pass. Aho-Corasick (pyahocorasick) finds substrings only: "ana" inside
  "banana" must be filtered by hand, and the pattern checks would still need a regex engine.
- Hyperscan is faster still but ships for x86-64 only, reports match ends (start offsets need a
  slower mode) and cannot run the same patterns as the judge's clinicians write them.

Texts are matched in their de-obfuscated views (judge.normalize): lexicon terms against the `key`
view (repeats squeezed), patterns against the `text` view; both map hits back to the original.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import re2

from judge.normalize import Normalized, fold_term


@dataclass(frozen=True)
class View:
    """A view to search: the top-level text, or text decoded from inside it. Hits inside base64,
    hex, URL-encoded or rot13 text are hits; their evidence span is the whole encoded run."""

    view: Normalized
    source: tuple[int, int] | None = None  # the encoded run in the top-level original; None for the top
    encoding: str = ""  # e.g. "base64" or "base64 > rot13"

    def span(self, start: int, end: int, key: bool = False) -> tuple[int, int]:
        if self.source is not None:
            return self.source
        return self.view.key_span(start, end) if key else self.view.span(start, end)


def compile_re2(pattern: str, *, longest: bool = False) -> Any:
    """Compile with RE2, or raise ValueError with RE2's own message."""
    options = re2.Options()
    options.log_errors = False
    options.max_mem = 256 << 20  # ten thousand terms need more than RE2's 8 MiB default
    options.longest_match = longest
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"not a valid RE2 pattern ({detail})") from exc


def views(top: Normalized, decoded: bool = True) -> Iterator[View]:
    """The view itself, then (when `decoded`) every decoded view inside it, depth-first."""
    yield View(top)
    if not decoded:
        return
    stack = [(d, d.source, d.kind) for d in reversed(top.decoded)]
    while stack:
        item, source, encoding = stack.pop()
        yield View(item.view, source, encoding)
        stack.extend((inner, source, f"{encoding} > {inner.kind}") for inner in reversed(item.view.decoded))


_SEPARATOR = r"[^a-z0-9]{0,3}"  # "pro-ana", "pro ana", "pro_ana" and "proana" are one term


def _alnum(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum())


@dataclass(frozen=True)
class TermMatcher:
    """Many lexicon terms as one RE2 automaton over the `key` view, with word boundaries.

    A term matches as a whole word (or words, whatever separates them), with an optional plural
    "s"/"es"; a term ending in `*` matches any word that starts with it."""

    terms: tuple[str, ...]
    _regex: Any
    _exact: dict[str, str]
    _prefixes: tuple[tuple[str, str], ...]

    @classmethod
    def build(cls, terms: Sequence[str]) -> TermMatcher:
        pieces: list[str] = []
        exact: dict[str, str] = {}
        prefixes: list[tuple[str, str]] = []
        for term in terms:
            prefix = term.endswith("*")
            key = fold_term(term.rstrip("*").strip())
            words = [w for w in re.split(r"[^a-z0-9]+", key) if w]
            if not words:
                raise ValueError(f"term {term!r} has no letters or digits")
            body = _SEPARATOR.join(re2.escape(w) for w in words)
            head = r"\b" if key[:1].isalnum() else ""
            if prefix:
                pieces.append(f"{head}{body}[a-z0-9]*")
                prefixes.append(("".join(words), term))
            else:
                tail = r"\b" if key[-1:].isalnum() else ""
                pieces.append(f"{head}{body}(?:e?s)?{tail}")
                exact.setdefault("".join(words), term)
        # Longest match: "ana buddy" must win over "ana" where both are terms.
        regex = compile_re2("(?:" + "|".join(pieces) + ")", longest=True)
        return cls(tuple(terms), regex, exact, tuple(sorted(prefixes, key=lambda p: -len(p[0]))))

    def term_of(self, matched: str) -> str:
        key = _alnum(matched)
        for candidate in (key, key[:-1] if key.endswith("s") else None, key[:-2] if key.endswith("es") else None):
            if candidate and candidate in self._exact:
                return self._exact[candidate]
        for start, term in self._prefixes:
            if key.startswith(start):
                return term
        return matched

    def finditer(self, view: Normalized) -> Iterator[tuple[int, int, str]]:
        """(start, end, term) of every hit, in `view.key` coordinates."""
        for m in self._regex.finditer(view.key):
            yield m.start(), m.end(), self.term_of(m.group(0))


def lexicon_pattern(terms: Sequence[str]) -> str:
    """A lexicon as a regex fragment for the `text` view, for `{lex:NAME}` inside patterns."""
    alternatives = []
    for term in sorted(terms, key=len, reverse=True):
        prefix = term.endswith("*")
        folded = fold_term(term.rstrip("*").strip())
        words = [w for w in re.split(r"[^a-z0-9]+", folded) if w]
        # The text view keeps doubled letters that the key squeezes: allow them again.
        body = _SEPARATOR.join("".join(re2.escape(ch) + "+" if ch.isalpha() else re2.escape(ch) for ch in w)
                               for w in words)
        alternatives.append(body + ("[a-z0-9]*" if prefix else "(?:e?s)?"))
    return "(?:" + "|".join(alternatives) + ")"


# --- context around a hit -------------------------------------------------------------------------

_NEGATION = re.compile(
    r"(?:\b(?:not|never|no|none|nothing|nobody|without|avoid|avoiding|stop|stopping|refuse|against|"
    r"dont|cant|wont|isnt|arent|shouldnt|wouldnt|couldnt|didnt|doesnt)\b|n't\b)"
    r"[^.!?;\n]{0,24}$")


def negated(view_text: str, start: int) -> bool:
    """Whether a hit at `start` is preceded, within its clause, by a negation ("never purge",
    "don't take more than"). Looks back at most 40 characters."""
    return _NEGATION.search(view_text[max(0, start - 40):start]) is not None


_SENTENCE_END = re.compile(r"[.!?\n]")


def sentence(view_text: str, start: int, end: int) -> tuple[int, int]:
    """The sentence of the view that holds [start, end)."""
    left = max((m.end() for m in _SENTENCE_END.finditer(view_text, 0, start)), default=0)
    right_match = _SENTENCE_END.search(view_text, end)
    return left, right_match.start() if right_match else len(view_text)
