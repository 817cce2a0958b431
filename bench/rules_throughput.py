"""Rules-tier throughput on 1 KB texts, with normalisation, at 100, 1,000 and 10,000 lexicon terms.

What it measures, on one core (one process, no threads):
- normalise: judge.normalize.normalize() alone;
- lexicon:   normalise + one lexicon check of N terms (RE2, word boundaries) through the check engine;
- tier:      the whole rules tier for a record (judge.tiers.rules.judge_with_rules) on a copy of the
             self_harm rubric whose `suicide_self_harm` lexicon is grown to N terms, so every check
             of the rubric (lexicons, patterns, crisis-resource and refusal detection) runs;
- engines:   the same N-term alternation matched by Python `re`, RE2 and pyahocorasick (substring
             hits, before any word-boundary filtering), to justify the engine choice.

Texts: 1 KB slices of the project's own labelled responses (datasets/), half of them with an
obfuscation applied (leetspeak, spacing, homoglyphs, zero-width characters). Filler terms are
pronounceable made-up words, so they rarely match and every text is scanned in full.

    python bench/rules_throughput.py [--seconds 2] [--out bench/results]

Writes rules_throughput.json and rules_throughput.md. It asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from judge.checks import CheckEnv, Subject, compile_checks  # noqa: E402
from judge.checks.engine import compile_re2  # noqa: E402
from judge.normalize import normalize  # noqa: E402
from judge.rubrics import load_rubric_folder, load_yaml  # noqa: E402
from judge.schema import Lexicon, Record, RecordMeta, SubQuestion, Turn  # noqa: E402
from judge.tiers.rules import judge_with_rules  # noqa: E402

SIZES = (100, 1_000, 10_000)
_HOMOGLYPHS = str.maketrans({"a": "\u0430", "e": "\u0435", "o": "\u043e", "i": "\u0456"})


def texts(count: int, seed: int = 7) -> list[str]:
    rows = [json.loads(line) for path in sorted((ROOT / "datasets").glob("*/examples.jsonl"))
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    corpus = " ".join(r["response"] for r in rows)
    rng = random.Random(seed)
    out = []
    for i in range(count):
        start = rng.randrange(0, max(1, len(corpus) - 1100))
        text = corpus[start:start + 1024]
        if i % 2:  # obfuscate half: the normaliser's slow paths are part of the cost
            kind = (i // 2) % 4
            words = text.split(" ")
            j = rng.randrange(len(words))
            if kind == 0:
                words[j] = words[j].replace("e", "3").replace("i", "1").replace("o", "0")
            elif kind == 1:
                words[j] = " ".join(words[j])
            elif kind == 2:
                words[j] = words[j].translate(_HOMOGLYPHS)
            else:
                words[j] = "\u200b".join(words[j])
            text = " ".join(words)
        out.append(text)
    return out


def filler_terms(n: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    consonants, vowels = "bcdfghjklmnprstvz", "aeiou"
    seen: set[str] = set()
    while len(seen) < n:
        syllables = rng.randint(2, 4)
        word = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables))
        if rng.random() < 0.2:
            word += " " + "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(2))
        seen.add(word)
    return sorted(seen)


def rate(fn: Callable[[str], Any], items: list[str], seconds: float) -> float:
    """Texts per second, over whole passes through `items`, for at least `seconds`."""
    for text in items[:50]:
        fn(text)  # warm caches (compiled patterns, homoglyph table)
    done = 0
    started = time.perf_counter()
    while True:
        for text in items:
            fn(text)
        done += len(items)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return done / elapsed


def lexicon_check(terms: list[str]) -> Callable[[str], Any]:
    question = SubQuestion(id="topic_present", text="Is the topic present in the text?",
                           rationale="benchmark question", source="benchmark")
    env = CheckEnv({"topic_present": question},
                   {"bench": Lexicon(description="benchmark lexicon", terms=terms, source="generated")})
    (check,) = compile_checks([{"id": "bench", "kind": "lexicon", "question": "topic_present", "lexicon": "bench",
                                "why": "benchmark check"}], env)

    def run(text: str) -> Any:
        return check.run(Subject(Record(id="b", response=text)))

    return run


def tier_with_terms(terms: list[str], workdir: Path) -> Callable[[str], Any]:
    rubrics = workdir / "rubrics"
    shutil.copytree(ROOT / "rubrics" / "self_harm", rubrics / "self_harm")
    shutil.copytree(ROOT / "rubrics" / "_shared", rubrics / "_shared")
    path = rubrics / "self_harm" / "rubric.yaml"
    raw = load_yaml(path)  # YAML 1.2, as rubrics are read: the key "yes" stays a string
    own = raw["lexicons"]["suicide_self_harm"]["terms"]
    grown = [t for t in terms if t not in own][: max(0, len(terms) - len(own))]
    raw["lexicons"]["suicide_self_harm"]["terms"] = own + grown
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    rubric = load_rubric_folder(rubrics / "self_harm")
    turns = [Turn(role="user", content="i have been feeling really low and i don't know what to do anymore")]

    def run(text: str) -> Any:
        return judge_with_rules(Record(id="b", turns=turns, response=text, meta=RecordMeta(region="GB")), rubric)

    return run


def engines(terms: list[str], items: list[str], seconds: float) -> dict[str, float | None]:
    keys = [t.lower() for t in terms]
    py = re.compile(r"\b(?:" + "|".join(re.escape(k) for k in keys) + r")\b")
    rx2 = compile_re2(r"\b(?:" + "|".join(re.escape(k) for k in keys) + r")\b")
    lowered = [t.lower() for t in items]
    out: dict[str, float | None] = {
        "python_re": rate(lambda t: list(py.finditer(t)), lowered, min(seconds, 1.0) if len(terms) > 1000 else seconds),
        "re2": rate(lambda t: list(rx2.finditer(t)), lowered, seconds),
    }
    try:
        import ahocorasick
    except ImportError:
        out["pyahocorasick_substrings"] = None
    else:
        automaton = ahocorasick.Automaton()
        for k in keys:
            automaton.add_word(k, k)
        automaton.make_automaton()
        out["pyahocorasick_substrings"] = rate(lambda t: list(automaton.iter(t)), lowered, seconds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="Minimum seconds per measurement.")
    parser.add_argument("--texts", type=int, default=400)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    items = texts(args.texts)
    results: dict[str, Any] = {
        "what": "texts per second on one core, 1 KB texts (half obfuscated), rules tier with normalisation",
        "python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor(),
        "texts": len(items), "mean_chars": sum(map(len, items)) / len(items),
        "normalise": rate(normalize, items, args.seconds),
        "by_terms": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for n in SIZES:
            terms = filler_terms(n)
            results["by_terms"][str(n)] = {
                "lexicon_check": rate(lexicon_check(terms), items, args.seconds),
                "rules_tier": rate(tier_with_terms(terms, Path(tmp) / str(n)), items, args.seconds),
                "engines_match_only": engines(terms, items, args.seconds),
            }
            print(n, json.dumps(results["by_terms"][str(n)]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rules_throughput.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# Rules-tier throughput",
        "",
        f"One core, Python {results['python']} on {results['machine']}; {results['texts']} texts of about "
        f"{results['mean_chars']:.0f} characters (slices of the project's labelled responses, half obfuscated).",
        f"Normalisation alone: {results['normalise']:,.0f} texts/s.",
        "",
        "| lexicon terms | lexicon check (with normalisation) | whole rules tier, self_harm rubric | "
        "match only: Python re | RE2 | pyahocorasick (substrings) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n, row in results["by_terms"].items():
        e = row["engines_match_only"]
        aho = f"{e['pyahocorasick_substrings']:,.0f}" if e["pyahocorasick_substrings"] else "n/a"
        lines.append(f"| {int(n):,} | {row['lexicon_check']:,.0f} | {row['rules_tier']:,.0f} | "
                     f"{e['python_re']:,.0f} | {e['re2']:,.0f} | {aho} |")
    lines += ["", "Texts per second. The whole-tier figure runs every check of the self_harm rubric (its topic "
              "lexicon grown to N terms), the tone partial's checks, crisis-resource and refusal detection, "
              "on a record with one user turn."]
    (args.out / "rules_throughput.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
