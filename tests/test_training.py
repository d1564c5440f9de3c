"""The trainer: gradient caching against the plain batch, resume, best.pt, the CLI end to end."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import shape_photos
from float_noise import score_noise

from searchengine.cli import cli
from searchengine.models import build_model, parse_model_spec
from searchengine.training import loop
from searchengine.training.data import PairDataset, StepBatches
from searchengine.training.gradcache import contrastive_backward
from searchengine.training.losses import clip_loss, siglip_loss
from searchengine.training.pairs import read_pairs
from searchengine.training.schedule import learning_rate
from searchengine.training.settings import TrainSettings


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 generated images (6 colours x 2 shapes), two captions each, plus one missing image."""
    folder = tmp_path_factory.mktemp("pairs")
    lines = ["image,caption"]
    for name, color, shape in shape_photos(folder):
        lines += [f"{name},a {color} {shape}", f"{name},{shape} painted {color}"]
    lines.append("gone.png,a missing picture")
    (folder / "pairs.csv").write_text("\n".join(lines) + "\n")
    return folder / "pairs.csv"


def _settings(**changes) -> TrainSettings:
    base = dict(model="se-tiny/random", batch_size=8, lr=1e-3, steps=6, eval_every=3,
                save_every=3, workers=0, progress=False, val_fraction=0.25, device="cpu")
    return TrainSettings(**{**base, **changes})


def _tiny_model(dtype: torch.dtype = torch.float32):
    model, _, tokenizer = build_model(parse_model_spec("se-tiny/random"), seed=1)
    return model.to(dtype).train(), tokenizer


def _gradients(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# Gradient caching is exact algebra, not an approximation: in float64 the cached and the plain
# gradients differ only by the summation order of the chunks, ~1e-16 relative, so 1e-10 of each
# tensor's norm leaves room for any CPU's BLAS while a real error (a wrong slice, a lost dropout
# mask, per-micro-batch losses) is off by 1e-3 or more (see the naive accumulation test below).
EXACT = 1e-10


def _relative_errors(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict:
    """Per tensor: ||got - expected|| / ||expected|| (an all-zero tensor must match exactly)."""
    return {
        name: float((got[name] - tensor).norm() / tensor.norm().clamp_min(1e-300))
        for name, tensor in expected.items()
    }


def _loss_function(loss_name: str, model, bias: torch.Tensor, image_ids: torch.Tensor):
    def loss_function(images, texts):
        if loss_name == "siglip":
            return siglip_loss(images, texts, model.logit_scale, bias, image_ids)
        return clip_loss(images, texts, model.logit_scale, image_ids)

    return loss_function


def _double_batch(tokenizer):
    pixels = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = tokenizer([f"caption number {i}" for i in range(7)])
    return pixels.double(), tokens, torch.tensor([0, 0, 1, 2, 3, 3, 4])


@pytest.mark.parametrize("loss_name", ["clip", "siglip"])
def test_gradient_caching_gives_the_full_batch_gradients(loss_name: str) -> None:
    model, tokenizer = _tiny_model(torch.float64)
    pixels, tokens, image_ids = _double_batch(tokenizer)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    loss_function = _loss_function(loss_name, model, bias, image_ids)

    reference_loss = contrastive_backward(model, pixels, tokens, loss_function)
    reference, reference_bias = _gradients(model), bias.grad
    model.zero_grad(set_to_none=True)
    bias.grad = None
    cached_loss = contrastive_backward(model, pixels, tokens, loss_function, micro_batch=3)
    cached = _gradients(model)
    assert reference_loss.dtype == cached_loss.dtype == torch.float64
    assert cached_loss.item() == pytest.approx(reference_loss.item(), rel=EXACT)
    assert cached.keys() == reference.keys() and "logit_scale" in cached
    errors = _relative_errors(cached, reference)
    assert max(errors.values()) < EXACT, {n: e for n, e in errors.items() if e >= EXACT}
    if loss_name == "siglip":
        assert float((bias.grad - reference_bias).abs() / reference_bias.abs()) < EXACT


def test_the_exactness_check_catches_a_wrong_gradient_cache() -> None:
    """Plain accumulation of per-micro-batch losses (the mistake gradient caching avoids) fails
    the check of the test above by orders of magnitude, so that check can see a real bug."""
    model, tokenizer = _tiny_model(torch.float64)
    pixels, tokens, image_ids = _double_batch(tokenizer)
    loss_function = _loss_function("clip", model, None, image_ids)
    contrastive_backward(model, pixels, tokens, loss_function)
    reference = _gradients(model)
    model.zero_grad(set_to_none=True)
    for chunk in (slice(0, 3), slice(3, 6), slice(6, 7)):
        def chunk_loss(images, texts, chunk=chunk):
            return clip_loss(images, texts, model.logit_scale, image_ids[chunk]) * (
                (chunk.stop - chunk.start) / len(pixels)
            )

        contrastive_backward(model, pixels[chunk], tokens[chunk], chunk_loss)
    errors = _relative_errors(_gradients(model), reference)
    assert max(errors.values()) > 1e6 * EXACT


def test_gradient_caching_with_a_locked_image_tower() -> None:
    model, tokenizer = _tiny_model(torch.float64)
    model.lock_image_tower()
    pixels = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1)).double()
    tokens = tokenizer([f"text {i}" for i in range(5)])

    def loss_function(images, texts):
        return clip_loss(images, texts, model.logit_scale)

    contrastive_backward(model, pixels, tokens, loss_function)
    reference = _gradients(model)
    model.zero_grad(set_to_none=True)
    contrastive_backward(model, pixels, tokens, loss_function, micro_batch=2)
    cached = _gradients(model)
    assert not any(name.startswith("visual.") for name in cached)
    assert cached.keys() == reference.keys()
    errors = _relative_errors(cached, reference)
    assert max(errors.values()) < EXACT, errors


