"""`tune`: train a candidate from the home's model, compare it, and switch only when it is better.

train (the trainer, from the home's default model or a base, into HOME/models/runs/) -> the best
checkpoint kept under its content's name (HOME/models/ARCH-<digest>.pt, so its spec is stable) ->
recall@1/5/10 both ways on the held-out pairs for the current model and the candidate (the
standard protocol of `bench recall`, exact) -> the regression guard: with `switch="auto"`, switch
only when the candidate gains at least `min_gain` on `metric` in both directions -> switching:
embed the home's whole collection with the candidate (`Engine.switch_model`), then make it the
default, only once its space is complete and saved. The old model's space stays until
`remove-model`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from searchengine.errors import HomeBusyError, InvalidInputError, NotIndexedError
from searchengine.eval.metrics import RetrievalMetrics
from searchengine.models import parse_model_spec
from searchengine.settings import IngestSettings
from searchengine.training.pairs import PairSet
from searchengine.training.settings import TrainSettings

log = logging.getLogger(__name__)

METRICS = ("R@1", "R@5", "R@10")
SWITCH_MODES = ("auto", "never", "always")
DIRECTIONS = ("text_to_image", "image_to_text")
GAIN_TOLERANCE = 1e-9  # far below 1/n for any n of held-out queries
RUNS = "runs"  # HOME/models/runs/<UTC time>/: each tune's training run (metrics, plots)


@dataclass(frozen=True)
class TuneSettings:
    """What `tune` decides with, beside the training run's own `TrainSettings`."""

    metric: str = "R@5"
    """The recall the regression guard compares: R@1, R@5 or R@10 (both directions)."""
    min_gain: float = 0.01
    """The least gain (candidate minus current, in recall) asked for in each direction."""
    switch: str = "auto"
    """`auto`: switch when the guard passes; `never`: only report; `always`: switch anyway."""
    ingest: IngestSettings = field(default_factory=IngestSettings)
    """How the collection is decoded and embedded when switching (batch size, workers)."""
    progress: bool = False
    """Progress bars on stderr (training, comparison, re-embedding)."""

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise InvalidInputError(
                f"unknown metric {self.metric!r}; choices: {', '.join(METRICS)}")
        if self.switch not in SWITCH_MODES:
            raise InvalidInputError(
                f"unknown switch mode {self.switch!r}; choices: {', '.join(SWITCH_MODES)}")
        if not math.isfinite(self.min_gain):
            raise InvalidInputError(f"min_gain must be a number, got {self.min_gain}")


@dataclass(frozen=True)
class Decision:
    """The regression guard's verdict: gains per direction (candidate minus current recall at
    `metric`), the shortfall of each direction below `min_gain` (0 where it passed)."""

    switch: bool
    mode: str
    metric: str
    min_gain: float
    gains: dict[str, float]
    shortfall: dict[str, float]
    reason: str

    @property
    def passed(self) -> bool:
        return not any(self.shortfall.values())


@dataclass(frozen=True)
class TuneReport:
    """One `tune`: both models' recall on the held-out pairs, the decision, what switching did,
    and the seconds of each stage (None for a stage that did not run)."""

    home: str
    current: str
    candidate: str
    base: str
    checkpoint: str
    run: str
    figures: dict[str, RetrievalMetrics]
    """`current` and `candidate`: exact recall@1/5/10 both ways on the held-out pairs."""
    train: dict
    """steps, train_pairs, val_pairs, improved, pairs_per_second of the run."""
    decision: Decision
    switched: bool
    reason: str
    collection: dict | None
    timings: dict[str, float | None]

    def as_dict(self) -> dict:
        return {
            "home": self.home,
            "current": {"model": self.current, **self.figures["current"].as_dict()},
            "candidate": {"model": self.candidate, "base": self.base,
                          "checkpoint": self.checkpoint, **self.figures["candidate"].as_dict()},
            "decision": {**dataclasses.asdict(self.decision), "switched": self.switched,
                         "reason": self.reason},
            "train": {**self.train, "run": self.run},
            "re_embed": self.collection,
            "timings": self.timings,
        }


