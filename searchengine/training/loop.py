"""The training loop: `train(out, settings, pairs=..., val=...)` reads top to bottom.

read pairs -> pick the CPU threads (every core; decoding at idle priority) -> build the model
(train mode, optional locked tower) -> evaluate the starting model -> for each step: batch,
contrastive backward (gradient-cached when asked), fused AdamW step, clamp the temperature;
evaluate every `eval_every` steps, keep the best as `best.pt`, checkpoint `last.pt` every
`save_every` steps -> summary and plots.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from searchengine.errors import InvalidInputError
from searchengine.training import checkpoint as checkpoints
from searchengine.training.data import (
    STARVED_AFTER,
    Batch,
    Collate,
    PairDataset,
    StepBatches,
    WorkersStarved,
    augmentation,
    batches_until_starved,
    decode_worker_init,
    idle_decoding,
    load_pixels,
)
from searchengine.training.evaluation import Evaluation, evaluate, prepare_validation
from searchengine.training.gradcache import contrastive_backward
from searchengine.training.losses import MAX_LOGIT_SCALE, clip_loss, initial_logit_bias, siglip_loss
from searchengine.training.pairs import PairSet, read_pairs
from searchengine.training.schedule import learning_rate
from searchengine.training.settings import TrainSettings

if TYPE_CHECKING:
    import torch

    from searchengine.training.mining import MinedBatches

log = logging.getLogger(__name__)

RESUME_MUST_MATCH = ("model", "loss", "lock", "batch_size", "lr", "warmup", "weight_decay", "seed",
                     "augment", "hard_negatives", "swaps_per_caption", "mine_group",
                     "refresh_every")


@dataclass(frozen=True)
class TrainSummary:
    """What a run did. `start`/`best`/`final` are validation records (recall, diagonal gap)."""

    out: Path
    best_checkpoint: Path
    steps: int
    train_pairs: int
    val_pairs: int
    start: dict
    best: dict
    final: dict
    improved: bool
    stopped_early: bool
    pairs_per_second: float
    skipped: dict = field(default_factory=dict)
    message: str = ""

    def as_dict(self) -> dict:
        return {key: (str(v) if isinstance(v, Path) else v) for key, v in self.__dict__.items()}


@dataclass
class _State:
    """The run's mutable bookkeeping; saved in `last.pt` so a resume continues it."""

    step: int = 0
    best_recall: float = -1.0
    best_step: int = 0
    bad_evals: int = 0
    start: dict = field(default_factory=dict)
    best: dict = field(default_factory=dict)
    final: dict = field(default_factory=dict)
    pairs_seen: int = 0
    train_seconds: float = 0.0
    """Wall time of the timed steps (all but the first of each loop, which starts the workers)."""
    timed_pairs: int = 0
    dropped: int = 0


def train(
    out: Path, settings: TrainSettings, *, pairs: Path, val: Path | None = None,
    resume: bool = False, image_column: str | None = None, caption_column: str | None = None,
    split: str | None = None, val_split: str | None = None,
) -> TrainSummary:
    """Train on the pairs at `pairs` (see `pairs.read_pairs`), validating on `val` or on a held-out
    `settings.val_fraction` of the images; write checkpoints, metrics.jsonl, summary.json and
    plots into `out`. `split`/`val_split` select a split of a dataset folder (`--val` defaults to
    the training source when only `val_split` is given)."""
    from searchengine.models import ensure_weights_available

    ensure_weights_available(settings.model)  # offline hub weights: fail before torch loads
    import torch

    out = Path(out)
    if not resume:
        _refuse_to_overwrite(out)
    out.mkdir(parents=True, exist_ok=True)
    train_set, val_set = _read_sets(pairs, val, settings, image_column, caption_column, split,
                                    val_split)
    threads = intra_op_threads(settings.workers, idle_workers=idle_decoding(settings.workers))
    with _cpu_threads(threads):
        run = _Run(out, settings, train_set, val_set)
        state = run.resume() if resume else run.start()
        with torch.random.fork_rng(devices=run.cuda_devices):
            state = run.loop(state)
        return run.finish(state)


