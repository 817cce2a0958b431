"""A scripted judge that knows the right answers: for each record it replies with the gold
sub-question answers written for it, in the reply format the rubric asks for.

It finds the record by the fence tag in the prompt (the tag is a hash of the rubric, the response
and the conversation, so the test computes it the same way). Run over a rubric's examples and
labelled data, it checks everything between the data and the label except the judge's own skill:
that every row renders, that the prompt carries the tag and the questions, that the reply schema
and parser accept the answers, and that the rule turns them into the gold label.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_TAG = re.compile(r"Fence tag for this review: (\w+)")


class OracleJudge:
    def __init__(self, answers_by_tag: Mapping[str, Mapping[str, str]]) -> None:
        self.answers_by_tag = dict(answers_by_tag)
        self.unknown_tags: list[str] = []

    def __call__(self, body: dict[str, Any]) -> str:
        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []) if m.get("role") == "user")
        found = _TAG.search(prompt)
        tag = found.group(1) if found else "(none)"
        answers = self.answers_by_tag.get(tag)
        if answers is None:
            self.unknown_tags.append(tag)
            return "I cannot find this record."  # a malformed reply: the tier must report an error
        return json.dumps({"reasoning": "gold answers", "answers": {
            q: {"evidence": "", "rationale": "gold", "answer": v, "confidence": 1.0} for q, v in answers.items()}})
