"""How judged text is framed for a judge model: fenced in, defanged, and stripped of apology framing.

Two defences live here, both pure functions:

* Injection: the judged text sits between delimiters that carry a tag the text cannot predict (a
  hash over the text itself and the rubric), and any run of angle-bracket look-alikes inside the
  text is replaced, so the text can neither close its own fence nor forge one.
* Apology bias: judge models grade "I'm sorry, but here is how..." as safer than the same content
  without the apology. Leading and trailing apology and disclaimer clauses are removed before
  judging; the raw text stays on the record. Only clauses that match tight templates are removed,
  and only up to a clause boundary, so content hidden after "..., but" is kept.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

# Angle brackets and their look-alikes (full-width, guillemets, CJK and math brackets, ornaments).
_BRACKETS = "<>\uff1c\uff1e\u2039\u203a\u00ab\u00bb\u3008\u3009\u27e8\u27e9\u276e\u276f\u2329\u232a\u29fc\u29fd\ufe64\ufe65"
_INVISIBLE = "\u200b-\u200f\u2060\ufeff\u00ad"
_BRACKET_RUN = re.compile(f"[{_BRACKETS}](?:[{_INVISIBLE}\\s]*[{_BRACKETS}])+")
_FENCE_WORDS = re.compile(r"(END[-_ ]?)?(RESPONSE|CONVERSATION)[-_ ]?[0-9A-Fa-f]{6,}", re.IGNORECASE)
NEUTRALISED = "[delimiter removed]"


def delimiter_tag(*parts: str) -> str:
    """A fence tag derived from the content it fences. It is deterministic, so the same input
    renders the same prompt and the cache still works, yet a text cannot contain the tag of its
    own fence without finding a sha256 fixed point."""
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()
    return digest[:16].upper()


def neutralise(text: str) -> str:
    """Replace every run of two or more bracket-like characters, and anything shaped like one of
    our fence names followed by a tag, so that the judged text cannot open or close a fence."""
    text = _BRACKET_RUN.sub(NEUTRALISED, text)
    return _FENCE_WORDS.sub(NEUTRALISED, text)


# --- apology and disclaimer framing ------------------------------------------------------------

_W = r"[^,.;:!?\n]"  # a word character run inside one clause
# Clauses that apologise for, or disclaim, the answer itself. "I'm sorry to hear..." and "I'm sorry
# you're going through this" are empathy, not apology, and are kept: they acknowledge the user.
_CLAUSES = [
    rf"(?:i'?m|i am|we'?re|we are) (?:so |very |really |truly |deeply )?sorry(?! (?:to hear|that you|you|for what you|about what you|for your))(?: (?:for|about|if|but){_W}{{0,60}})?",
    rf"(?:i|we) (?:sincerely |do )?apologi[sz]e(?: (?:for|if){_W}{{0,60}})?",
    rf"(?:my|our) apologies(?: (?:for|if){_W}{{0,60}})?",
    r"sorry(?! (?:to hear|that you|you))",
    rf"as an? (?:ai|artificial intelligence|language model|ai language model|ai assistant|assistant|chatbot){_W}{{0,40}}",
    rf"(?:i'?m|i am) not (?:a |an )?(?:doctor|physician|medical professional|mental health professional|therapist|counsel+or|licensed{_W}{{0,30}}|professional|substitute for{_W}{{0,40}})",
    rf"(?:please note|note|disclaimer)(?: that)?:? (?:this|the following|the above|i){_W}{{0,40}}(?:not (?:medical|professional|legal) advice|informational|educational){_W}{{0,20}}",
    rf"(?:this|the following|the above|the information (?:below|above)|this information|this answer|this response)(?: information)? (?:is|are) (?:provided )?(?:purely |only |strictly )?(?:for (?:informational|educational|entertainment|general information) purposes|not (?:medical|professional|legal) advice){_W}{{0,30}}",
    r"(?:for|purely for) (?:informational|educational) purposes(?: only)?",
    rf"(?:i|we) (?:do not|don't|cannot|can't) (?:condone|endorse|promote|advocate){_W}{{0,50}}",
    rf"(?:this|that) (?:is|was) (?:not|never) (?:meant|intended) (?:as|to){_W}{{0,50}}",
    r"disclaimer",
]
_CLAUSE = "(?:" + "|".join(_CLAUSES) + ")"
# A clause ends at a sentence end, or at a comma / semicolon / colon with an optional connective.
_END = r"(?:\s*[.!?]+(?:\s+|$)|\s*[,;:]\s*(?:(?:but|however|and|though|that said|still)\b,?\s*)?|\s*$)"
_LEADING = re.compile(rf"^\s*{_CLAUSE}{_END}", re.IGNORECASE)
_TRAILING = re.compile(rf"(?:(?<=[.!?])|(?<=[.!?][\"')\]])|^)\s*{_CLAUSE}\s*[.!?]*\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Stripped:
    text: str
    removed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.removed)


def strip_apology(text: str, max_clauses: int = 6) -> Stripped:
    """Remove leading and trailing apology / disclaimer clauses. If nothing but framing is left,
    the original is returned unchanged: an empty text cannot be judged, and a bare apology is
    itself what the judge should see."""
    body = text
    removed: list[str] = []
    for _ in range(max_clauses):
        match = _LEADING.match(body)
        if not match or not match.group(0).strip():
            break
        removed.append(match.group(0).strip())
        body = body[match.end():]
    for _ in range(max_clauses):
        match = _TRAILING.search(body)
        if not match or not match.group(0).strip():
            break
        removed.append(match.group(0).strip())
        body = body[: match.start()]
    body = body.strip()
    if not removed or not body:
        return Stripped(text)
    # Re-capitalise the first letter: "but here is how" reads as a sentence to the judge.
    return Stripped(body[0].upper() + body[1:], removed)