def _refuse_to_overwrite(out: Path) -> None:
    """A run folder that holds a run is never started over: its last.pt (the interrupted run's
    only copy of its optimiser and step) would be overwritten at the first save."""
    last, summary = out / "last.pt", out / "summary.json"
    if not last.is_file():
        return
    if summary.is_file() and summary.stat().st_mtime_ns >= last.stat().st_mtime_ns:
        raise InvalidInputError(
            f"{out} holds a finished run (summary.json, last.pt, best.pt); give another --out to "
            "train again, or continue this run for more steps with --resume and a larger --steps"
        )
    raise InvalidInputError(
        f"{out} holds an unfinished run (last.pt); continue it with --resume and the same "
        "settings, or give another --out to start a new one"
    )


def intra_op_threads(workers: int, cpus: int | None = None, *,
                     idle_workers: bool = True) -> int | None:
    """Torch's intra-op threads for a run with `workers` decode processes on `cpus` cores.

    Every core when the workers decode at idle priority (`data.idle_decoding`, as `index`'s): they
    then run only while a model thread waits, never preempting one, so the model loses nothing to
    them (and `searchengine train` asks OpenMP for passive waits, so a waiting thread sleeps
    rather than spins). Otherwise (no `SCHED_IDLE`) one core per worker is left to it, at least
    one thread: OpenMP threads that share a core with a normal-priority worker wait for it at
    every barrier (measured: a se-tiny step took 6-10x longer with 2 threads than with 1 on 2
    loaded cores). None when OMP_NUM_THREADS is set: the user's choice is kept."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    return cpus if idle_workers else max(1, cpus - workers)


@contextlib.contextmanager
def _cpu_threads(threads: int | None):
    """Set torch's intra-op threads for the duration of a run (None: leave them alone)."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _read_sets(pairs, val, settings, image_column, caption_column, split, val_split):
    columns = {"image_column": image_column, "caption_column": caption_column}
    train_set = read_pairs(pairs, split=split, **columns)
    if val is None and val_split is not None:
        val = pairs
    if val is not None:
        return train_set, read_pairs(val, split=val_split, **columns)
    return train_set.split_by_image(settings.val_fraction, seed=settings.seed)


