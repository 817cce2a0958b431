"""De-obfuscated views of a text, for lexicon and pattern matching, with spans that map back.

normalize() never changes the original. It builds `text` (for regex patterns) and `key` (for lexicon
terms, repeated letters squeezed), undoing: Unicode compatibility forms, case, combining marks
(accents, Zalgo), zero-width and bidi controls, homoglyphs (Cyrillic, Greek and mathematical
look-alikes), emoji that carry meaning here, letters spaced out ("k i l l"), leetspeak and letter
repeats; and it decodes base64, hex, URL-encoded and rot13 runs into nested views, within bounds.

Speed matters more than elegance here: the rules tier runs this on every text it sees. Plain ASCII
text costs an isascii(), a lower() and one RE2 pass that tells which of the slower steps have
anything to do (usually none), plus one numpy pass for the key. Non-ASCII characters are handled
one by one, but only where they occur. Offsets are not tracked per character: each step that
changes lengths keeps the list of segments it replaced, and span()/key_span() walk the steps back
only when asked (a hit is rare; a text is not).

Leetspeak rule (numbers, doses, times and phone numbers must survive): a token is a run of
[a-z0-9@$!|]. It is folded only when it has at least two letters and is not a known alphanumeric
term (a1c, t1d). Then a run of leet characters with a letter on both sides is folded ("k1ll",
"l|fe", "k!ll"), as is a leading "$" or "@" before a letter ("$uicide", "@na"); and only in a token
so folded are leet digits at its ends folded too ("su1c1d3", "h3ll0"). So "988", "500mg", "3rd",
"2am", "24/7", "b12", "mp3" and "covid19" are left alone: digits at a token's edge alone prove nothing.
"""

from __future__ import annotations

import base64
import binascii
import re
import string
import time
import unicodedata
import urllib.parse
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache, cached_property, lru_cache
from itertools import islice
from typing import Any

import emoji
import numpy as np
import re2

__all__ = ["DEFAULT_LIMITS", "Decoded", "Limits", "Normalized", "fold_term", "normalize"]


@dataclass(frozen=True)
class Limits:
    """Bounds on decoding, so hostile input (base64 nested 50 deep, megabytes of hex) stays cheap."""

    max_decode_input: int = 65536  # characters of a text examined for encoded runs
    max_depth: int = 3  # levels of decoding inside decoding
    max_candidates: int = 64  # encoded runs tried, over the whole tree of one call
    max_decoded_chars: int = 65536  # characters decoded, over the whole tree
    deadline_s: float = 0.05  # wall-clock budget for decoding, checked between candidates


DEFAULT_LIMITS = Limits()


class _Map:
    """The segments one length-changing step replaced: out[o_start:o_end] came from in[i_start:i_end],
    added in output order. Outside them the step copied text, shifted by the last segment's delta."""

    __slots__ = ("i_end", "i_start", "o_end", "o_start")

    def __init__(self) -> None:
        self.o_start: list[int] = []
        self.o_end: list[int] = []
        self.i_start: list[int] = []
        self.i_end: list[int] = []

    def add(self, o_start: int, o_end: int, i_start: int, i_end: int) -> None:
        # Touching deletions merge; nothing else does, so each of three pill emoji maps back to itself.
        if self.o_end and o_start == o_end == self.o_start[-1] == self.o_end[-1] and self.i_end[-1] == i_start:
            self.i_end[-1] = i_end
            return
        self.o_start.append(o_start)
        self.o_end.append(o_end)
        self.i_start.append(i_start)
        self.i_end.append(i_end)

    def built(self) -> _Map | None:
        return self if self.o_start else None

    def start(self, p: int) -> int:
        i = bisect_right(self.o_end, p)  # segments [0, i) end at or before p
        if i < len(self.o_start) and self.o_start[i] <= p:
            return self.i_start[i]  # inside segment i: its whole source
        return p + (self.i_end[i - 1] - self.o_end[i - 1] if i else 0)

    def end(self, p: int) -> int:
        j = bisect_left(self.o_start, p)  # segments [0, j) start before p
        if j and self.o_end[j - 1] >= p:
            return self.i_end[j - 1]
        return p + (self.i_end[j - 1] - self.o_end[j - 1] if j else 0)