def tune(
    engine, pairs: Path, *, base: str | None = None, train: TrainSettings | None = None,
    settings: TuneSettings = TuneSettings(), val: Path | None = None,
    split: str | None = None, val_split: str | None = None,
    image_column: str | None = None, caption_column: str | None = None,
) -> TuneReport:
    """Train a candidate on `pairs` from `base` (default: the home's default model; `train.model`
    is replaced by it; without `train`, `TUNE_TRAINING`: random crops on), compare it with the
    current default on the held-out pairs (`val`, else a seeded `train.val_fraction` of the
    images, never shared with training: the trainer's own split), and switch as `settings` say.
    Sources and columns are read as `train` reads them.
    Raises NotIndexedError for a home without photos or default model."""
    from searchengine.engine import DEFAULT_MODEL_KEY, TUNED_MODELS

    current = engine.catalog.get_setting(DEFAULT_MODEL_KEY)
    if current is None or not engine.catalog.count_media():
        raise NotIndexedError(
            f"{engine.home} has no indexed photos to tune for; run `searchengine index FOLDER "
            f"--home {engine.home}` first")
    current = engine.model_id_of(current)
    timings: dict[str, float | None] = {"train": None, "compare": None, "re_embed": None,
                                        "switch": None}
    train = _train_settings(train or TUNE_TRAINING, base or current, settings)
    sources = {"pairs": pairs, "val": val, "split": split, "val_split": val_split,
               "image_column": image_column, "caption_column": caption_column}
    start = time.perf_counter()
    summary, checkpoint = _train_candidate(engine.home / TUNED_MODELS, train, sources)
    candidate = f"{parse_model_spec(train.model).arch}/{checkpoint}"
    timings["train"] = time.perf_counter() - start

    start = time.perf_counter()
    val_set = _validation_pairs(train, sources)
    figures = {"current": _recall(engine, current, val_set, train),
               "candidate": _recall(engine, candidate, val_set, train)}
    candidate = engine.model_id_of(candidate)
    timings["compare"] = time.perf_counter() - start

    decision = decide(figures["current"], figures["candidate"], settings, model=current)
    switched, reason, collection = False, decision.reason, None
    if decision.switch:
        result = _switch(engine, candidate, settings)
        timings["re_embed"] = result.collection.seconds
        timings["switch"] = result.seconds if result.switched else None
        switched, collection = result.switched, result.collection.as_dict()
        if not result.switched:
            reason = _incomplete(result.collection, current)
    timings["total"] = sum(value for value in timings.values() if value is not None)
    return TuneReport(
        home=str(engine.home), current=current, candidate=candidate, base=train.model,
        checkpoint=str(checkpoint), run=str(summary.out), figures=figures,
        train={"steps": summary.steps, "train_pairs": summary.train_pairs,
               "val_pairs": summary.val_pairs, "improved": summary.improved,
               "pairs_per_second": summary.pairs_per_second},
        decision=decision, switched=switched, reason=reason, collection=collection,
        timings=timings,
    )


def _switch(engine, candidate: str, settings: TuneSettings):
    """`Engine.switch_model`; a home busy with another writer keeps the candidate for later."""
    try:
        return engine.switch_model(candidate, settings=settings.ingest, progress=settings.progress)
    except HomeBusyError as error:
        raise HomeBusyError(
            f"{error}; the candidate is kept: switch to it later with `searchengine index "
            f"FOLDER --model {candidate}` and `searchengine use-model {candidate}`") from error


TUNE_TRAINING = TrainSettings(augment=True)
"""`tune`'s training settings when none are given: `train`'s defaults with `--augment` on (random
crops, as open_clip_train trains; `train` keeps them off for reproducible runs)."""


def _train_settings(train: TrainSettings, base: str, settings: TuneSettings) -> TrainSettings:
    """The run's settings: `train` from `base`, with tune's progress choice."""
    return dataclasses.replace(train, model=base, progress=settings.progress)