def test_schedule_warms_up_then_decays_to_zero() -> None:
    rates = [learning_rate(s, base_lr=1.0, warmup_steps=4, total_steps=12) for s in range(13)]
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0]
    assert rates[8] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert rates[12] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(rates[3:], rates[4:], strict=False))


def test_batches_are_a_function_of_the_step() -> None:
    full = list(StepBatches(10, 3, seed=5, start=0, total=8))
    tail = list(StepBatches(10, 3, seed=5, start=5, total=8))
    assert tail == full[5:]
    assert sorted(sum(full[:3], [])) == sorted(set(sum(full[:3], [])))  # an epoch has no repeats
    assert len(full) == 8 and all(len(batch) == 3 for batch in full)


def test_cpu_threads_take_every_core_beside_idle_decoders_else_leave_a_core_per_worker(
    pairs_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert loop.intra_op_threads(1, cpus=2) == 2  # idle-priority workers: the model gets all
    assert loop.intra_op_threads(2, cpus=16, idle_workers=True) == 16
    assert loop.intra_op_threads(2, cpus=2, idle_workers=False) == 1
    assert loop.intra_op_threads(2, cpus=16, idle_workers=False) == 14
    assert loop.intra_op_threads(0, cpus=4, idle_workers=False) == 4
    assert loop.intra_op_threads(8, cpus=4, idle_workers=False) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert loop.intra_op_threads(2, cpus=2) is None  # the user's setting wins
    assert loop.intra_op_threads(2, cpus=2, idle_workers=False) is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    seen = step_threads(monkeypatch)
    monkeypatch.setattr(loop, "intra_op_threads", lambda workers, idle_workers: 1)
    before = torch.get_num_threads()
    summary = loop.train(tmp_path / "run", _settings(steps=2, eval_every=2), pairs=pairs_csv)
    assert seen == [1, 1] and torch.get_num_threads() == before
    assert summary.pairs_per_second > 0  # timed from the second step on


def step_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The list to which every training step of the test appends torch's intra-op threads."""
    seen: list[int] = []
    original_step = loop._Run._step

    def watched_step(self, step, batch):
        seen.append(torch.get_num_threads())
        return original_step(self, step, batch)

    monkeypatch.setattr(loop._Run, "_step", watched_step)
    return seen


def test_pair_dataset_decodes_each_image_once_within_its_budget(
    pairs_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from searchengine.training import data

    _, preprocess, _ = build_model(parse_model_spec("se-tiny/random"), seed=1)
    pairs = read_pairs(pairs_csv).pairs  # two captions per image
    decoded = []
    original_decode = data.decode_image

    def counting_decode(source, image_size):
        decoded.append(source)
        return original_decode(source, image_size)

    monkeypatch.setattr(data, "decode_image", counting_decode)
    one_image = 3 * 32 * 32 * 4
    for budget, expected_decodes in ((10**9, 12), (0, 24), (one_image, 23)):
        decoded.clear()
        dataset = PairDataset(pairs, preprocess, 32, cache_bytes=budget)
        items = [dataset[i] for i in range(len(pairs))] + [dataset[0]]
        assert len(decoded) == expected_decodes + (budget < one_image)
        fresh = PairDataset(pairs, preprocess, 32, cache_bytes=0)
        for i, (pixels, caption, image_id) in enumerate(items[:-1]):
            reference = fresh[i]
            assert torch.equal(pixels, reference[0]) and caption == reference[1]
            assert image_id == dataset.image_ids[i]


def _losses(out: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]


def test_resume_reproduces_the_uninterrupted_run(
    pairs_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings()
    loop.train(tmp_path / "whole", settings, pairs=pairs_csv)

    original_step = loop._Run._step

    def interrupted_step(self, step, batch):
        if step == 4:
            raise KeyboardInterrupt
        return original_step(self, step, batch)

    monkeypatch.setattr(loop._Run, "_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        loop.train(tmp_path / "cut", settings, pairs=pairs_csv)
    monkeypatch.setattr(loop._Run, "_step", original_step)
    assert [step for step, _ in _losses(tmp_path / "cut")] == [1, 2, 3, 4]
    summary = loop.train(tmp_path / "cut", settings, pairs=pairs_csv, resume=True)

    whole, resumed = _losses(tmp_path / "whole"), _losses(tmp_path / "cut")
    assert [step for step, _ in resumed] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([v for _, v in resumed], [v for _, v in whole], rtol=1e-5)
    assert summary.steps == 6 and summary.skipped["unusable rows"] == 1


def test_best_checkpoint_loads_through_the_encoder(pairs_csv: Path, tmp_path: Path) -> None:
    from searchengine.encoder import Encoder
    from searchengine.settings import EncoderSettings

    summary = loop.train(tmp_path / "run", _settings(steps=3, eval_every=1), pairs=pairs_csv)
    saved = torch.load(summary.best_checkpoint, weights_only=True)
    assert saved["arch"] == "se-tiny" and saved["model_config"]["embed_dim"] == 64
    encoder = Encoder.load(f"se-tiny/{summary.best_checkpoint}", EncoderSettings(device="cpu"))
    for name, value in encoder.model.state_dict().items():
        torch.testing.assert_close(value, saved["state_dict"][name])
    texts = encoder.encode_texts(["a red circle", "a blue square"])
    assert texts.shape == (2, 64)
    assert np.allclose(np.linalg.norm(texts, axis=1), 1, atol=score_noise(64))
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert {"optimizer", "scheduler", "rng", "settings", "step"} <= last.keys()


@pytest.mark.parametrize(("model", "micro_batch", "warned"), [
    ("se-scenes-rn/random", 4, True), ("se-scenes-rn/random", None, False),
    ("se-tiny/random", 4, False)])
def test_micro_batches_over_batch_normalisation_are_warned_of(
    pairs_csv: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    model: str, micro_batch: int | None, warned: bool,
) -> None:
    """Gradient caching is exact only without batch statistics: a model with batch norm (the
    convolutional scene tower) trained with --micro-batch gets a warning saying so."""
    settings = _settings(model=model, micro_batch=micro_batch, steps=1, eval_every=1)
    with caplog.at_level(logging.WARNING, logger="searchengine.training.loop"):
        loop.train(tmp_path / "run", settings, pairs=pairs_csv)
    assert any("batch normalisation" in m for m in caplog.messages) == warned, caplog.messages


def test_a_run_that_never_improves_keeps_the_starting_weights(
    pairs_csv: Path, tmp_path: Path
) -> None:
    summary = loop.train(tmp_path / "run", _settings(steps=2, eval_every=1, lr=1e-12),
                         pairs=pairs_csv)
    assert not summary.improved and "never beat the starting model" in summary.message
    assert torch.load(summary.best_checkpoint, weights_only=True)["step"] == 0


def test_cli_train_end_to_end(pairs_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli-run"
    result = CliRunner().invoke(cli, [
        "train", str(pairs_csv), "--model", "se-tiny/random", "--out", str(out), "--steps", "4",
        "--batch-size", "6", "--micro-batch", "4", "--lr", "1e-3", "--eval-every", "2",
        "--workers", "0", "--device", "cpu", "--precision", "bf16", "--loss", "siglip",
        "--val-fraction", "0.25", "--patience", "5",
    ])
    assert result.exit_code == 0, result.output
    assert "best checkpoint:" in result.output and "t2i R@5" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["val_pairs"] == 6
    assert {"training.png", "similarity.png", "best.pt", "last.pt"} <= {
        p.name for p in out.iterdir()}
    bad = CliRunner().invoke(cli, ["train", str(pairs_csv), "--out", str(tmp_path / "x"),
                                   "--model", "se-tiny/random", "--device", "cpu",
                                   "--precision", "fp16"])
    assert bad.exit_code == 1 and "fp16 training needs a GPU" in bad.output


def test_a_rerun_after_ctrl_c_never_overwrites_the_run_and_names_resume(
    pairs_csv: Path, tmp_path: Path, cli_run
) -> None:
    """Ctrl-C (a real SIGINT) a CLI run, then run the same command again: without --resume it is
    refused and last.pt is untouched; with --resume it continues from the saved step."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    command = ["train", str(pairs_csv), "--model", "se-tiny/random", "--out", str(out),
               "--batch-size", "8", "--lr", "1e-3", "--eval-every", "1000", "--save-every", "1",
               "--workers", "0", "--device", "cpu", "--val-fraction", "0.25"]
    process = subprocess.Popen(
        [sys.executable, "-c", "from searchengine.cli import cli; cli()", *command,
         "--steps", "100000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        # as at a terminal: a suite started in the background of a shell without job control
        # ignores SIGINT, and its children would inherit that (Python then never raises
        # KeyboardInterrupt), so Ctrl-C's default is restored for the child
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    while not (out / "last.pt").is_file() and process.poll() is None:
        assert time.monotonic() < deadline, "no last.pt written"
        time.sleep(0.05)
    time.sleep(0.3)  # a few more steps
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    saved = (out / "last.pt").read_bytes()
    metrics = (out / "metrics.jsonl").read_text()
    step = torch.load(out / "last.pt", weights_only=True)["run_state"]["step"]

    again = cli_run(*command, "--steps", "100000", expect=1)
    assert "unfinished run" in again.output and "--resume" in again.output
    assert (out / "last.pt").read_bytes() == saved  # nothing overwritten
    assert (out / "metrics.jsonl").read_text() == metrics

    resumed = cli_run.json(*command, "--steps", step + 2, "--resume")
    assert resumed["steps"] == step + 2
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "train"]
    assert steps == list(range(1, step + 3))  # continued from the saved step, not from 0
    finished = cli_run(*command, "--steps", step + 2, expect=1)
    assert "finished run" in finished.output