def _walk_back(maps: Iterable[_Map], start: int, end: int, size: int, original: str) -> tuple[int, int]:
    start = min(max(start, 0), size)
    end = min(max(end, start), size)
    for m in maps:
        start, end = m.start(start), m.end(end)
        end = max(end, start)  # an empty span at a deletion may map past itself
    start = min(start, len(original))
    end = min(max(end, start), len(original))
    # Deleted characters after the span are left out, except the combining marks of its last letter:
    # evidence should not cut a character in half.
    while start < end < len(original) and unicodedata.category(original[end]) in ("Mn", "Me"):
        end += 1
    return start, end


@dataclass(frozen=True)
class Decoded:
    """Text decoded from an encoded run of its parent; a hit inside it is evidenced by `source`."""

    kind: str  # "base64" | "hex" | "url" | "rot13"
    source: tuple[int, int]  # the encoded run in the ORIGINAL text of the parent Normalized
    view: Normalized  # the decoded text, normalised (its .original is the decoded string)


@dataclass(frozen=True)
class Normalized:
    """The views of one text. Spans found in `text` or `key` map back with span() and key_span()."""

    original: str
    text: str  # the de-obfuscated view for regex patterns
    key: str  # .text with every run of a repeated letter squeezed to one: for lexicons
    decoded: tuple[Decoded, ...] = ()
    undone: frozenset[str] = frozenset()
    limits_hit: tuple[str, ...] = ()
    _maps: tuple[_Map, ...] = field(default=(), repr=False, compare=False)  # text -> original, last step first

    def span(self, start: int, end: int) -> tuple[int, int]:
        """A span of .text as the span of .original that produced it."""
        return _walk_back(self._maps, start, end, len(self.text), self.original)

    def key_span(self, start: int, end: int) -> tuple[int, int]:
        """A span of .key as the span of .original that produced it."""
        maps = self._maps if self._key_map is None else (self._key_map, *self._maps)
        return _walk_back(maps, start, end, len(self.key), self.original)

    @cached_property
    def _key_map(self) -> _Map | None:
        # Built on first use (most texts never have a hit to map back), by the rule _squeeze follows.
        return _substitute(self.text, _DOUBLED, lambda m: m.group()[0])[1]


# --- Unicode --------------------------------------------------------------------------------------

_ASCII_BYTES = bytes(range(128))
_INVISIBLE = frozenset("\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180e\u180f\u3164\ufeff\uffa0") | {
    chr(c) for first, last in (
        (0x200B, 0x200F),  # zero-width space, joiners, LRM/RLM
        (0x202A, 0x202E),  # bidi embeddings and overrides
        (0x2060, 0x206F),  # word joiner, invisible operators, bidi isolates
        (0xFE00, 0xFE0F), (0xE0100, 0xE01EF),  # variation selectors
        (0xE0000, 0xE007F),  # tag characters
    ) for c in range(first, last + 1)}
# Typographic punctuation a pattern author writes in ASCII ("don't", "self-harm").
_PUNCT = {c: "'" for c in "‘’‚‛′ʼ"} | {c: '"' for c in "“”„‟″"} | {c: "-" for c in "‐‑‒–—―−"}

# Emoji that mean something in self-harm, eating-disorder and substance talk; the rest become a space.
_EMOJI_WORDS = {
    "🔪": "knife", "🗡": "knife", "🪒": "razor", "✂": "scissors", "🩸": "blood", "🩹": "bandage",
    "💊": "pill", "💉": "syringe", "🔫": "gun", "💣": "bomb", "🪢": "knot", "⚰": "coffin", "🪦": "grave",
    "☠": "death", "💀": "death", "😵": "dizzy", "😵‍💫": "dizzy", "🤮": "vomit", "🤢": "nausea",
    "⚖": "scale", "🦋": "butterfly", "🥀": "wilted", "🍄": "mushroom", "🚬": "cigarette", "🍁": "weed",
    "🌿": "weed", "❄": "snow", "🍺": "alcohol", "🍻": "alcohol", "🍷": "alcohol", "🥃": "alcohol",
    "🍸": "alcohol", "🍹": "alcohol", "🍾": "alcohol", "🥂": "alcohol",
}
_EMOJI_NOISE = re.compile("[\ufe0e\ufe0f\U0001f3fb-\U0001f3ff]")  # presentation selectors, skin tones


