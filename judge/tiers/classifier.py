"""The classifier tier: a local encoder classifier, between the rules tier and the LLM judge.

It decides a label only where its calibrated confidence clears that label's threshold (chosen when
the model was trained for a target precision, 0.95 for SAFE and HARMFUL by default); otherwise it
abstains and the record goes on to the LLM judge, with the classifier's best guess kept as a
fallback label for a degraded verdict if the judge fails (BORDERLINE, for review, where that guess is
SAFE: a guess of safety that did not clear the bar is not a finding of safety). It costs no tokens; its seconds are
recorded as its cost.

Records arrive one coroutine at a time; the tier gathers those that arrive together into one
batch (up to `batch_size`, waiting at most `max_wait_s` for more) and runs the model in a worker
thread, so the event loop keeps serving the LLM calls of other records meanwhile. The model is
independent of the rubric, so a record judged under several rubrics is run once and the answer
reused (`fired_rule` names the threshold that decided or why the tier abstained, for the audit trail).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from judge.classifier.bundle import Runtime
from judge.classifier.inputs import ModelInput, model_input
from judge.classifier.model import Classifier
from judge.rubrics import Rubric
from judge.schema import Label, Record, TierResult, Usage
from judge.tiers.base import register_tier

CACHE_SIZE = 8192


def _probs_text(labels: list[Label], probs: np.ndarray) -> str:
    return " ".join(f"p({label})={float(p):.3f}" for label, p in zip(labels, probs, strict=True))


class _Batcher:
    """Gathers concurrent requests into batches for one model; one batch runs at a time (the model
    already uses every core)."""

    def __init__(self, classifier: Classifier, batch_size: int, max_wait_s: float) -> None:
        self.classifier, self.batch_size, self.max_wait_s = classifier, batch_size, max_wait_s
        self._loop: asyncio.AbstractEventLoop | None = None

    def _reset(self, loop: asyncio.AbstractEventLoop) -> None:
        # A run may call asyncio.run more than once; futures and timers belong to one loop.
        self._loop = loop
        self._pending: list[tuple[ModelInput, asyncio.Future[tuple[np.ndarray, float]]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def probabilities(self, item: ModelInput) -> tuple[np.ndarray, float]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._reset(loop)
        future: asyncio.Future[tuple[np.ndarray, float]] = loop.create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self.batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_wait_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)  # held until done: the loop keeps only weak references to tasks
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[ModelInput, asyncio.Future[tuple[np.ndarray, float]]]]) -> None:
        async with self._lock:
            started = time.perf_counter()
            try:
                probs = await asyncio.to_thread(self._calibrated, [item for item, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            share = (time.perf_counter() - started) / len(batch)
        for row, (_, future) in zip(probs, batch, strict=True):
            if not future.done():
                future.set_result((row, share))

    def _calibrated(self, inputs: list[ModelInput]) -> np.ndarray:
        return self.classifier.calibrated(self.classifier.log_probs(inputs))


@register_tier("classifier")
class ClassifierTier:
    name = "classifier"

    def __init__(self, model: Path | str | None = None, runtime: Runtime = "torch", batch_size: int = 32,
                 max_wait_s: float = 0.01, classifier: Classifier | None = None) -> None:
        # Loaded now, not on the first record: a missing extra or a broken model folder should stop
        # the run before it starts, not turn every record into an error.
        self.classifier = classifier or Classifier.load(Path(model) if model else None, runtime, batch_size)
        self._batcher = _Batcher(self.classifier, batch_size, max_wait_s)
        self._cache: OrderedDict[str, tuple[np.ndarray, float]] = OrderedDict()
        # Records being run now: the runner judges one record under several rubrics at the same
        # time, and the later calls must wait for the first one's answer, not run the model again.
        self._running: dict[str, asyncio.Future[tuple[np.ndarray, float]]] = {}
        manifest = self.classifier.manifest
        self.rubrics = set(manifest.rubrics) if manifest.rubrics else None

    async def _probabilities(self, record: Record) -> tuple[np.ndarray, float, bool]:
        key = record.content_hash()
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit[0], 0.0, True
        running = self._running.get(key)
        if running is not None and running.get_loop() is asyncio.get_running_loop():
            # shield: a waiter that is cancelled must not cancel the run the others wait on.
            probs, _ = await asyncio.shield(running)
            return probs, 0.0, True
        task = asyncio.ensure_future(self._batcher.probabilities(model_input(record)))
        self._running[key] = task
        try:
            probs, seconds = await asyncio.shield(task)
        finally:
            if self._running.get(key) is task:
                del self._running[key]
        # Errors are not cached: the exception above skips this, and the next call runs the model.
        self._cache[key] = (probs, seconds)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return probs, seconds, False

    async def __call__(self, record: Record, rubric: Rubric) -> TierResult:
        model = self.classifier.name
        if self.rubrics is not None and rubric.id not in self.rubrics:
            return TierResult(tier=self.name, model=model,
                              fired_rule=f"abstained: the model was trained for {', '.join(sorted(self.rubrics))}, "
                              f"not {rubric.id}")
        try:
            probs, seconds, cached = await self._probabilities(record)
        except Exception as exc:
            return TierResult(tier=self.name, model=model, error=f"classifier failed: {type(exc).__name__}: {exc}")
        prediction = self.classifier.predictions(probs[None, :])
        label, confidence = prediction.label(0), float(prediction.confidence[0])
        threshold = self.classifier.manifest.thresholds.threshold.get(str(label))
        usage = Usage(seconds=seconds, cost_usd=0.0)
        shown = _probs_text(self.classifier.labels, probs)
        if bool(prediction.decided[0]):
            return TierResult(tier=self.name, label=label, confidence=confidence, model=model, usage=usage,
                              fired_rule=f"{label}: confidence {confidence:.3f} >= threshold {threshold:.3f} "
                              f"({shown})" + (" [reused]" if cached else ""))
        why = "no threshold (never decided)" if threshold is None else f"below threshold {threshold:.3f}"
        # An unsure guess of SAFE is not a finding of safety: as a fallback it asks for review instead.
        fallback = Label.BORDERLINE if label is Label.SAFE else label
        return TierResult(tier=self.name, confidence=confidence, model=model, usage=usage,
                          fired_rule=f"abstained: {label} {confidence:.3f} {why} ({shown})",
                          fallback_label=fallback, fallback_rule=f"classifier best guess {label}, not confident "
                          f"enough to decide ({shown})")

    def describe(self) -> dict[str, Any]:
        manifest = self.classifier.manifest
        return {"model": self.classifier.name, "folder": str(self.classifier.folder),
                "thresholds": manifest.thresholds.threshold, "rubrics": manifest.rubrics}
