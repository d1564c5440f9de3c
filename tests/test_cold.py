"""Cold commands: a checkpoint model is built without random initialisation, open_clip is imported
without the libraries the model does not use, and a cold CLI search answers as a warm engine."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from conftest import TINY_MODEL, fast_ingest
from float_noise import score_noise

from searchengine.models import build_model, parse_model_spec


def test_a_checkpoint_model_equals_the_ordinary_build(tiny_checkpoint):
    # tiny_checkpoint holds the random weights of seed 1: the ordinary build of seed 1 is the
    # reference, every parameter and buffer (the causal mask no checkpoint holds) bit for bit.
    fast, fast_preprocess, _ = build_model(parse_model_spec(f"se-tiny/{tiny_checkpoint}"))
    ordinary, preprocess, _ = build_model(parse_model_spec(TINY_MODEL), seed=1)
    fast_tensors = dict(fast.state_dict(keep_vars=True)) | dict(fast.named_buffers())
    reference = dict(ordinary.state_dict(keep_vars=True)) | dict(ordinary.named_buffers())
    assert fast_tensors.keys() == reference.keys() and "attn_mask" in reference
    for name, tensor in reference.items():
        assert fast_tensors[name].dtype == tensor.dtype, name
        torch.testing.assert_close(fast_tensors[name], tensor, rtol=0, atol=0, msg=name)
    assert not fast.training and str(fast_preprocess) == str(preprocess)


def test_a_checkpoint_model_draws_no_random_numbers(tiny_checkpoint):
    # the ordinary build seeds torch and fills every parameter with random numbers first
    torch.manual_seed(123)
    before = torch.get_rng_state()
    build_model(parse_model_spec(f"se-tiny/{tiny_checkpoint}"))
    assert torch.equal(torch.get_rng_state(), before)


IMPORTS = """
import sys
from searchengine.model_imports import import_open_clip
open_clip = import_open_clip({arch!r})
loaded = {{name: name in sys.modules for name in ("transformers", "timm", "torch._dynamo")}}
import torch, torchvision
boxes = torch.tensor([[0, 0, 0, 4, 4.0]])
pooled = tuple(torchvision.ops.roi_align(torch.rand(1, 3, 8, 8), boxes, 2).shape)
hf = import_open_clip("roberta-ViT-B-32")  # needs transformers: imported into open_clip now
import torch._dynamo
print({{"loaded": loaded, "pooled": pooled, "hf": hf.hf_model.transformers is not None,
       "dynamo": hasattr(torch._dynamo, "disable")}})
"""


def _run_python(source: str) -> str:
    done = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_open_clip_is_imported_without_what_the_model_does_not_use():
    import ast

    result = ast.literal_eval(_run_python(textwrap.dedent(IMPORTS.format(arch="ViT-B-32"))))
    assert result["loaded"] == {"transformers": False, "timm": False, "torch._dynamo": False}
    # what was left out still works when asked for: torchvision's roi_align, an HF text tower's
    # transformers, torch._dynamo itself
    assert result["pooled"] == (1, 3, 2, 2)
    assert result["hf"] and result["dynamo"]


def test_a_model_that_needs_transformers_gets_it_at_once():
    import ast

    result = ast.literal_eval(_run_python(textwrap.dedent(IMPORTS.format(arch="roberta-ViT-B-32"))))
    assert result["loaded"]["transformers"] and result["hf"]


def test_a_cold_cli_search_equals_a_warm_one(tmp_path, photo_folder, tiny_checkpoint):
    from searchengine.engine import Engine

    model = f"se-tiny/{tiny_checkpoint}"
    with Engine.open(tmp_path / "home") as engine:
        engine.index([photo_folder], model=model, settings=fast_ingest())
        warm = [engine.search(q, k=5, model=model) for q in ("a red square", "dog")]
    script = Path(sys.executable).with_name("searchengine")
    for result in warm:
        done = subprocess.run(
            [str(script), "search", result.query, "--home", str(tmp_path / "home"), "--model",
             model, "-k", "5", "--json"],
            capture_output=True, text=True, check=False,
        )
        assert done.returncode == 0, done.stderr
        cold = json.loads(done.stdout)["hits"]
        warm_hits = result.as_dict()["hits"]
        np.testing.assert_allclose([h["score"] for h in cold], [h["score"] for h in warm_hits],
                                   rtol=0, atol=score_noise(64) + 1e-6)  # JSON keeps 6 decimals
        gaps = np.diff([h["score"] for h in warm_hits])
        if np.all(np.abs(gaps) > 2 * score_noise(64) + 2e-6):
            assert [h["id"] for h in cold] == [h["id"] for h in warm_hits]


def test_a_model_spec_is_checked_without_importing_torch(tiny_checkpoint):
    source = f"""
import sys
from searchengine.models import parse_model_spec
from searchengine.errors import ModelError
specs = [parse_model_spec(s).id for s in
         ("ViT-B-32/random", "se-tiny/random", "demo", "se-tiny/{tiny_checkpoint}")]
try:
    parse_model_spec("ViT-B-32/not_a_tag")
except ModelError as error:
    specs.append(str(error)[:40])
print({{"torch": "torch" in sys.modules, "specs": specs}})
"""
    import ast

    result = ast.literal_eval(_run_python(textwrap.dedent(source)))
    assert result["torch"] is False
    assert result["specs"][:3] == ["ViT-B-32/random", "se-tiny/random", "demo"]
    assert result["specs"][4].startswith("unknown pretrained tag 'not_a_tag'")


def test_the_architectures_read_from_files_are_open_clips_own():
    from searchengine.model_imports import import_open_clip, known_architectures
    from searchengine.models import register_bundled_configs

    source = "from searchengine.model_imports import known_architectures as k; print(k())"
    from_files = _run_python(source)
    register_bundled_configs()
    assert from_files == str(import_open_clip().list_models()) == str(known_architectures())
    assert "se-tiny" in from_files and "ViT-B-32" in from_files