@cache
def _homoglyphs() -> dict[str, str]:
    """Unicode's confusables, kept where a single character looks like a single ASCII letter or digit."""
    from confusable_homoglyphs import confusables

    table: dict[str, str] = {}
    for char, entries in confusables.confusables_data.items():
        if len(char) != 1 or char.isascii():
            continue
        for entry in entries:
            target = entry["c"]
            if len(target) == 1 and target.isascii() and target.isalnum():
                table[char] = target.lower()
                break
    return table


@cache
def _emoji_chars() -> frozenset[str]:
    return frozenset(c for e in emoji.EMOJI_DATA for c in e if not c.isascii())


_CHAR_CACHE: dict[str, tuple[str, tuple[str, ...]]] = {}


def _fold_char(c: str) -> tuple[str, tuple[str, ...]]:
    """One non-ASCII character's view and the obfuscations that undid it. Cached: text repeats them."""
    hit = _CHAR_CACHE.get(c)
    if hit is not None:
        return hit
    category = unicodedata.category(c)
    result: tuple[str, tuple[str, ...]]
    if c in _INVISIBLE or category == "Cf":
        result = ("", ("invisible",))
    elif category == "Cs":
        result = ("\ufffd", ())  # a lone surrogate: one character, so RE2 can encode the view
    elif category in ("Mn", "Me"):
        result = ("", ("diacritics",))
    elif c in _PUNCT:
        result = (_PUNCT[c], ())
    else:
        homo = _homoglyphs()
        flags: set[str] = set()
        out: list[str] = []
        for ch in unicodedata.normalize("NFKC", c):
            folded = ch.casefold()
            decomposed = unicodedata.normalize("NFKD", folded)
            bare = "".join(d for d in decomposed if unicodedata.category(d) != "Mn")
            if bare != decomposed:
                flags.add("diacritics")
                folded = unicodedata.normalize("NFC", bare)
            if len(folded) == 1 and folded not in homo and ch in homo:
                # Greek capital kappa is in the table and kappa is not; but capital I-like letters
                # are listed as "l", so the lower-case form is tried first.
                folded = ch
            for d in folded:
                if d in homo:
                    flags.add("homoglyph")
                out.append(homo.get(d, d))
        if c in homo:  # mathematical and full-width letters too, though NFKC already undid them
            flags.add("homoglyph")
        result = ("".join(out), tuple(sorted(flags)))
    if len(_CHAR_CACHE) < 65536:  # bounded: hostile text may use every code point once
        _CHAR_CACHE[c] = result
    return result


def _positions(text: str, chars: Iterable[str]) -> list[int]:
    """Where `chars` occur in `text`, in order. str.find per distinct character skips the rest at C
    speed, far cheaper than a regex that steps through every character of a mostly ASCII text."""
    found: list[int] = []
    for c in chars:
        i = text.find(c)
        while i >= 0:
            found.append(i)
            i = text.find(c, i + 1)
    found.sort()
    return found


def _non_ascii_runs(text: str) -> list[tuple[int, int]]:
    distinct = set(text.encode("utf-8", "surrogatepass").translate(None, _ASCII_BYTES).decode("utf-8", "surrogatepass"))
    if len(distinct) > 16:
        return [m.span() for m in _NON_ASCII.finditer(text)]
    runs: list[tuple[int, int]] = []
    for p in _positions(text, distinct):
        if runs and runs[-1][1] == p:
            runs[-1] = (runs[-1][0], p + 1)
        else:
            runs.append((p, p + 1))
    return runs


_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_Run = tuple[str, _Map, tuple[str, ...]]  # the map relative to the run; never changed once cached
_RUN_CACHE: dict[str, _Run] = {}