def _train_candidate(models: Path, train: TrainSettings, sources: dict) -> tuple:
    """Run the trainer into models/runs/<UTC time>/ and keep its best checkpoint as
    models/<ARCH>-<digest>.pt (the run's model files are dropped; metrics and plots stay).
    Returns (TrainSummary, checkpoint path)."""
    from searchengine.models import SHORT_DIGEST, checkpoint_digest
    from searchengine.training.loop import train as run_trainer

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    out = models / RUNS / stamp
    summary = run_trainer(out, train, **sources)
    best = summary.best_checkpoint
    digest = checkpoint_digest(best)[:SHORT_DIGEST]
    checkpoint = (models / f"{parse_model_spec(train.model).arch}-{digest}.pt").resolve()
    if checkpoint.is_file():
        best.unlink()  # the same weights were kept by an earlier tune
    else:
        os.replace(best, checkpoint)
    (out / "last.pt").unlink(missing_ok=True)  # optimiser state: tune never resumes a run
    log.info("candidate checkpoint %s (run %s)", checkpoint, out)
    return summary, checkpoint


def _validation_pairs(train: TrainSettings, sources: dict) -> PairSet:
    """The held-out pairs exactly as the trainer split them (its own function, same seed)."""
    from searchengine.training.loop import _read_sets  # the trainer's split, not a copy of it

    _, val_set = _read_sets(sources["pairs"], sources["val"], train, sources["image_column"],
                            sources["caption_column"], sources["split"], sources["val_split"])
    return val_set


def _recall(engine, model: str, val_set: PairSet, train: TrainSettings) -> RetrievalMetrics:
    """Exact recall@1/5/10 both ways of `model` (the engine's encoder, as search runs it) on the
    held-out pairs: the trainer's validation pass, the standard protocol."""
    from searchengine.training.data import load_pixels
    from searchengine.training.evaluation import evaluate, prepare_validation

    encoder = engine.encoder(model)

    def load(pairs: list):
        return load_pixels(pairs, encoder.preprocess, encoder.image_size, workers=train.workers)

    validation = prepare_validation(val_set, load, encoder.tokenizer,
                                    max_pairs=train.eval_max_pairs)
    return evaluate(encoder.model, validation, 0, device=encoder.device).metrics


def decide(
    current: RetrievalMetrics, candidate: RetrievalMetrics, settings: TuneSettings, *,
    model: str = "",
) -> Decision:
    """The regression guard: the gain of the candidate over the current model at
    `settings.metric` in each direction, and whether to switch (`auto`: every gain at least
    `settings.min_gain`)."""
    k = int(settings.metric.removeprefix("R@"))
    gains = {d: getattr(candidate, d)[k] - getattr(current, d)[k] for d in DIRECTIONS}
    # a recall is a count over n queries: a gain of exactly min_gain may come out 1e-17 short
    shortfall = {d: 0.0 if gain >= settings.min_gain - GAIN_TOLERANCE else
                 settings.min_gain - gain for d, gain in gains.items()}
    passed = not any(shortfall.values())
    switch = settings.switch == "always" or (settings.switch == "auto" and passed)
    shown = ", ".join(f"{_arrow(d)} {gains[d]:+.4f}" for d in DIRECTIONS)
    name = model or "the current model"
    if settings.switch == "never":
        reason = f"--switch never: kept {name} ({settings.metric} gains: {shown})"
    elif settings.switch == "always":
        reason = f"--switch always: switched to the candidate ({settings.metric} gains: {shown})"
    elif passed:
        reason = (f"the candidate beats {name} by at least {settings.min_gain:g} on "
                  f"{settings.metric} both ways ({shown}): switched")
    else:
        short = ", ".join(f"{_arrow(d)} by {shortfall[d]:.4f} (gain {gains[d]:+.4f})"
                          for d in DIRECTIONS if shortfall[d])
        reason = (f"kept {name}: the candidate fell short of the {settings.min_gain:g} gain "
                  f"asked for on {settings.metric}: {short}")
    return Decision(switch, settings.switch, settings.metric, settings.min_gain, gains,
                    shortfall, reason)


def _arrow(direction: str) -> str:
    return {"text_to_image": "text->image", "image_to_text": "image->text"}[direction]


def _incomplete(collection, current: str) -> str:
    first = "; ".join(f"{path}: {why}" for path, why in collection.missing[:3])
    return (f"kept {current}: {len(collection.missing)} of {collection.files} photos could not be "
            f"embedded with the candidate ({first}); run `searchengine index` on their folders "
            f"to bring the catalog up to date, then `searchengine index FOLDER --model "
            f"{collection.model}` and `searchengine use-model {collection.model}`")