class _Run:
    def __init__(self, out: Path, settings: TrainSettings, train_set: PairSet, val_set: PairSet):
        import torch

        from searchengine.encoder import resolve_device
        from searchengine.models import build_model, parse_model_spec

        self.out, self.settings, self.train_set, self.val_set = out, settings, train_set, val_set
        self.vocabulary = _swap_vocabulary(settings)  # a bad file fails before the model loads
        self.device = resolve_device(settings.device)
        if settings.precision == "fp16" and not self.device.startswith("cuda"):
            raise InvalidInputError("fp16 training needs a GPU; use --precision bf16 on the CPU")
        self.cuda_devices = [torch.device(self.device)] if self.device.startswith("cuda") else []
        self.spec = parse_model_spec(settings.model)
        self.model, self.preprocess, self.tokenizer = build_model(
            self.spec, device=self.device, seed=settings.seed
        )
        self.model.train()
        if settings.lock == "image":
            self.model.lock_image_tower()
        elif settings.lock == "text":
            self.model.lock_text_tower()
        if settings.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        if settings.micro_batch and settings.micro_batch < settings.batch_size and any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
            for m in self.model.modules()
        ):
            log.warning("%s has batch normalisation: with --micro-batch it normalises each "
                        "micro-batch apart, so the gradients are not the whole batch's; "
                        "drop --micro-batch for exact gradients", self.spec.arch)
        size = self.model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.total = settings.steps or settings.epochs * (len(train_set) // settings.batch_size)
        self.warmup = settings.warmup if settings.warmup is not None else min(self.total // 10, 500)
        self.logit_bias = torch.nn.Parameter(
            torch.tensor(initial_logit_bias(settings.loss), device=self.device),
            requires_grad=settings.loss == "siglip",
        )
        self.optimizer = _optimizer(self.model, self.logit_bias, settings)
        self.scaler = torch.amp.GradScaler("cuda") if settings.precision == "fp16" else None
        self.autocast = _autocast_factory(settings.precision, self.device)
        self.validation = prepare_validation(
            val_set, self._load_pixels, self.tokenizer, max_pairs=settings.eval_max_pairs
        )
        self.metrics_path = out / "metrics.jsonl"
        self.mined: MinedBatches | None = None  # the mined batch sampler, once made
        self.restored_sampler: dict | None = None  # its state from `last.pt` (`resume`)

    def _load_pixels(self, pairs: list):
        return load_pixels(pairs, self.preprocess, self.image_size, workers=self.settings.workers)

    # -- starting and resuming ----------------------------------------------------------------
    def start(self) -> _State:
        self.metrics_path.write_text("")
        state = _State()
        first = self._evaluate(0)
        state.start = first.as_record()
        _save_similarity(self.out / "similarity_start.json", first)
        self._after_eval(state, first)
        return state

    def resume(self) -> _State:
        saved = checkpoints.load(self.out / "last.pt")
        before = TrainSettings(**saved["settings"])
        changed = [k for k in RESUME_MUST_MATCH if getattr(before, k) != getattr(self.settings, k)]
        if changed:
            raise InvalidInputError(
                f"cannot resume {self.out}: {', '.join(changed)} differ from the interrupted run; "
                "use the same settings or a new --out"
            )
        self.model.load_state_dict(saved["state_dict"])
        self.logit_bias.data.fill_(float(saved["logit_bias"]))
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        checkpoints.restore_rng_states(saved["rng"])
        self.restored_sampler = saved.get("sampler")
        state = _State(**saved["run_state"])
        _truncate_metrics(self.metrics_path, state.step)
        log.info("resuming %s at step %d of %d", self.out, state.step, self.total)
        return state

    # -- the loop -------------------------------------------------------------------------------
    def loop(self, state: _State) -> _State:
        from searchengine.progress import progress_bar

        bar = progress_bar(self.total, initial=state.step, enabled=self.settings.progress,
                           desc="train", unit="step")
        tick, first = time.perf_counter(), True
        for batch in self._batches(state):
            loss = self._step(state.step, batch)
            state.step += 1
            state.dropped += batch.dropped
            state.pairs_seen += len(batch.image_ids)
            now = time.perf_counter()
            if not first:  # the first step waits for the workers to start: start-up, not training
                state.train_seconds += now - tick
                state.timed_pairs += len(batch.image_ids)
            first = False
            record = self._log_step(state, loss, len(batch.image_ids) / max(now - tick, 1e-9))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", pairs_s=f"{record['pairs_per_s']:.1f}",
                            temp=f"{record['temperature']:.2f}")
            stop = False
            if state.step % self.settings.eval_every == 0 or state.step == self.total:
                stop = self._after_eval(state, self._evaluate(state.step))
            if stop or state.step % self.settings.save_every == 0 or state.step == self.total:
                self._save_last(state)
            if stop:
                break
            tick = time.perf_counter()
        bar.close()
        return state

    def _batches(self, state: _State) -> Iterator[Batch]:
        """The batches of steps `state.step` .. total - 1, decoded by workers at idle priority where
        the system has it. If they keep the model waiting (`batches_until_starved`: other
        programs keep the cores busy, or decoding is the bottleneck), they are restarted at
        normal priority from the step not yet trained (the loop has advanced `state.step` by
        then), as `index` does."""
        # mined batches are drawn in this process, a refresh re-embedding every caption: the
        # starvation rule would read that wait as starved workers and restart them, refresh
        # and all, so mined runs decode at normal priority from the start
        idle = (idle_decoding(self.settings.workers)
                and self.settings.hard_negatives not in ("mined", "both"))
        while True:
            try:
                yield from batches_until_starved(self._loader(state.step, idle), idle)
                return
            except WorkersStarved as starved:
                log.warning("decode workers at idle priority keep the model waiting (%s); "
                            "restarting them at normal priority", starved)
                idle = False

    def _loader(self, start: int, idle: bool):
        import torch

        augment = augmentation(self.model) if self.settings.augment else None
        dataset = PairDataset(self.train_set.pairs, self.preprocess, self.image_size,
                              augment=augment)
        batches = self._sampler(start, dataset.image_ids)
        workers = self.settings.workers
        loader: torch.utils.data.DataLoader[tuple] = torch.utils.data.DataLoader(
            dataset,  # type: ignore[arg-type]  # torch's stub wants a Dataset; any map-style one runs
            batch_sampler=batches, num_workers=workers,
            collate_fn=self._collate(dataset), pin_memory=bool(self.cuda_devices),
            persistent_workers=False,
            worker_init_fn=partial(decode_worker_init, idle=idle) if workers else None,
            timeout=STARVED_AFTER if idle else 0,
        )
        return loader

    def _sampler(self, start: int, image_ids: list[int]):
        """Random batches, or with `--hard-negatives mined|both` batches of near pairs."""
        if self.settings.hard_negatives not in ("mined", "both"):
            return StepBatches(len(self.train_set), self.settings.batch_size,
                               seed=self.settings.seed, start=start, total=self.total)
        from searchengine.training.mining import MinedBatches, embed_captions

        tokens = self.tokenizer([pair.caption for pair in self.train_set.pairs])  # (n, L)
        self.mined = MinedBatches(
            len(self.train_set), self.settings.batch_size, seed=self.settings.seed, start=start,
            total=self.total, group=self.settings.mine_group,
            refresh_every=self.settings.refresh_every, image_ids=image_ids,
            embed=lambda: embed_captions(self.model, tokens, device=self.device,
                                         autocast=self.autocast),
            restored=self.restored_sampler,
        )
        return self.mined

    def _collate(self, dataset: PairDataset) -> Callable:
        """Tokenise the batch; with `--hard-negatives swapped|both` add its swapped captions."""
        if self.vocabulary is None:
            return Collate(self.tokenizer)
        from searchengine.training.negatives import SwapCollate

        return SwapCollate(Collate(self.tokenizer), self.tokenizer, dataset.pairs,
                           dataset.image_ids, self.vocabulary,
                           per_caption=self.settings.swaps_per_caption, seed=self.settings.seed,
                           seen_only=self.settings.swap_seen_only)

    def _step(self, step: int, batch) -> float:
        import torch

        lr = learning_rate(step, base_lr=self.settings.lr, warmup_steps=self.warmup,
                           total_steps=self.total)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        pixels = batch.pixels.to(self.device, non_blocking=True)
        tokens = batch.tokens.to(self.device, non_blocking=True)
        extra_mask = None
        if batch.extra_tokens is not None:  # swapped captions: text-only rows after the N
            tokens = torch.cat([tokens, batch.extra_tokens.to(self.device, non_blocking=True)])
            extra_mask = batch.extra_mask.to(self.device)
        loss = contrastive_backward(
            self.model, pixels, tokens,
            self._loss_function(batch.image_ids.to(self.device), extra_mask),
            micro_batch=self.settings.micro_batch, autocast=self.autocast,
            scale_loss=self.scaler.scale if self.scaler else (lambda value: value),
        )
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        with torch.no_grad():  # keep exp(logit_scale) in [1, 100], as CLIP does
            self.model.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))
        return float(loss)

    def _loss_function(self, image_ids: torch.Tensor, extra_mask: torch.Tensor | None = None
                       ) -> Callable:
        """The loss of (N, D) image and (N + E, D) text embeddings: rows past N are hard negative
        captions (E = 0 without them), masked for the images they are true of by `extra_mask`."""
        scale, bias, n = self.model.logit_scale, self.logit_bias, len(image_ids)

        def loss(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
            extra = {"extra_text_embeddings": texts[n:], "extra_mask": extra_mask} if (
                len(texts) > n) else {}
            if self.settings.loss == "siglip":
                return siglip_loss(images, texts[:n], scale, bias, image_ids, **extra)
            return clip_loss(images, texts[:n], scale, image_ids, **extra)

        return loss

    # -- evaluation, bookkeeping, checkpoints ---------------------------------------------------
    def _evaluate(self, step: int) -> Evaluation:
        evaluation = evaluate(self.model, self.validation, step, device=self.device,
                              autocast=self.autocast)
        self._append({"kind": "eval", **evaluation.as_record()})
        log.info("step %d: mean recall %.4f, diagonal gap %.4f", step, evaluation.recall_mean,
                 evaluation.diagonal_gap)
        return evaluation

    def _after_eval(self, state: _State, evaluation: Evaluation) -> bool:
        """Track the best model; True when early stopping says to stop."""
        state.final = evaluation.as_record()
        if evaluation.recall_mean > state.best_recall:
            state.best_recall, state.best_step, state.bad_evals = (
                evaluation.recall_mean, evaluation.step, 0)
            state.best = evaluation.as_record()
            checkpoints.save(self._model_checkpoint(evaluation.step, state.best),
                             self.out / "best.pt")
            _save_similarity(self.out / "similarity_best.json", evaluation)
        elif evaluation.step > 0:
            state.bad_evals += 1
        patience = self.settings.patience
        return patience is not None and state.bad_evals >= patience

    def _model_checkpoint(self, step: int, metrics: dict) -> dict:
        return checkpoints.model_checkpoint(
            self.model, self.spec.arch, step, metrics=metrics, settings=self.settings.as_dict(),
            logit_bias=float(self.logit_bias.detach()), source_model=self.spec.id,
        )

    def _save_last(self, state: _State) -> None:
        saved = self._model_checkpoint(state.step, state.final)
        saved.update(
            optimizer=self.optimizer.state_dict(),
            scheduler={"step": state.step, "total": self.total, "warmup": self.warmup},
            scaler=self.scaler.state_dict() if self.scaler else {},
            rng=checkpoints.rng_states(), run_state=dict(state.__dict__),
        )
        if self.mined is not None:  # the batches in flight and the sampler after them
            saved["sampler"] = self.mined.state(state.step)
        checkpoints.save(saved, self.out / "last.pt")

    def _log_step(self, state: _State, loss: float, pairs_per_second: float) -> dict:
        record = {
            "kind": "train", "step": state.step, "loss": loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "temperature": float(self.model.logit_scale.detach().exp()),
            "pairs_per_s": pairs_per_second,
        }
        self._append(record)
        return record

    def _append(self, record: dict) -> None:
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def finish(self, state: _State) -> TrainSummary:
        from searchengine.training.plots import write_plots

        improved = state.best_step > 0
        stopped_early = state.step < self.total
        summary = TrainSummary(
            out=self.out, best_checkpoint=self.out / "best.pt", steps=state.step,
            train_pairs=len(self.train_set), val_pairs=len(self.validation.tokens),
            start=state.start, best=state.best, final=state.final, improved=improved,
            stopped_early=stopped_early,
            pairs_per_second=state.timed_pairs / max(state.train_seconds, 1e-9),
            skipped={"unusable rows": len(self.train_set.skipped), "undecodable": state.dropped},
            message=_verdict(state, improved),
        )
        (self.out / "summary.json").write_text(json.dumps(summary.as_dict(), indent=2))
        write_plots(self.out)
        return summary


def _swap_vocabulary(settings: TrainSettings):
    """The swap vocabulary the run needs (`--hard-negatives swapped|both`), else None."""
    if settings.hard_negatives not in ("swapped", "both"):
        return None
    from searchengine.training.negatives import load_vocabulary

    return load_vocabulary(settings.swap_vocabulary)


def _verdict(state: _State, improved: bool) -> str:
    start, best = state.start.get("recall_mean", 0.0), state.best.get("recall_mean", 0.0)
    if not improved:
        return (f"training never beat the starting model (mean recall {start:.4f}); best.pt holds "
                "the starting weights")
    return (f"mean recall rose from {start:.4f} to {best:.4f} (best at step {state.best_step})")


def _optimizer(model: torch.nn.Module, logit_bias: torch.Tensor, settings: TrainSettings):
    """AdamW, grouped as open_clip_train does: 1-D tensors (biases, norm gains, the class
    embedding), any parameter named like a norm (`ln`, `bn`) or a bias, the temperature and the
    SigLIP bias get no weight decay; weight matrices and the (2-D) position embeddings do.

    The fused kernel (one pass over each tensor) where torch has one for the device: a third of a
    se-tiny step on the CPU went to the per-tensor Python implementation.
    """
    import torch

    decay: list[torch.Tensor] = []
    no_decay: list[torch.Tensor] = []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        exempt = (parameter.ndim < 2 or "bn" in name or "ln" in name or "bias" in name
                  or "logit_scale" in name)
        (no_decay if exempt else decay).append(parameter)
    if logit_bias.requires_grad:
        no_decay.append(logit_bias)
    groups = [{"params": no_decay, "weight_decay": 0.0},
              {"params": decay, "weight_decay": settings.weight_decay}]
    devices = {parameter.device.type for parameter in decay + no_decay}
    fused = devices <= {"cpu", "cuda"} or None
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, 0.98), eps=1e-6, fused=fused)


def _autocast_factory(precision: str, device: str) -> Callable:
    import torch

    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    return lambda: torch.autocast(device_type=device_type, dtype=dtype)


def _save_similarity(path: Path, evaluation: Evaluation) -> None:
    path.write_text(json.dumps({"step": evaluation.step,
                                "similarity": evaluation.similarity.tolist()}))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records written after the checkpoint a resume starts from (they will be redone)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))