def _fold_run(run: str) -> _Run:
    """A run of non-ASCII characters: its view, the segments that changed length (relative to the
    run) and the obfuscations undone. Short runs are cached: a text repeats its quotes and emoji."""
    hit = _RUN_CACHE.get(run)
    if hit is not None:
        return hit
    found = [] if _emoji_chars().isdisjoint(run) else emoji.emoji_list(run)
    pieces: list[str] = []
    segments = _Map()
    flags: set[str] = set()
    at = shift = 0  # shift: output position minus input position
    for start, end, sequence in [*((e["match_start"], e["match_end"], e["emoji"]) for e in found), (len(run), 0, "")]:
        part = run[at:start]
        folds = {c: _fold_char(c) for c in set(part)}
        pieces.append(part.translate({ord(c): rep for c, (rep, _) in folds.items()}))
        flags.update(*(undone for _, undone in folds.values()))
        for i in _positions(part, [c for c, (rep, _) in folds.items() if len(rep) != 1]):
            size = len(folds[part[i]][0])
            segments.add(at + i + shift, at + i + shift + size, at + i, at + i + 1)
            shift += size - 1
        if not sequence:
            break
        word = _EMOJI_WORDS.get(_EMOJI_NOISE.sub("", sequence))
        rep = f" {word} " if word else " "
        flags.update(["emoji"] if word else [])
        pieces.append(rep)
        segments.add(start + shift, start + shift + len(rep), start, end)
        shift += len(rep) - (end - start)
        at = end
    result = ("".join(pieces), segments, tuple(sorted(flags)))
    if len(run) <= 16 and len(_RUN_CACHE) < 65536:
        _RUN_CACHE[run] = result
    return result


def _fold_unicode(text: str, undone: set[str]) -> tuple[str, _Map | None]:
    pieces: list[str] = []
    segments = _Map()
    shift = 0  # output position minus input position
    prev = 0
    for start, end in _non_ascii_runs(text):
        rep, relative, flags = _fold_run(text[start:end])
        pieces += [text[prev:start], rep]
        if relative.o_start:  # most runs are a curly quote or a dash: nothing to add
            for o_start, o_end, i_start, i_end in zip(relative.o_start, relative.o_end, relative.i_start,
                                                      relative.i_end, strict=True):
                segments.add(start + shift + o_start, start + shift + o_end, start + i_start, start + i_end)
            shift += len(rep) - (end - start)
        if flags:
            undone.update(flags)
        prev = end
    pieces.append(text[prev:])
    joined = "".join(pieces)
    lowered = joined.lower()
    if len(lowered) != len(joined):  # cannot happen for casefolded runs; offsets must never drift
        lowered = "".join(p if i % 2 else p.lower() for i, p in enumerate(pieces))
    return lowered, segments.built()


# --- ASCII-level steps ----------------------------------------------------------------------------

# One RE2 pass over the folded text says which of the slower Python steps below have work to do.
_SPACED, _LEET, _REPEAT3, _BASE64, _HEX, _URL, _ROT13 = range(7)
_ELEMENT = "[a-z0-9@$]"
_PREFILTER_PATTERNS = {
    _SPACED: "|".join(f"(?:^|[^a-z0-9@$]){_ELEMENT}{s}{_ELEMENT}{s}{_ELEMENT}(?:$|{s}|[^a-z0-9@$])"
                      for s in (" ", r"\.", "-", "_", r"\*")),
    _LEET: r"[a-z][01345789@$!|]+[a-z]|(?:^|[^a-z0-9@$!|])[@$][a-z]",
    _REPEAT3: "|".join(c * 3 for c in string.ascii_lowercase),
    _BASE64: r"[a-z0-9+/_-]{16}|[a-z0-9+/]{6}==?",
    _HEX: r"(?:[2-7][0-9a-f]){4}|\\x[0-9a-f]{2}|(?:[2-7][0-9a-f][ :]){3}[2-7][0-9a-f]",
    _URL: r"%[0-9a-f]{2}[^%]*%[0-9a-f]{2}",
    # rot13 of the commonest English words ("the", "and", "to", "you", "my", "is", "it", "this", ...)
    _ROT13: r"\b(?:gur|naq|gb|lbh|zl|vf|vg|guvf|jvgu|sbe|ubj|jung|jura|gung|abg|ner|jnf|unir|zlfrys|xvyy)\b",
}


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


