"""Pattern checks: RE2 regular expressions over the de-obfuscated text, with exceptions.

Patterns are written in lower case against the `text` view (casefolded, leetspeak and look-alikes
undone). `{lex:NAME}` inside a pattern stands for any term of the rubric's lexicon NAME, so a list
of medicines or methods is kept once, as data. An `unless` pattern found in the same sentence as a
hit cancels it ("...is dangerous and can kill you" is a warning, not a method)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field

from judge.checks.base import BaseCheck, CheckDefinitionError, CheckEnv, CheckSpec, Finding, Subject, register_check
from judge.checks.engine import compile_re2, lexicon_pattern, negated, sentence, views

_LEX_REF = re.compile(r"\{lex:([a-z][a-z0-9_]*)\}")


class PatternCheckSpec(CheckSpec):
    patterns: list[str] = Field(min_length=1, description="RE2 patterns; any one matching is a hit.")
    unless: list[str] = Field(default_factory=list, description="RE2 patterns that cancel a hit in the same sentence.")
    skip_negated: bool = Field(default=False, description="Ignore a hit negated in its clause.")
    decoded: bool = Field(default=True, description="Also search text decoded from base64, hex, URL or rot13.")


def _expand(pattern: str, env: CheckEnv, where: str) -> str:
    def lexicon(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in env.lexicons:
            raise CheckDefinitionError(where, f"{{lex:{name}}}: unknown lexicon; the rubric defines "
                                       f"{', '.join(sorted(env.lexicons)) or 'none'}")
        return lexicon_pattern(env.lexicons[name].terms)

    return _LEX_REF.sub(lexicon, pattern)


def _compile_all(patterns: list[str], env: CheckEnv, field: str) -> list[Any]:
    compiled = []
    for i, pattern in enumerate(patterns):
        try:
            compiled.append(compile_re2(_expand(pattern, env, f"{field}[{i}]")))
        except ValueError as exc:
            if isinstance(exc, CheckDefinitionError):
                raise
            raise CheckDefinitionError(f"{field}[{i}]", f"{exc}: {pattern!r}") from exc
    return compiled


@register_check("pattern", PatternCheckSpec)
class PatternCheck(BaseCheck):
    def __init__(self, spec: PatternCheckSpec, env: CheckEnv) -> None:
        self.spec: PatternCheckSpec = spec
        self.patterns = _compile_all(spec.patterns, env, "patterns")  # an error names its index
        # All as one automaton too: one scan tells whether any pattern can hit (most texts: none).
        # Hits are then looked for pattern by pattern, so a cancelled hit of one pattern cannot hide an
        # overlapping hit of another, and the note names the pattern that matched.
        expanded = [_expand(p, env, f"patterns[{i}]") for i, p in enumerate(spec.patterns)]
        self.any_pattern = compile_re2("|".join(f"(?:{p})" for p in expanded))
        self.unless = _compile_all(spec.unless, env, "unless")

    def _cancelled(self, text: str, start: int, end: int) -> bool:
        if self.spec.skip_negated and negated(text, start):
            return True
        if not self.unless:
            return False
        left, right = sentence(text, start, end)
        clause = text[left:right]
        return any(u.search(clause) for u in self.unless)

    def run(self, subject: Subject) -> Finding | None:
        spec = self.spec
        for text in subject.texts(spec.scope):
            for view in views(text.view, spec.decoded):
                body = view.view.text
                if self.any_pattern.search(body) is None:
                    continue
                for index, regex in enumerate(self.patterns):
                    for m in regex.finditer(body):
                        if m.end() == m.start() or self._cancelled(body, m.start(), m.end()):
                            continue
                        how = f" (decoded from {view.encoding})" if view.encoding else ""
                        return self.hit(text, view.span(m.start(), m.end()), f"pattern {index}{how}")
        return self.absent()
