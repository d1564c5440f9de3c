"""The trainer's details found against open_clip_train: the thread and decode-priority policy,
`augment`, the epoch seeding and the weight-decay groups."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import _losses, _settings, pairs_csv, step_threads  # noqa: F401  (pairs_csv: a fixture)

from searchengine.models import build_model, parse_model_spec, register_bundled_configs
from searchengine.training import data, loop
from searchengine.training.data import PairDataset, StepBatches, augmentation, epoch_seed
from searchengine.training.pairs import Pair
from searchengine.training.settings import TrainSettings

needs_sched_idle = pytest.mark.skipif(
    not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux-only"
)


def _tiny():
    model, preprocess, _ = build_model(parse_model_spec("se-tiny/random"), seed=1)
    return model, preprocess


# -- threads and decode priority ------------------------------------------------------------------
def _record_decodes(monkeypatch: pytest.MonkeyPatch, log_file: Path, stall: float = 0.0,
                    slow: float = 0.0) -> None:
    """Every decode appends the scheduling policy of its process to `log_file` (workers are forked,
    so they run the patched function too). In an idle-priority process, the first decode sleeps
    `stall` seconds and every decode `slow` seconds: an idle worker that something else keeps
    off the CPU, wholly or mostly."""
    original = data.decode_image
    stalled: set[int] = set()

    def recording_decode(source, image_size):
        policy = os.sched_getscheduler(0)
        with log_file.open("a") as handle:
            handle.write(f"{policy}\n")
        if policy == os.SCHED_IDLE:
            time.sleep(slow)
            if stall and os.getpid() not in stalled:
                stalled.add(os.getpid())
                time.sleep(stall)
        return original(source, image_size)

    monkeypatch.setattr(data, "decode_image", recording_decode)


@needs_sched_idle
def test_a_run_decodes_at_idle_priority_while_the_model_uses_every_core(
    pairs_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    decodes = tmp_path / "decodes.txt"
    _record_decodes(monkeypatch, decodes)
    threads = step_threads(monkeypatch)
    decodes.write_text("")
    loop.train(tmp_path / "run", _settings(steps=2, eval_every=2, workers=1), pairs=pairs_csv)
    cores = len(os.sched_getaffinity(0))
    assert threads == [cores, cores]
    policies = {int(line) for line in decodes.read_text().split()}
    assert os.SCHED_IDLE in policies  # the training workers (validation decodes at normal)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the model's process is left alone


@needs_sched_idle
@pytest.mark.parametrize("starvation", ["a stall", "slow decoding"])
def test_starved_idle_workers_restart_at_normal_priority_with_the_same_batches(
    starvation: str, pairs_csv: Path, tmp_path: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A stall: no batch within STARVED_AFTER (the DataLoader's timeout). Slow decoding: batches
    come, but the model waits for them most of the time (STARVED_WAIT in all)."""
    settings = _settings(steps=4, eval_every=4, save_every=4)
    loop.train(tmp_path / "main", settings, pairs=pairs_csv)  # decoded in this process
    monkeypatch.setattr(data, "STARVED_AFTER", 1.0 if starvation == "a stall" else 30.0)
    monkeypatch.setattr(loop, "STARVED_AFTER", 1.0 if starvation == "a stall" else 30.0)
    monkeypatch.setattr(data, "STARVED_WAIT", 0.5 if starvation == "slow decoding" else 1e9)
    monkeypatch.setattr(data, "STARVED_SHARE", 0.0)  # however slow this host makes the steps
    decodes = tmp_path / "decodes.txt"
    if starvation == "a stall":
        _record_decodes(monkeypatch, decodes, stall=2.5)
    else:
        _record_decodes(monkeypatch, decodes, slow=0.1)  # 0.8 s a batch of 8
    with caplog.at_level("WARNING", logger="searchengine.training"):
        summary = loop.train(tmp_path / "starved", TrainSettings(
            **{**settings.as_dict(), "workers": 1}), pairs=pairs_csv)
    assert "restarting them at normal priority" in caplog.text
    reason = "no batch for 1 s" if starvation == "a stall" else "the model waited for them"
    assert reason in caplog.text
    assert summary.steps == 4
    policies = [int(line) for line in decodes.read_text().split()]
    first_idle = policies.index(os.SCHED_IDLE)  # validation decoded before, at normal priority
    assert os.SCHED_OTHER in policies[first_idle:]  # the restarted workers
    starved, whole = _losses(tmp_path / "starved"), _losses(tmp_path / "main")
    assert [step for step, _ in starved] == [1, 2, 3, 4]
    np.testing.assert_allclose([v for _, v in starved], [v for _, v in whole], rtol=1e-5)