def _compile_prefilter() -> Any:
    prefilter = re2.Set.SearchSet(_RE2_OPTIONS)
    for index in range(len(_PREFILTER_PATTERNS)):
        if prefilter.Add(_PREFILTER_PATTERNS[index]) != index:
            raise RuntimeError("prefilter patterns out of order")
    prefilter.Compile()
    return prefilter


_PREFILTER = _compile_prefilter()
_SPACED_RE = re.compile(r"(?<![a-z0-9@$])[a-z0-9@$]([ ._*-])[a-z0-9@$](?:\1[a-z0-9@$])+(?![a-z0-9@$])")
# Leet characters before a letter; what precedes them is checked in Python: a pattern that starts
# with a character class lets the regex engine skip ahead, one that starts with a lookbehind does not.
_LEET_TRIGGER = re.compile(r"[01345789@$!|]+(?=[a-z])")
_LEET_INTERIOR = re.compile(r"(?<=[a-z])[01345789@$!|]+(?=[a-z])")
_LEET_EDGES = re.compile(r"^[01345789]+|[01345789]+$")
_TOKEN_TAIL = re.compile(r"[a-z0-9@$!|]*")
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789@$!|")
# "|" reads as "i" more often than "l" in the words that matter here: "l|fe", "k|ll", "su|c|de".
# "+" is not folded: "how+to+kill" is a query string, far more common than "+" for "t".
_LEET_TABLE = str.maketrans("01345789@$!|", "oieastbgasii")
_LEET_KEEP = frozenset({"a1c", "hba1c", "t1d"})  # medical terms that look like leetspeak
_NOT_LETTERS = str.maketrans("", "", string.ascii_lowercase)
_REPEAT3_RE = re.compile(r"([a-z])\1\1+")
_DOUBLED = re.compile(r"([a-z])\1+")


def _substitute(s: str, regex: re.Pattern[str],
                replace: Callable[[re.Match[str]], str | None]) -> tuple[str, _Map | None]:
    """Each match of `regex` replaced by replace(match) (None leaves it), with the segments to map back."""
    pieces: list[str] = []
    segments = _Map()
    prev = shift = 0
    for m in regex.finditer(s):
        rep = replace(m)
        if rep is None:
            continue
        a, b = m.span()
        pieces += [s[prev:a], rep]
        segments.add(a + shift, a + shift + len(rep), a, b)
        shift += len(rep) - (b - a)
        prev = b
    if not pieces:
        return s, None
    pieces.append(s[prev:])
    return "".join(pieces), segments.built()


def _spaced_word(m: re.Match[str]) -> str | None:
    word = m.group()[::2]
    return word if len(word) - len(word.translate(_NOT_LETTERS)) >= 2 else None  # "1 2 3" is no word


def _fold_token(token: str, followed_by: str) -> str:
    if len(token) > 20 or token in _LEET_KEEP or len(token) - len(token.translate(_NOT_LETTERS)) < 2:
        return token  # longer runs are identifiers, hashes or encodings, not words

    def interior(m: re.Match[str]) -> str:
        # "jo@samaritans.org": an address, not "@" for "a"
        return m.group() if m.group() == "@" and re.match(r"\.[a-z]", followed_by) else m.group().translate(_LEET_TABLE)

    folded = _LEET_INTERIOR.sub(interior, token)
    if token[0] in "$@" and token[1:2].isalpha():
        folded = folded[0].translate(_LEET_TABLE) + folded[1:]
    if folded == token:
        return token
    return _LEET_EDGES.sub(lambda m: m.group().translate(_LEET_TABLE), folded)


def _fold_leet(s: str) -> str:
    pieces: list[str] = []
    prev = 0
    for m in _LEET_TRIGGER.finditer(s):
        left = m.start()
        before = s[left - 1] if left else " "
        if left < prev or not ("a" <= before <= "z" or (s[left] in "$@" and before not in _TOKEN_CHARS)):
            continue  # inside a token already folded, or neither between letters nor a leading $ or @
        while left > prev and s[left - 1] in _TOKEN_CHARS:
            left -= 1
        tail = _TOKEN_TAIL.match(s, m.start())
        right = tail.end() if tail else m.end()
        pieces += [s[prev:left], _fold_token(s[left:right], s[right:right + 2])]
        prev = right
    if not pieces:
        return s
    pieces.append(s[prev:])
    return "".join(pieces)


