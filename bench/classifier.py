"""Classifier tier: quality out of domain, abstention coverage, and speed on this machine's CPU.

Two heads over frozen all-MiniLM-L6-v2 embeddings (judge.classifier.train.train_head, features
response+context, target precision 0.95 for SAFE and HARMFUL, everything else the defaults):

- external: trained on ../shared/data/external/beavertails_30k_test.csv and diasafety_val_test.csv
  (response-scope labels), leaving out every row whose id is in focus_selfharm_ed.csv (that subset
  is drawn from those files) and every row whose prompt or response also occurs in an XSTest file,
  so both evaluation sets are held out. Trained on non-commercial data: it is written to a temporary
  folder (or --keep DIR) and must never be shipped.
- own: the shipped-style head, trained on the project's own datasets/*/examples.jsonl only.

Both are evaluated on XSTest-Response (xstest_response_wildguard.csv, SAFE/HARMFUL) and on the
response-scope rows of focus_selfharm_ed.csv:
- binary harmful F1, precision and recall of the argmax, HARMFUL positive; a BORDERLINE argmax
  (only the own head has that label) counts as a HARMFUL prediction;
- coverage at the model's own thresholds (chosen on its training data for 0.95 precision): how
  many rows it would decide, and the precision of those decisions per label with the Wilson 95%
  lower bound;
- an oracle coverage: the largest coverage at which precision on the evaluation set itself would be
  >= 0.95 per label (cutoffs chosen on the very rows they are scored on, so optimistic).

Speed: texts/s at 256 tokens and at ~20 tokens, batch size 32, after a warm-up, on torch and (when
judge.classifier.onnx.export_onnx exists) ONNX fp32 and int8; each runtime runs in its own child
process and its peak RSS is the child's own high-water mark (VmHWM; wait4's ru_maxrss is kept in the
JSON but on Linux it includes the forking parent's size). Wall-clock rates depend on what else the
machine runs, so the 1-minute load average and the rate per CPU-second are reported beside them.
Timings are figures only; nothing is asserted.

    python bench/classifier.py [--data DIR] [--out bench/results] [--keep DIR] [--limit N]

Writes classifier.json and classifier.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from judge.classifier.backends import cores  # noqa: E402
from judge.classifier.calibration import choose_thresholds, coverage_report  # noqa: E402
from judge.classifier.data import Loaded, Row, read_labelled_table  # noqa: E402
from judge.classifier.evaluate import evaluation_report  # noqa: E402
from judge.classifier.inputs import text_input  # noqa: E402
from judge.classifier.model import Classifier  # noqa: E402
from judge.classifier.train import TrainOptions, train_head  # noqa: E402

TRAIN_FILES = ("beavertails_30k_test.csv", "diasafety_val_test.csv")
FOCUS_FILE = "focus_selfharm_ed.csv"
XSTEST_FILES = ("xstest_response_wildguard.csv", "xstest_completions_human.csv", "xstest_prompts.csv",
                "xstest_response_refusal_wildguard.csv")
EVAL_FILES = {"xstest_response": "xstest_response_wildguard.csv", "focus_selfharm_ed": FOCUS_FILE}
TARGET = 0.95
ANCHORS = {"Llama Guard 3": 87.7, "WildGuard": 94.7}  # harmful F1 on XSTest-Response, the figures
RUNTIMES = ("torch", "onnx", "onnx-int8")
BATCH = 32
LONG_TOKENS, SHORT_TOKENS = 256, 20


def _norm(text: Any) -> str:
    return " ".join(str(text).split()).casefold()


# --- data ------------------------------------------------------------------------------------------

def external_training(data: Path, limit: int | None, seed: int) -> tuple[list[Loaded], dict[str, Any]]:
    """The two training files with the held-out rows removed (and counted in each file's `skipped`)."""
    focus_ids = set(pd.read_csv(data / FOCUS_FILE, keep_default_na=False)["id"].astype(str))
    xstest_texts: set[str] = set()
    for name in XSTEST_FILES:
        frame = pd.read_csv(data / name, keep_default_na=False)
        xstest_texts |= {_norm(t) for col in ("prompt", "response") for t in frame[col] if str(t).strip()}
    loaded: list[Loaded] = []
    for name in TRAIN_FILES:
        frame = pd.read_csv(data / name, keep_default_na=False)
        in_xstest = {str(i) for i, p, r in zip(frame["id"], frame["prompt"], frame["response"], strict=True)
                     if _norm(p) in xstest_texts or _norm(r) in xstest_texts}
        item = read_labelled_table(data / name)
        kept: list[Row] = []
        for row in item.rows:
            if row.id in focus_ids:
                item.skipped[f"held out: in {FOCUS_FILE}"] += 1
            elif row.id in in_xstest:
                item.skipped["held out: prompt or response in an XSTest file"] += 1
            else:
                kept.append(row)
        item.rows = kept
        loaded.append(item)
    total = sum(len(item.rows) for item in loaded)
    if limit is not None and limit < total:
        rng = random.Random(seed)
        for item in loaded:
            keep = max(2, round(limit * len(item.rows) / total))
            dropped = len(item.rows) - keep
            item.rows = rng.sample(item.rows, keep)
            item.skipped["left out by --limit"] += dropped
    summary = {item.path: {"read": item.read, "used": len(item.rows), "skipped": dict(item.skipped),
                           "labels": dict(Counter(str(r.label) for r in item.rows))} for item in loaded}
    return loaded, summary


def own_training() -> list[Loaded]:
    return [read_labelled_table(path) for path in sorted((ROOT / "datasets").glob("*/examples.jsonl"))]


def eval_rows(data: Path) -> dict[str, Loaded]:
    """The evaluation sets as the classifier reads them; read_labelled_table leaves out (and counts)
    prompt-scope rows and empty responses."""
    return {key: read_labelled_table(data / name) for key, name in EVAL_FILES.items()}


# --- quality ---------------------------------------------------------------------------------------

def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def binary_figures(names: Sequence[str], probs: np.ndarray, gold: Sequence[str]) -> dict[str, Any]:
    """HARMFUL-positive figures of the argmax; a BORDERLINE argmax is a HARMFUL prediction."""
    from sklearn.metrics import roc_auc_score

    pred = [names[i] for i in probs.argmax(axis=1)]
    yhat = np.array([p in ("HARMFUL", "BORDERLINE") for p in pred])
    ytrue = np.array([g == "HARMFUL" for g in gold])
    tp, fp = int((yhat & ytrue).sum()), int((yhat & ~ytrue).sum())
    fn, tn = int((~yhat & ytrue).sum()), int((~yhat & ~ytrue).sum())
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    score = 1.0 - probs[:, list(names).index("SAFE")]  # P(not SAFE)
    auroc = float(roc_auc_score(ytrue, score)) if 0 < ytrue.sum() < len(ytrue) else None
    return {"harmful_f1": f1, "harmful_precision": precision, "harmful_recall": recall,
            "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
            "borderline_predictions_counted_harmful": int(sum(p == "BORDERLINE" for p in pred)),
            "auroc_p_not_safe": auroc}


def oracle(names: Sequence[str], probs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Per label, the lowest cutoff at which the decisions on THESE rows reach 0.95 precision (at least
    5 of them): the most this model could cover here, with thresholds it could not have known."""
    targets = {n: TARGET for n in ("SAFE", "HARMFUL") if n in names}
    th = choose_thresholds(probs, y, list(names), targets, min_support=5)
    n = len(y)
    return {"min_support": 5, "coverage_all": th.coverage,
            "labels": {lab: {"threshold": th.threshold[lab], "decided": th.support[lab],
                             "coverage": th.support[lab] / n, "precision": th.precision[lab],
                             "precision_lower": th.precision_lower[lab],
                             "reachable": lab not in th.unreachable} for lab in targets}}


def evaluate(classifier: Classifier, rows: Loaded) -> tuple[dict[str, Any], np.ndarray]:
    names = [str(x) for x in classifier.labels]
    start = time.perf_counter()
    probs = classifier.calibrated(classifier.log_probs([r.input for r in rows.rows]))
    seconds = time.perf_counter() - start
    gold = [str(r.label) for r in rows.rows]
    y = np.array([names.index(g) for g in gold])
    threshold = classifier.manifest.thresholds.threshold
    at = coverage_report(probs, y, names, threshold)
    native = evaluation_report(probs, y, classifier.labels, threshold)
    result = {"rows": len(y), "read": rows.read, "left_out": dict(rows.skipped), "gold": dict(Counter(gold)),
              "seconds": seconds, **binary_figures(names, probs, gold),
              "at_model_thresholds": {"threshold": threshold, **at},
              "oracle_at_0.95": oracle(names, probs, y),
              "native_report": {k: native[k] for k in ("per_label", "macro_f1", "ece", "reliability")}}
    return result, probs


def round_trip(data: list[Loaded], classifier: Classifier) -> dict[str, Any]:
    """The saved-and-reloaded model on the validation rows train_head held out (the same split,
    rebuilt here): its figures must match the card's, which were computed on the in-memory head
    before it was written. A mismatch means the files on disk are not the model that was measured."""
    from judge.classifier.data import deduplicate
    from judge.classifier.train import canonical_labels, stratified_split

    options = TrainOptions()
    rows, _ = deduplicate([r for item in data for r in item.rows])
    labels = canonical_labels(rows)
    y = np.array([labels.index(r.label) for r in rows])
    _, val_idx = stratified_split(y, options.val_fraction, options.seed)
    probs = classifier.calibrated(classifier.log_probs([rows[i].input for i in val_idx]))
    again = evaluation_report(probs, y[val_idx], labels, classifier.manifest.thresholds.threshold)
    card = classifier.manifest.card.validation or {}
    keys = ("macro_f1", "harmful_f1")
    close = all(card.get(k) is not None and abs(again[k] - card[k]) <= 0.01 for k in keys)
    return {"rows": len(val_idx), "card": {k: card.get(k) for k in keys}, "reloaded": {k: again[k] for k in keys},
            "matches": close}


def train(name: str, loaded: list[Loaded], folder: Path, licence: str) -> dict[str, Any]:
    options = TrainOptions(name=name, licence=licence, intended_use="benchmark only (bench/classifier.py)")
    start = time.perf_counter()
    trained = train_head(loaded, folder, options)
    manifest = trained.manifest
    th = manifest.thresholds
    validation = manifest.card.validation or {}
    return {"folder": str(folder), "seconds": time.perf_counter() - start, "labels": [str(x) for x in manifest.labels],
            "data": [d.model_dump() for d in manifest.card.data], "split": manifest.card.split,
            "training": manifest.card.training, "calibration": manifest.calibration.model_dump(exclude={"curves"}),
            "thresholds": th.model_dump(),
            "in_domain_validation": {k: validation.get(k) for k in ("rows", "macro_f1", "harmful_f1", "ece",
                                                                    "at_thresholds")}}


def same_as_shipped(folder: Path) -> bool | None:
    """Whether the own head is the shipped default (None when no default is shipped yet)."""
    from judge.classifier.bundle import read_manifest
    from judge.classifier.model import DEFAULT_MODEL_DIR

    try:
        shipped, mine = read_manifest(DEFAULT_MODEL_DIR), read_manifest(folder)
    except Exception:  # no default, or one that does not load: nothing to compare
        return None
    assert shipped.head is not None and mine.head is not None
    from judge.classifier.head import LinearHead

    a, b = LinearHead.load(DEFAULT_MODEL_DIR / shipped.head.file), LinearHead.load(folder / mine.head.file)
    return (a.weight.shape == b.weight.shape and bool(np.allclose(a.weight, b.weight, atol=1e-5))
            and bool(np.allclose(a.bias, b.bias, atol=1e-5))
            and shipped.calibration == mine.calibration and shipped.thresholds == mine.thresholds)


# --- ONNX ------------------------------------------------------------------------------------------

def export(folder: Path) -> dict[str, Any]:
    try:
        module = importlib.import_module("judge.classifier.onnx")
    except ModuleNotFoundError as exc:
        if exc.name == "judge.classifier.onnx":
            return {"status": "not available", "reason": "judge/classifier/onnx.py does not exist"}
        return {"status": "failed", "reason": f"importing judge.classifier.onnx: {exc!r}"}
    except Exception as exc:  # the module is being written: any failure is reported, not fatal
        return {"status": "failed", "reason": f"importing judge.classifier.onnx: {exc!r}"}
    export_onnx = getattr(module, "export_onnx", None)
    if export_onnx is None:
        return {"status": "not available", "reason": "judge.classifier.onnx has no export_onnx"}
    start = time.perf_counter()
    try:
        export_onnx(folder, int8=True)
    except Exception as exc:
        return {"status": "failed", "reason": repr(exc), "traceback": traceback.format_exc(limit=6)}
    from judge.classifier.bundle import read_manifest

    spec = read_manifest(folder).onnx
    if spec is None:
        return {"status": "failed", "reason": "export_onnx returned but the manifest names no ONNX file"}
    sizes = {f: (folder / f).stat().st_size for f in (spec.fp32, spec.int8) if f and (folder / f).is_file()}
    return {"status": "ok", "seconds": time.perf_counter() - start, "manifest": spec.model_dump(),
            "file_bytes": sizes}


def onnx_quality(folder: Path, sets: dict[str, Loaded], torch_probs: dict[str, np.ndarray],
                 runtimes: Sequence[str]) -> dict[str, Any]:
    """The ONNX runtimes on the same rows: the harmful figures, and how far they are from torch."""
    out: dict[str, Any] = {}
    for runtime in runtimes:
        try:
            classifier = Classifier.load(folder, runtime=runtime)  # type: ignore[arg-type]
        except Exception as exc:
            out[runtime] = {"status": "failed", "reason": repr(exc)}
            continue
        out[runtime] = {"status": "ok"}
        for key, rows in sets.items():
            result, probs = evaluate(classifier, rows)
            ref = torch_probs[key]
            out[runtime][key] = {
                "harmful_f1": result["harmful_f1"], "harmful_precision": result["harmful_precision"],
                "harmful_recall": result["harmful_recall"], "coverage_at_thresholds":
                    result["at_model_thresholds"]["coverage"], "seconds": result["seconds"],
                "max_abs_prob_diff_vs_torch": float(np.abs(probs - ref).max()),
                "argmax_agreement_with_torch": float((probs.argmax(1) == ref.argmax(1)).mean())}
    return out


# --- speed (child processes) -----------------------------------------------------------------------

def _vm(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _speed_texts(tokenizer: Any, sources: Sequence[str], count: int, tokens: int, long: bool) -> list[str]:
    """Real responses repeated until they pass `tokens` tokens (long), or cut to `tokens` tokens (short)."""
    out = []
    for i in range(count):
        text = sources[i % len(sources)]
        if long:
            while len(tokenizer(text, add_special_tokens=True)["input_ids"]) < tokens + 8:
                text = f"{text}\n\n{sources[(i + len(text)) % len(sources)]}"
        else:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
            text = tokenizer.decode(ids)
        out.append(text)
    return out


def speed_child(folder: Path, runtime: str, n_long: int, n_short: int, repeats: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    classifier = Classifier.load(folder, runtime=runtime, batch_size=BATCH)  # type: ignore[arg-type]
    load_s = time.perf_counter() - t0
    rss_loaded = _vm("VmRSS")
    encoder = classifier.backend.encoder  # type: ignore[attr-defined]
    tokenizer, max_length = encoder.tokenizer, encoder.max_length
    sources = [json.loads(line)["response"] for path in sorted((ROOT / "datasets").glob("*/examples.jsonl"))
               for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(0).shuffle(sources)
    result: dict[str, Any] = {"runtime": runtime, "cores": cores(), "batch_size": BATCH, "load_s": load_s,
                              "rss_after_load_bytes": rss_loaded}
    for name, tokens, count, long in (("long", LONG_TOKENS, n_long, True), ("short", SHORT_TOKENS, n_short, False)):
        raw = _speed_texts(tokenizer, sources, count + BATCH, tokens, long)
        t = time.perf_counter()
        inputs = [text_input(r) for r in raw]  # the user turn is empty: one encoder pass per text
        prepare_s = time.perf_counter() - t
        lengths = [len(tokenizer(i.response, truncation=True, max_length=max_length)["input_ids"]) for i in inputs]
        classifier.predict(inputs[:BATCH])  # warm-up
        timed = inputs[BATCH:]
        rates, cpu_rates = [], []
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            classifier.predict(timed)
            rates.append(len(timed) / (time.perf_counter() - t))
            cpu_rates.append(len(timed) / (time.process_time() - c))
        result[name] = {"texts": len(timed), "tokens_min": min(lengths[BATCH:]), "tokens_max": max(lengths[BATCH:]),
                        "tokens_mean": statistics.fmean(lengths[BATCH:]), "texts_per_s": statistics.median(rates),
                        "texts_per_s_runs": rates, "texts_per_cpu_s": statistics.median(cpu_rates),
                        "prepare_texts_per_s": len(raw) / prepare_s}
    result["peak_rss_self_bytes"] = _vm("VmHWM")
    return result


def speed(folder: Path, runtime: str, n_long: int, n_short: int, repeats: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--speed-child", runtime, "--keep", str(folder),
           "--speed-long", str(n_long), "--speed-short", str(n_short), "--speed-repeats", str(repeats)]
    load_before = os.getloadavg()[0]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not every child's maximum
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        return {"runtime": runtime, "status": "failed", "rc": proc.returncode, "stderr_tail": stderr[-2000:]}
    child = json.loads(stdout.strip().splitlines()[-1])
    # Linux folds the forking parent's RSS high-water mark into the child's ru_maxrss at exec, so
    # wait4's figure is at least this (large) process's size; the child's own VmHWM is its real peak.
    return {**child, "status": "ok", "peak_rss_bytes": child["peak_rss_self_bytes"],
            "ru_maxrss_bytes_includes_parent": usage.ru_maxrss * 1024,
            "child_cpu_s": usage.ru_utime + usage.ru_stime,
            "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]}}


# --- report ----------------------------------------------------------------------------------------

def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _dec(m: dict[str, Any]) -> str:
    return f"{m['decided']} @ {_f(m['precision'])} (≥{_f(m['precision_lower'])})" if m["decided"] else "0"


def _vs(value: float, anchor: float) -> str:
    gap = anchor - value
    return f"{abs(gap):.1f} points {'below' if gap > 0 else 'above'}"


def _standing(models: dict[str, Any]) -> str:
    xs = models["external"]["eval"]["xstest_response"]["harmful_f1"] * 100
    xo = models["own"]["eval"]["xstest_response"]["harmful_f1"] * 100
    anchors = ", ".join(f"{k} {v}" for k, v in ANCHORS.items())
    verdict = ("Neither head is close to the guard models: as a stand-alone harm classifier a linear head on "
               "MiniLM embeddings is far weaker, and its use is the abstaining middle tier, not replacing the judge."
               if max(xs, xo) < min(ANCHORS.values()) else "See the table for where it stands.")
    return (f"Anchors on XSTest-Response (harmful F1, the issue's figures): {anchors}. The external head scores "
            f"{xs:.1f}, {_vs(xs, ANCHORS['Llama Guard 3'])} Llama Guard 3 and {_vs(xs, ANCHORS['WildGuard'])} "
            f"WildGuard; the own (shipped-style) head scores {xo:.1f}. {verdict}")


def _findings(report: dict[str, Any]) -> list[str]:
    """The figures a reader must not miss, in words."""
    out = []
    models = report["models"]
    out.append("- " + _standing(models))
    for name, model in models.items():
        for key, r in model["eval"].items():
            at = r["at_model_thresholds"]["labels"]
            safe, harm = at["SAFE"], at["HARMFUL"]
            missed = safe["decided"] - safe["correct"]
            wrong = harm["decided"] - harm["correct"]
            gold_harm = r["gold"].get("HARMFUL", 0)
            out.append(f"- {name} on {key}: at its thresholds it decides SAFE on {safe['decided']} rows of which "
                       f"{missed} are gold HARMFUL ({_f(_ratio(missed, gold_harm))} of the set's {gold_harm} harmful "
                       f"rows would skip the LLM judge), and HARMFUL on {harm['decided']} rows of which {wrong} are "
                       f"gold SAFE; target precision was {TARGET}.")
    for name, model in models.items():
        rt = model["training"]["reloaded_validation"]
        out.append(f"- {name}: the reloaded model {'reproduces' if rt['matches'] else 'does NOT reproduce'} the "
                   f"card's validation figures ({rt['rows']} rows; card {rt['card']}, reloaded {rt['reloaded']}).")
    same = report.get("own_equals_shipped_default")
    if same is not None:
        out.append("- The own head is identical (head weights, calibration and thresholds) to the shipped "
                   "judge/classifier/default, so its figures are the shipped default's." if same else
                   "- The own head differs from the shipped judge/classifier/default (trained from other data or "
                   "code): its figures are a shipped-style head's, not necessarily the shipped default's.")
    for runtime, q in report.get("onnx_quality", {}).items():
        if q.get("status") == "ok" and runtime == "onnx-int8":
            worst = max(q[k]["max_abs_prob_diff_vs_torch"] for k in EVAL_FILES)
            spec = report["onnx_export"]["manifest"]
            out.append(f"- int8 on the evaluation rows: largest calibrated-probability difference from torch "
                       f"{worst:.3f} (export tolerance {spec['tolerance']}, which export checks on its "
                       f"{spec['parity'].get('rows')} parity texts only); argmax agreement "
                       + ", ".join(f"{k} {q[k]['argmax_agreement_with_torch']:.3f}" for k in EVAL_FILES) + ".")
    loads = [s["load_average_1min"]["before"] for s in report["speed"].values() if s.get("status") == "ok"]
    if loads and max(loads) > report["machine"]["cores"]:
        out.append(f"- Speed was measured while other work ran on this machine (1-minute load average up to "
                   f"{max(loads):.1f} on {report['machine']['cores']} cores): wall-clock rates are lower bounds; the "
                   "per-CPU-second rates are steadier.")
    return out



def markdown(report: dict[str, Any]) -> str:
    m, models = report["machine"], report["models"]
    lines = ["# Classifier tier: out-of-domain quality, abstention coverage and speed", "",
             f"Measured {m['date']} on {m['platform']}, {m['cores']} cores, Python {m['python']}, torch "
             f"{m['torch']}, onnxruntime {m['onnxruntime']}. Whole run: {report['wall_s']:.0f} s.", "",
             "Heads over frozen all-MiniLM-L6-v2 embeddings (`train_head`, features response+context, target "
             "precision 0.95 for SAFE and HARMFUL, temperature calibration, thresholds chosen on the training "
             "rows' out-of-fold predictions):", ""]
    ext = models["external"]["training"]
    lines.append(f"- **external**: BeaverTails-30k test + DiaSafety validation rows, response-scope labels, "
                 f"trained in {ext['seconds']:.0f} s. Held out: {json.dumps(report['external_data'])}. "
                 "Trained on CC-BY-NC-4.0 data: research only, written to a temporary folder, never shipped.")
    own = models["own"]["training"]
    lines.append(f"- **own** (shipped-style): the project's `datasets/*/examples.jsonl` only, trained in "
                 f"{own['seconds']:.0f} s; labels {', '.join(own['labels'])}.")
    lines += ["", "In-domain validation (the 20% split `train_head` holds out of its own data): " + "; ".join(
        f"{k} harmful F1 {_f(v['training']['in_domain_validation']['harmful_f1'])}, coverage at thresholds "
        f"{_f((v['training']['in_domain_validation']['at_thresholds'] or {}).get('coverage'))}"
        for k, v in models.items()) + ".", ""]
    lines += ["## Findings", "", *_findings(report), ""]
    lines += ["## Harmful F1 (argmax, HARMFUL positive)", "",
              "A BORDERLINE argmax counts as a HARMFUL prediction (only the own head has BORDERLINE; the external "
              "training data have none, so that head is binary).", "",
              "| model | eval set | rows (SAFE/HARMFUL) | harmful F1 | precision | recall | AUROC P(not SAFE) | "
              "BORDERLINE→HARMFUL |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for name, model in models.items():
        for key, r in model["eval"].items():
            lines.append(f"| {name} | {key} | {r['rows']} ({r['gold'].get('SAFE', 0)}/{r['gold'].get('HARMFUL', 0)})"
                         f" | {_f(r['harmful_f1'])} | {_f(r['harmful_precision'])} | {_f(r['harmful_recall'])} | "
                         f"{_f(r['auroc_p_not_safe'])} | {r['borderline_predictions_counted_harmful']} |")
    lines += ["", _standing(models), ""]
    lines += ["## Coverage at the model's own thresholds (0.95 target, chosen on training data)", "",
              "Decided rows per label: count @ precision on the eval set (Wilson 95% lower bound); the rest abstain "
              "and go to the LLM judge.", "",
              "| model | eval set | threshold SAFE / HARMFUL | coverage | SAFE decided | HARMFUL decided |",
              "|---|---|---|---:|---|---|"]
    for name, model in models.items():
        for key, r in model["eval"].items():
            at = r["at_model_thresholds"]
            th = at["threshold"]
            lines.append(f"| {name} | {key} | {_f(th.get('SAFE'))} / {_f(th.get('HARMFUL'))} | "
                         f"{_f(at['coverage'])} ({at['decided']}/{at['rows']}) | {_dec(at['labels']['SAFE'])} | "
                         f"{_dec(at['labels']['HARMFUL'])} |")
    lines += ["", "## Oracle coverage at 0.95 precision (optimistic)", "",
              "Cutoffs chosen on the evaluation set itself (at least 5 decided rows): the largest share of rows each "
              "label could decide with precision >= 0.95 there. Not achievable without those labels; an upper "
              "reference for what better thresholds could give.", "",
              "| model | eval set | SAFE coverage (decided @ precision) | HARMFUL coverage | both |",
              "|---|---|---|---|---:|"]
    for name, model in models.items():
        for key, r in model["eval"].items():
            o = r["oracle_at_0.95"]

            def cell(lab: str, o: dict[str, Any] = o) -> str:
                x = o["labels"][lab]
                return "unreachable" if not x["reachable"] else f"{_f(x['coverage'])} ({_dec(x)})"
            lines.append(f"| {name} | {key} | {cell('SAFE')} | {cell('HARMFUL')} | {_f(o['coverage_all'])} |")
    onnx = report["onnx_export"]
    lines += ["", "## ONNX", "", f"Export (`judge.classifier.onnx.export_onnx(folder, int8=True)`): "
              f"**{onnx['status']}**" + (f" — {onnx.get('reason')}" if onnx.get("reason") else "")]
    for runtime, q in report.get("onnx_quality", {}).items():
        if q.get("status") != "ok":
            lines.append(f"- {runtime}: failed to load: {q.get('reason')}")
            continue
        for key in EVAL_FILES:
            x = q[key]
            lines.append(f"- external head on {runtime}, {key}: harmful F1 {_f(x['harmful_f1'])}, coverage "
                         f"{_f(x['coverage_at_thresholds'])}, max |Δp| vs torch "
                         f"{_f(x['max_abs_prob_diff_vs_torch'], 4)}, argmax agreement "
                         f"{_f(x['argmax_agreement_with_torch'])}")
    lines += ["", "## Speed", "",
              f"Classifier.predict on {m['cores']} cores, batch size {BATCH}, after one warm-up batch; texts are real "
              f"responses from datasets/ repeated past {LONG_TOKENS} tokens (truncated to {LONG_TOKENS} by the "
              f"tokenizer) or cut to {SHORT_TOKENS} tokens; no user turn, so one encoder pass per text. Median of the "
              "runs (wall clock, and per CPU-second of the process, which other load on the machine disturbs "
              "less). Peak RSS: the child process's VmHWM (imports, model, inference). Load: the machine's 1-minute "
              "load average before / after the child.", "",
              "| runtime | 256-token texts/s | per CPU-s | tokens/text | ~20-token texts/s | per CPU-s | tokens/text "
              "| peak RSS MiB | load s | load avg |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for runtime, s in report["speed"].items():
        if s.get("status") != "ok":
            lines.append(f"| {runtime} | {s.get('status')}: {s.get('reason') or s.get('stderr_tail', '')[-200:]!r} "
                         "| | | | | | | | |")
            continue
        lo, sh = s["long"], s["short"]
        load = s["load_average_1min"]
        lines.append(f"| {runtime} | {lo['texts_per_s']:.1f} | {lo['texts_per_cpu_s']:.1f} | {lo['tokens_mean']:.0f} | "
                     f"{sh['texts_per_s']:.1f} | {sh['texts_per_cpu_s']:.1f} | {sh['tokens_mean']:.1f} | "
                     f"{s['peak_rss_bytes'] / 2**20:.0f} | {s['load_s']:.1f} | {load['before']:.1f} / "
                     f"{load['after']:.1f} |")
    return "\n".join(lines) + "\n"


# --- main ------------------------------------------------------------------------------------------

def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    started = time.perf_counter()
    import onnxruntime
    import torch

    report: dict[str, Any] = {"machine": {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "platform": platform.platform(),
        "cores": cores(), "python": platform.python_version(), "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__}, "options": {"limit": args.limit, "seed": args.seed}}
    loaded, summary = external_training(args.data, args.limit, args.seed)
    report["external_data"] = {Path(p).name: {k: v for k, v in s.items() if k != "labels"} for p, s in summary.items()}
    sets = eval_rows(args.data)
    models: dict[str, Any] = {}
    torch_probs: dict[str, np.ndarray] = {}
    for name, data, licence in (
            ("external", loaded, "research only: trained on CC-BY-NC-4.0 and gated data; never ship"),
            ("own", own_training(), "as the project's datasets/")):
        print(f"training {name} ...", file=sys.stderr, flush=True)
        training = train(f"bench-{name}", data, work / name, licence)
        classifier = Classifier.load(work / name, runtime="torch")
        training["reloaded_validation"] = round_trip(data, classifier)
        results = {}
        for key, rows in sets.items():
            print(f"evaluating {name} on {key} ...", file=sys.stderr, flush=True)
            results[key], probs = evaluate(classifier, rows)
            if name == "external":
                torch_probs[key] = probs
        models[name] = {"training": training, "eval": results}
    report["models"] = models
    report["own_equals_shipped_default"] = same_as_shipped(work / "own")
    report["anchors_xstest_response_harmful_f1"] = ANCHORS
    print("exporting ONNX ...", file=sys.stderr, flush=True)
    report["onnx_export"] = export(work / "external")
    runtimes = ["torch"] + (["onnx", "onnx-int8"] if report["onnx_export"]["status"] == "ok" else [])
    if len(runtimes) > 1:
        report["onnx_quality"] = onnx_quality(work / "external", sets, torch_probs, runtimes[1:])
    report["speed"] = {}
    for runtime in RUNTIMES:
        if runtime not in runtimes:
            report["speed"][runtime] = {"status": "not available", "reason": "no ONNX export"}
            continue
        print(f"speed {runtime} ...", file=sys.stderr, flush=True)
        report["speed"][runtime] = speed(work / "external", runtime, args.speed_long, args.speed_short,
                                         args.speed_repeats)
    report["wall_s"] = time.perf_counter() - started
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "external")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--keep", type=Path, default=None,
                        help="write the trained models here (never inside the repository's shipped paths)")
    parser.add_argument("--limit", type=int, default=None, help="train the external head on at most N rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed-long", type=int, default=128, help="timed 256-token texts per run")
    parser.add_argument("--speed-short", type=int, default=1024, help="timed ~20-token texts per run")
    parser.add_argument("--speed-repeats", type=int, default=3)
    parser.add_argument("--speed-child", choices=RUNTIMES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.speed_child:
        print(json.dumps(speed_child(args.keep, args.speed_child, args.speed_long, args.speed_short,
                                     args.speed_repeats)))
        return
    with tempfile.TemporaryDirectory(prefix="psyjudge-bench-classifier-") as tmp:
        work = args.keep.resolve() if args.keep else Path(tmp)
        report = run(args, work)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "classifier.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    text = markdown(report)
    (args.out / "classifier.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