def test_the_train_command_asks_openmp_for_passive_waits_before_torch_loads(
    pairs_csv: Path, tmp_path: Path  # noqa: F811
) -> None:
    """In a fresh process (OpenMP reads the policy once, when torch loads): the command sets
    OMP_WAIT_POLICY=PASSIVE before anything imports torch, as `index` does."""
    script = (
        "import os, sys\n"
        "from click.testing import CliRunner\n"
        "from searchengine.cli import cli\n"
        "from searchengine.errors import InvalidInputError\n"
        "from searchengine.training import loop\n"
        "def spy(*args, **kwargs):\n"
        "    raise InvalidInputError(f\"policy {os.environ.get('OMP_WAIT_POLICY')} \"\n"
        "                            f\"torch {'torch' in sys.modules}\")\n"
        "loop.train = spy\n"
        f"result = CliRunner().invoke(cli, ['train', {str(pairs_csv)!r}, '--out', "
        f"{str(tmp_path / 'run')!r}, '--model', 'se-tiny/random'])\n"
        "print(result.output)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, check=True, timeout=300)
    assert "policy PASSIVE torch False" in result.stdout


# -- augment --------------------------------------------------------------------------------------
@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """A square photo with detail everywhere, so that any two crops of it differ. (Square: on a
    photo wider than 4:3, RandomResizedCrop at scale 0.9-1.0 finds no crop of its ratios and
    falls back to the same central one every time.)"""
    from PIL import Image

    path = tmp_path / "photo.png"
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    return path


def test_augmentation_is_open_clips_own_training_transform(photo: Path) -> None:
    import open_clip

    model, _ = _tiny()
    register_bundled_configs("se-tiny")
    _, reference, _ = open_clip.create_model_and_transforms("se-tiny")
    ours = augmentation(model)
    crop = ours.transforms[0]
    assert type(crop).__name__ == "RandomResizedCrop" and crop.scale == (0.9, 1.0)
    assert crop.interpolation.value == "bicubic" and tuple(crop.size) == (32, 32)
    image = data.decode_image(photo, 32)
    torch.manual_seed(7)
    got = ours(image)
    torch.manual_seed(7)
    torch.testing.assert_close(got, reference(image))  # the same crop from the same draws


def test_augmented_pixels_are_fresh_random_crops_never_cached(
    photo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, preprocess = _tiny()
    pairs = (Pair(photo, "noise", "photo"), Pair(photo, "more noise", "photo"))
    decoded = []
    original = data.decode_image
    monkeypatch.setattr(data, "decode_image", lambda *a: decoded.append(a) or original(*a))
    plain = PairDataset(pairs, preprocess, 32)
    augmented = PairDataset(pairs, preprocess, 32, augment=augmentation(model))
    torch.manual_seed(0)
    first, second, again = augmented[0][0], augmented[1][0], augmented[0][0]
    evaluation = plain[0][0]
    assert first.shape == evaluation.shape == (3, 32, 32)
    for one, other in ((first, evaluation), (first, second), (first, again)):
        assert (one - other).abs().max() > 0.1  # another crop, not float noise
    assert len(decoded) == 3 + 1 and augmented.cache == {}  # decoded at every use
    assert plain[1][0] is evaluation and len(decoded) == 4  # the evaluation crop: cached


def test_without_augment_the_pixels_are_the_evaluation_preprocessing(photo: Path) -> None:
    """The default path is the one before `augment` existed: the model's own preprocess of the
    decoded image, bit for bit (the same deterministic computation)."""
    _, preprocess = _tiny()
    dataset = PairDataset((Pair(photo, "noise", "photo"),), preprocess, 32)
    assert torch.equal(dataset[0][0], preprocess(data.decode_image(photo, 32)))


def test_augment_reaches_training_and_its_runs_repeat(
    pairs_csv: Path, tmp_path: Path  # noqa: F811
) -> None:
    from click.testing import CliRunner

    from searchengine.cli import cli

    plain = loop.train(tmp_path / "plain", _settings(steps=3), pairs=pairs_csv)
    runs = []
    for name in ("augmented", "again"):
        result = CliRunner().invoke(cli, [
            "train", str(pairs_csv), "--out", str(tmp_path / name), "--model", "se-tiny/random",
            "--augment", "--steps", "3", "--batch-size", "8", "--lr", "1e-3", "--workers", "0",
            "--val-fraction", "0.25", "--device", "cpu", "--json"])
        assert result.exit_code == 0, result.output
        runs.append(_losses(tmp_path / name))
    saved = torch.load(tmp_path / "again" / "last.pt", weights_only=True)
    assert saved["settings"]["augment"] is True and plain.steps == 3
    np.testing.assert_allclose([v for _, v in runs[0]], [v for _, v in runs[1]], rtol=1e-6)
    difference = max(abs(a - b) for (_, a), (_, b) in zip(runs[0], _losses(tmp_path / "plain"),
                                                          strict=True))
    assert difference > 1e-3  # other pixels, other losses


# -- epoch seeding --------------------------------------------------------------------------------
def _epoch(seed: int, epoch: int, n: int = 40, batch_size: int = 5) -> list[int]:
    per_epoch = n // batch_size
    batches = StepBatches(n, batch_size, seed=seed, start=epoch * per_epoch,
                          total=(epoch + 1) * per_epoch)
    return [i for batch in batches for i in batch]


def test_each_epoch_order_comes_from_seed_and_epoch_not_their_sum() -> None:
    for seed, epoch in ((0, 0), (5, 2), (123, 9)):
        assert _epoch(seed, epoch + 1) != _epoch(seed + 1, epoch)
        assert _epoch(seed, epoch) == _epoch(seed, epoch)  # and repeats exactly
        assert sorted(_epoch(seed, epoch)) == list(range(40))  # a permutation
    assert epoch_seed(3, 1) == epoch_seed(3, 1) != epoch_seed(4, 0)
    assert 0 <= epoch_seed(-1, 0) < 2**63  # any int seed gives torch a valid one
    assert len({tuple(_epoch(0, e)) for e in range(6)}) == 6  # epochs of a run differ


# -- weight decay -------------------------------------------------------------------------------
def _open_clip_train_exclude():
    """open_clip_train's own no-decay rule, read from its main.py (None when not installed)."""
    spec = importlib.util.find_spec("open_clip_train")
    if spec is None or spec.origin is None:
        return None
    source = (Path(spec.origin).parent / "main.py").read_text()
    line = next(line for line in source.splitlines() if "exclude = lambda" in line)
    return eval(line.split("=", 1)[1])  # noqa: S307  (the installed reference's own lambda)


@pytest.mark.parametrize("arch", ["se-tiny", "ViT-S-32"])
def test_weight_decay_groups_are_open_clip_trains(arch: str) -> None:
    exclude = _open_clip_train_exclude()
    if exclude is None:
        pytest.skip("open_clip_train is not installed")
    model, _, _ = build_model(parse_model_spec(f"{arch}/random"), seed=0)
    bias = torch.nn.Parameter(torch.tensor(-10.0), requires_grad=False)
    optimizer = loop._optimizer(model, bias, TrainSettings(model=f"{arch}/random"))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["weight_decay"]: {names[id(p)] for p in g["params"]}
              for g in optimizer.param_groups}
    expected_exempt = {n for n, p in model.named_parameters() if exclude(n, p)}
    assert groups[0.0] == expected_exempt
    assert "visual.positional_embedding" in groups[0.2]  # 2-D: decayed, as in open_clip
    assert {"visual.class_embedding", "logit_scale"} <= groups[0.0]