_GAPS_RE = re.compile(r"(?<=[a-z]) {2,}(?=[a-z])")
_DENSE_TOKEN = re.compile(r"(?<![a-z0-9@$!|])(?=[a-z0-9]*[a-z])(?=[a-z]*[0-9])[a-z0-9]{2,8}(?![a-z0-9])")
_UNIT = re.compile(r"\d+(?:mg|mcg|g|kg|ml|l|am|pm|st|nd|rd|th|x|k|h|hrs?|mins?|s|yo|km|mi|lbs?|kcal)")
_DENSE_AT = 3


def _fold_dense(s: str, before: str) -> str:
    """A text written in leetspeak throughout ("t4k3 th3 wh0l3 p4ck 4t 0nc3") also hides short words
    that the per-token rule leaves alone ("4t", "0n", "th3"). When at least three tokens were folded,
    fold every short token that mixes letters and digits, except doses, times and ordinals."""
    changed = sum(a != b for a, b in zip(s.split(), before.split(), strict=False))
    if changed < _DENSE_AT:
        return s

    def fold(m: re.Match[str]) -> str:
        token = m.group()
        return token if _UNIT.fullmatch(token) or token in _LEET_KEEP else token.translate(_LEET_TABLE)

    return _DENSE_TOKEN.sub(fold, s)


def _squeeze(s: str) -> str:
    """Every run of a repeated ASCII letter squeezed to one. numpy, because a regex substitution
    steps through every character in Python's engine and English doubles a letter every few words."""
    if len(s) < 2:
        return s
    if s.isascii():
        a = np.frombuffer(s.encode("ascii"), np.uint8)
        codec = "ascii"
    else:
        a = np.frombuffer(s.encode("utf-32-le", "surrogatepass"), np.uint32)
        codec = "utf-32-le"
    tail = a[1:]
    keep = tail != a[:-1]
    keep |= (tail - 97) > 25  # not a-z (unsigned: below "a" wraps round)
    squeezed: str = s[0] + tail[keep].tobytes().decode(codec, "surrogatepass")
    return squeezed


def _view(text: str, undone: set[str]) -> tuple[str, list[_Map], frozenset[int]]:
    """The text view, its maps (first step first) and which prefilter patterns matched."""
    maps: list[_Map] = []
    if text.isascii():
        s = text.lower()
    else:
        s, m = _fold_unicode(text, undone)
        if m is not None:
            maps.append(m)
    hits = frozenset(_PREFILTER.Match(s.encode("utf-8", "surrogatepass")) or ())
    changed = False
    if _SPACED in hits:
        s, m = _substitute(s, _SPACED_RE, _spaced_word)
        if m is not None:
            maps.append(m)
            undone.add("spaced")
            changed = True
        if "  " in s:  # the gaps between spaced-out words: one space, as patterns are written
            s, m = _substitute(s, _GAPS_RE, lambda m: " ")
            if m is not None:
                maps.append(m)
    if _LEET in hits or changed:
        folded = _fold_dense(_fold_leet(s), s)
        if folded != s:
            undone.add("leetspeak")
            s, changed = folded, True
    if _REPEAT3 in hits or changed:
        s, m = _substitute(s, _REPEAT3_RE, lambda m: m.group()[:2])
        if m is not None:
            maps.append(m)
            undone.add("repeats")
    return s, maps, hits


# --- decoding -------------------------------------------------------------------------------------

@dataclass
class _Budget:
    """Shared by one normalize() call and every decoding inside it."""

    deadline: float
    candidates: int = 0
    chars: int = 0


