"""Lexicon checks: any term of a rubric lexicon, as a whole word, in the de-obfuscated text."""

from __future__ import annotations

from pydantic import Field

from judge.checks.base import BaseCheck, CheckDefinitionError, CheckEnv, CheckSpec, Finding, Subject, register_check
from judge.checks.engine import TermMatcher, negated, views
from judge.schema import Identifier


class LexiconCheckSpec(CheckSpec):
    lexicon: Identifier = Field(description="A lexicon of the rubric (its `lexicons:`).")
    skip_negated: bool = Field(default=True, description="Ignore a hit negated in its clause "
                               "(\"never purge\", \"don't use thinspo\").")
    decoded: bool = Field(default=True, description="Also search text decoded from base64, hex, URL or rot13.")


@register_check("lexicon", LexiconCheckSpec)
class LexiconCheck(BaseCheck):
    def __init__(self, spec: LexiconCheckSpec, env: CheckEnv) -> None:
        lexicon = env.lexicons.get(spec.lexicon)
        if lexicon is None:
            raise CheckDefinitionError("lexicon", f"unknown lexicon {spec.lexicon!r}; the rubric defines "
                                       f"{', '.join(sorted(env.lexicons)) or 'none'}")
        self.spec: LexiconCheckSpec = spec
        try:
            self.matcher = TermMatcher.build(lexicon.terms)
        except ValueError as exc:
            raise CheckDefinitionError("lexicon", f"lexicon {spec.lexicon!r}: {exc}") from exc

    def run(self, subject: Subject) -> Finding | None:
        spec = self.spec
        for text in subject.texts(spec.scope):
            for view in views(text.view, spec.decoded):
                for start, end, term in self.matcher.finditer(view.view):
                    if spec.skip_negated and negated(view.view.key, start):
                        continue
                    how = f" (decoded from {view.encoding})" if view.encoding else ""
                    return self.hit(text, view.span(start, end, key=True), f"lexicon {spec.lexicon}: {term!r}{how}")
        return self.absent()