# Encoded runs are found by RE2 on the UTF-8 bytes: linear whatever the input, and without the
# per-position cost of Python's engine (a 1 KB reply with one long URL path must stay cheap).
_B64_RUN = re2.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}|[A-Za-z0-9+/_-]{6,}={1,2}", _RE2_OPTIONS)
_HEX_RUNS = (
    re2.compile(r"\b(?:[0-9a-fA-F]{2}){4,}\b", _RE2_OPTIONS),
    re2.compile(r"(?:\\x[0-9a-fA-F]{2}){3,}", _RE2_OPTIONS),
    re2.compile(r"\b[0-9a-fA-F]{2}(?: [0-9a-fA-F]{2}){3,}\b|\b[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){3,}\b", _RE2_OPTIONS),
)
_URL_RUN = re2.compile(r"[\w.~+-]*(?:%[0-9A-Fa-f]{2}[\w.~+-]*){2,}", _RE2_OPTIONS)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")
_CLAUSE = re.compile(r"[^.!?:;\n]+")
_WORD = re.compile(r"[A-Za-z]+")
_LOWER, _UPPER = string.ascii_lowercase, string.ascii_uppercase
_ROT13_TABLE = str.maketrans(_LOWER + _UPPER, _LOWER[13:] + _LOWER[:13] + _UPPER[13:] + _UPPER[:13])
_COMMON = frozenset(
    "the be to of and a in that have i it for not on with he as you do at this but his by from they we "
    "say her she or an will my one all would there their what so up out if about who get which go me "
    "when make can like time no just him know take people into year your good some could them see "
    "other than then now look only come its over think also back after use two how our work first "
    "well way even new want because any these give day most us is are was were am been has had did "
    "myself yourself kill die dead hurt cut pills end life".split())


def _as_text(data: bytes) -> str | None:
    """Decoded bytes kept only if they read as text: valid UTF-8, printable, mostly letters."""
    try:
        s = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(s) < 3 or len(_CONTROL.findall(s)) > len(s) // 20:
        return None
    visible = len(s) - s.count(" ") - s.count("\n") - s.count("\t")
    letters = sum(map(str.isalpha, s))
    return s if letters >= 2 and letters * 10 >= visible * 4 else None


def _base64_shaped(run: str) -> bool:
    """16 characters or more, or padded; both letter cases (single-case runs are words and paths);
    one alphabet, standard or URL-safe."""
    core = run.rstrip("=")
    if (core == run and len(core) < 16) or core.lower() == core or core.upper() == core:
        return False
    return not (("-" in core or "_" in core) and ("+" in core or "/" in core))


def _from_base64(run: str) -> str | None:
    core = run.rstrip("=")
    core = core[: len(core) - (len(core) % 4 == 1)]
    altchars = b"-_" if "-" in core or "_" in core else None
    try:
        data = base64.b64decode(core + "=" * (-len(core) % 4), altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        return None
    return _as_text(data)


def _from_hex(run: str) -> str | None:
    try:
        return _as_text(bytes.fromhex(run.replace("\\x", "").replace(":", " ")))
    except ValueError:
        return None


def _from_url(run: str) -> str | None:
    decoded = _as_text(urllib.parse.unquote_to_bytes(run.replace("+", " ")))
    return decoded if decoded != run else None


def _rot13_runs(text: str) -> list[tuple[int, int]]:
    """Clauses that read as English once rot13'd and not before, merged where only punctuation parts them."""
    lowered = text.lower()
    rotated_text = lowered.translate(_ROT13_TABLE)
    known = _COMMON.__contains__
    runs: list[tuple[int, int]] = []
    for m in _CLAUSE.finditer(lowered):
        words = _WORD.findall(lowered, *m.span())
        if len(words) < 2:
            continue
        plain = sum(map(known, words))
        rotated = sum(map(known, _WORD.findall(rotated_text, *m.span())))
        if rotated >= 2 and rotated >= 2 * plain + 1 and rotated * 4 >= len(words):
            clause = m.group()
            start = m.start() + len(clause) - len(clause.lstrip())
            end = m.start() + len(clause.rstrip())
            if runs and not _WORD.search(lowered, runs[-1][1], start):
                runs[-1] = (runs[-1][0], end)
            else:
                runs.append((start, end))
    return runs


def _spans(regex: Any, data: bytes, text: str) -> Iterator[tuple[int, int]]:
    """RE2's matches in `data` (`text` encoded) as character spans of `text`."""
    if len(data) == len(text):  # ASCII: bytes are characters
        for m in regex.finditer(data):
            yield m.span()
        return
    byte_at = char_at = 0
    for m in regex.finditer(data):
        span = []
        for offset in m.span():  # offsets only grow: convert incrementally
            char_at += len(data[byte_at:offset].decode("utf-8", "surrogatepass"))
            byte_at = offset
            span.append(char_at)
        yield span[0], span[1]


def _candidates(text: str, hits: frozenset[int], cap: int) -> tuple[list[tuple[int, int, str]], bool]:
    """(start, end, kind) of encoded runs, by position; and whether there were more than `cap`."""
    data = text.encode("utf-8", "surrogatepass")
    finders: list[tuple[str, Iterable[tuple[int, int]]]] = []
    if _BASE64 in hits:
        finders.append(("base64", (s for s in _spans(_B64_RUN, data, text) if _base64_shaped(text[s[0]:s[1]]))))
    if _HEX in hits:
        finders += [("hex", _spans(regex, data, text)) for regex in _HEX_RUNS]
    if _URL in hits:
        finders.append(("url", _spans(_URL_RUN, data, text)))
    if _ROT13 in hits:
        finders.append(("rot13", _rot13_runs(text)))
    found: list[tuple[int, int, str]] = []
    more = False
    for kind, spans in finders:
        batch = list(islice(spans, cap + 1))
        more = more or len(batch) > cap
        found += [(a, b, kind) for a, b in batch[:cap]]
    found.sort()
    return found, more


_DECODE_HITS = frozenset({_BASE64, _HEX, _URL, _ROT13})
_DECODERS: dict[str, Callable[[str], str | None]] = {
    "base64": _from_base64, "hex": _from_hex, "url": _from_url, "rot13": lambda s: s.translate(_ROT13_TABLE),
}


def _decode(original: str, hits: frozenset[int], limits: Limits, depth: int, budget: _Budget,
            undone: set[str]) -> tuple[tuple[Decoded, ...], set[str]]:
    limits_hit: set[str] = set()
    if not hits & _DECODE_HITS:
        return (), limits_hit
    if depth >= limits.max_depth:
        return (), {"decode_depth"}
    examined = original[: limits.max_decode_input]
    if len(original) > len(examined):
        limits_hit.add("decode_input")
    candidates, more = _candidates(examined, hits, limits.max_candidates)
    if more:
        limits_hit.add("decode_candidates")
    out: list[Decoded] = []
    taken_to: dict[str, int] = {}  # per kind, the end of the last run decoded: overlaps are the same text
    for start, end, kind in candidates:
        if start < taken_to.get(kind, 0):
            continue
        if time.perf_counter() > budget.deadline:
            limits_hit.add("decode_deadline")
            break
        if budget.candidates >= limits.max_candidates:
            limits_hit.add("decode_candidates")
            break
        budget.candidates += 1
        decoded = _DECODERS[kind](examined[start:end])
        if decoded is None:
            continue
        if budget.chars + len(decoded) > limits.max_decoded_chars:
            limits_hit.add("decode_chars")
            continue
        budget.chars += len(decoded)
        view = normalize(decoded, limits=limits, _depth=depth + 1, _budget=budget)
        undone.add(kind)
        undone.update(view.undone)
        limits_hit.update(view.limits_hit)
        out.append(Decoded(kind, (start, end), view))
        taken_to[kind] = end
    return tuple(out), limits_hit


# --- entry points ---------------------------------------------------------------------------------

def normalize(text: str, *, decode: bool = True, limits: Limits = DEFAULT_LIMITS, _depth: int = 0,
              _budget: _Budget | None = None) -> Normalized:
    """The de-obfuscated views of `text`; `_depth` and `_budget` are for decoding's own recursion."""
    undone: set[str] = set()
    view, maps, hits = _view(text, undone)
    decoded: tuple[Decoded, ...] = ()
    limits_hit: set[str] = set()
    if decode:
        budget = _budget or _Budget(time.perf_counter() + limits.deadline_s)
        decoded, limits_hit = _decode(text, hits, limits, _depth, budget, undone)
    return Normalized(text, view, _squeeze(view), decoded, frozenset(undone), tuple(sorted(limits_hit)),
                      tuple(reversed(maps)))


@lru_cache(maxsize=65536)
def fold_term(term: str) -> str:
    """A lexicon term in the form it is matched in: the `key` view of the term alone."""
    return normalize(term, decode=False).key
