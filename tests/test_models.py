"""Model specs: a checkpoint is its content, the hub check, and what loading a model logs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL, fast_ingest, write_checkpoint

# --- a checkpoint is identified by its content ------------------------------------------------


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (n, d) float32 arrays."""
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_a_retrained_checkpoint_is_a_new_space_and_the_user_is_told(
    tmp_path, photo_folder, open_engine, cli_run, caplog
):
    from searchengine.encoder import Encoder
    from searchengine.images import load_image
    from searchengine.models import parse_model_spec
    from searchengine.settings import EncoderSettings

    (tmp_path / "run").mkdir()
    checkpoint = write_checkpoint(tmp_path / "run" / "last.pt", seed=1)
    spec = f"se-tiny/{checkpoint}"
    home = tmp_path / "home"
    engine = open_engine(home)
    engine.index([photo_folder], model=spec, settings=fast_ingest())
    first_ids, first = engine.vectors("image", model=spec)
    engine.close()

    write_checkpoint(checkpoint, seed=2)  # `train --out run` again: other weights, same path
    caplog.set_level(logging.WARNING)
    engine = open_engine(home)
    report = engine.index([photo_folder], model=spec, settings=fast_ingest())
    assert report.embedded == len(first_ids) and report.unchanged == 0  # nothing reused
    rows = {row.spec: row for row in engine.models()}
    new_key = parse_model_spec(spec).key
    assert set(rows) == {spec, new_key} and new_key.startswith(f"{spec}#")
    assert rows[spec].content_hash != rows[new_key].content_hash
    assert "changed since this home indexed it" in caplog.text and new_key in caplog.text

    # no mixing: the old space kept the old vectors, the new one holds only the new weights'
    old_ids, old = engine.catalog.vectors("image", rows[spec].id)
    np.testing.assert_array_equal(old_ids, first_ids)
    np.testing.assert_array_equal(old, first)
    new_ids, new = engine.vectors("image", model=spec)
    np.testing.assert_array_equal(new_ids, first_ids)
    fresh = Encoder(parse_model_spec(spec), EncoderSettings(device="cpu"))
    paths = engine.catalog.media(new_ids.tolist())
    expected = np.concatenate([
        fresh.encode_images(fresh.preprocess(load_image(Path(paths[i].path))[0]).unsqueeze(0))
        for i in new_ids.tolist()
    ])
    assert cosines(new, expected).min() > 0.999  # made by the present weights
    assert cosines(new, old).max() < 0.99  # and not by the earlier ones
    assert engine.search("a dog", model=spec).model == new_key
    engine.close()

    status = cli_run.json("status", "--home", home)
    assert any(spec in line and "changed" in line for line in status["warnings"])
    assert {s["model"] for s in status["spaces"]} == {spec, new_key}
    plain = cli_run("status", "--home", home).stdout
    assert "warning:" in plain and "changed since" in plain


def test_the_same_content_keeps_the_readable_spec_and_its_space(tmp_path, photo_folder,
                                                                 open_engine):
    checkpoint = write_checkpoint(tmp_path / "last.pt", seed=1)
    spec = f"se-tiny/{checkpoint}"
    engine = open_engine(tmp_path / "home")
    engine.index([photo_folder], model=spec, settings=fast_ingest())
    checkpoint.write_bytes(checkpoint.read_bytes())  # rewritten, same bytes: a new mtime only
    report = engine.index([photo_folder], model=spec, settings=fast_ingest())
    assert report.embedded == 0
    assert [row.spec for row in engine.models()] == [spec]
    assert engine.model_id_of(spec) == spec and engine.status().warnings == []
    assert engine.model_id_of(f"{spec}#{'0' * 12}") == spec  # a stale digest suffix is ignored


def test_the_demo_alias_keeps_its_name_and_records_its_content(tmp_path, photo_folder,
                                                               open_engine):
    from searchengine.models import WEIGHTS_DIR, checkpoint_digest, parse_model_spec

    spec = parse_model_spec("demo")
    assert spec.id == "demo" and spec.digest == checkpoint_digest(WEIGHTS_DIR / "demo.pt")
    engine = open_engine(tmp_path / "home")
    assert engine.model_id_of("demo") == "demo"


def test_a_home_from_before_content_hashes_keeps_its_checkpoint_space(tmp_path, photo_folder,
                                                                     open_engine):
    """Revision 0002 adds models.content_hash as NULL: such a row keeps its readable spec, and
    the next index records the checkpoint's digest (later changes are then caught)."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from searchengine.catalog.store import _alembic_config, head_revision
    from searchengine.models import parse_model_spec

    checkpoint = write_checkpoint(tmp_path / "last.pt", seed=1)
    spec = f"se-tiny/{checkpoint}"
    home = tmp_path / "home"
    home.mkdir()
    url = f"sqlite:///{home / 'catalog.sqlite'}"
    command.upgrade(_alembic_config(url), "0001")
    database = create_engine(url)
    with database.begin() as connection:
        connection.execute(text("INSERT INTO models (spec, dim, created_at) "
                                "VALUES (:spec, 64, '2026-11-01 10:00:00')"), {"spec": spec})
    database.dispose()

    engine = open_engine(home)
    assert engine.catalog.revision() == head_revision()
    assert engine.model_id_of(spec) == spec  # the old row, not a new space
    engine.index([photo_folder], model=spec, settings=fast_ingest())
    [row] = engine.models()
    assert row.spec == spec and row.content_hash == parse_model_spec(spec).digest


# --- what loading a model logs ----------------------------------------------------------------


@pytest.mark.parametrize("which", ["checkpoint", "random"])
def test_no_false_random_initialisation_warning(which, tiny_checkpoint, caplog):
    """open_clip says "No pretrained weights loaded ... initialized randomly" before a checkpoint
    is loaded into the model; that line is dropped for checkpoint and random specs, nothing else."""
    from searchengine.models import build_model, parse_model_spec

    spec = f"se-tiny/{tiny_checkpoint}" if which == "checkpoint" else TINY_MODEL
    filters = list(logging.getLogger().filters)
    caplog.set_level(logging.INFO)
    build_model(parse_model_spec(spec))
    assert "No pretrained weights loaded" not in caplog.text
    assert ("has random weights" in caplog.text) == (which == "random")  # our own warning stays
    assert logging.getLogger().filters == filters  # nothing stays silenced after the load
    logging.warning("No pretrained weights loaded for model 'x'. Model initialized randomly.")
    assert "No pretrained weights loaded for model 'x'" in caplog.text


# --- a checkpoint at another input size ------------------------------------------------------


def scenes_rn_checkpoint(path: Path, arch: str, **replace) -> Path:
    """A checkpoint in this project's format of `arch` (random weights, seed 3), with the tensors
    in `replace` (state-dict key with "/" for ".") put in their place."""
    import json

    import torch

    from searchengine.models import CHECKPOINT_FORMAT, CONFIG_DIR, build_model, parse_model_spec

    model, _, _ = build_model(parse_model_spec(f"{arch}/random"), seed=3)
    state = model.state_dict()
    state.update({key.replace("/", "."): value for key, value in replace.items()})
    torch.save({"format": CHECKPOINT_FORMAT, "arch": arch,
                "model_config": json.loads((CONFIG_DIR / f"{arch}.json").read_text()),
                "state_dict": state}, path)
    return path


@pytest.mark.parametrize("trained, loaded", [("se-scenes-rn", "se-scenes-rn128"),
                                             ("se-scenes-rn128", "se-scenes-rn")])
def test_a_checkpoint_loads_into_its_model_at_another_image_size(tmp_path, trained, loaded,
                                                                 caplog):
    """se-scenes-rn (64 px: a 2 x 2 feature map) and se-scenes-rn128 differ only in image size:
    either's checkpoint loads into the other with the attention pool's grid of position
    embeddings resized and every other tensor as it was. A grid that is the same in every cell
    stays so; the pooled token's embedding is kept."""
    import torch

    from searchengine.models import build_model, parse_model_spec

    cells = {"se-scenes-rn": 4, "se-scenes-rn128": 16}
    width = 512  # the attention pool's width: 16 x 32
    grid = torch.cat([torch.full((1, width), -2.0),
                      torch.arange(width, dtype=torch.float32).repeat(cells[trained], 1)])
    path = scenes_rn_checkpoint(tmp_path / "start.pt", trained,
                                **{"visual/attnpool/positional_embedding": grid})
    caplog.set_level(logging.INFO)
    model, _, _ = build_model(parse_model_spec(f"{loaded}/{path}"))
    assert "position embeddings resized" in caplog.text
    saved = torch.load(path, weights_only=True)["state_dict"]
    state = model.state_dict()
    assert set(state) == set(saved)
    resized = state["visual.attnpool.positional_embedding"]
    assert resized.shape == (1 + cells[loaded], width)
    assert torch.equal(resized[0], grid[0])
    torch.testing.assert_close(resized[1:], grid[1:2].expand(cells[loaded], -1))
    assert all(torch.equal(state[key], saved[key]) for key in saved
               if key != "visual.attnpool.positional_embedding")
    with torch.no_grad():  # and the model runs at its own size
        size = model.visual.image_size
        size = size[0] if isinstance(size, tuple) else size
        assert model.encode_image(torch.rand(2, 3, size, size)).shape == (2, 128)


def test_a_checkpoint_of_another_model_still_does_not_load(tmp_path):
    """Only the image size may differ: a se-scenes-rn checkpoint is no se-scenes (ViT) or
    se-tiny model, and says which architecture it is for."""
    from searchengine.errors import ModelError
    from searchengine.models import build_model, parse_model_spec

    path = scenes_rn_checkpoint(tmp_path / "rn.pt", "se-scenes-rn")
    for arch in ("se-scenes", "se-tiny"):
        with pytest.raises(ModelError, match="trained for architecture 'se-scenes-rn'"):
            build_model(parse_model_spec(f"{arch}/{path}"))


# --- the model-hub check ----------------------------------------------------------------------

HUB_SPEC = "ViT-B-32/laion2b_s34b_b79k"
CHECK = """
import sys
from searchengine.errors import ModelUnavailableError
from searchengine.models import ensure_weights_available
try:
    ensure_weights_available(sys.argv[1])
    print("AVAILABLE")
except ModelUnavailableError as error:
    print("UNAVAILABLE", error)
print("heavy imports:", sorted(m for m in ("torch", "open_clip") if m in sys.modules))
"""


def run_check(tmp_path: Path, **env: str) -> str:
    """Run the hub check for HUB_SPEC in a fresh interpreter with an empty Hugging Face cache."""
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items()
             if k.upper() not in ("HF_HUB_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                                  "NO_PROXY", "HF_ENDPOINT")}
    result = subprocess.run(
        [sys.executable, "-c", CHECK, HUB_SPEC],
        env={**clean, "HF_HOME": str(tmp_path / "hf"), **env},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_offline_hub_weights_fail_at_once_with_the_alternatives(tmp_path):
    out = run_check(tmp_path, HF_HUB_OFFLINE="1")
    assert out.startswith("UNAVAILABLE") and "HF_HUB_OFFLINE is set" in out
    assert "`demo`" in out and "ViT-B-32/random" in out and "ViT-B-32/path/to/file.pt" in out
    assert "heavy imports: []" in out  # decided before torch and open_clip load (seconds)


def test_offline_index_fails_with_the_alternatives(tmp_path, photo_folder, cli_run):
    result = cli_run("index", photo_folder, "--model", HUB_SPEC, "--home", tmp_path / "home",
                     expect=1)
    assert "HF_HUB_OFFLINE is set" in result.output and "`demo`" in result.output


def test_offline_train_and_add_texts_fail_before_any_work(tmp_path, photo_folder,
                                                          captions_csv, cli_run):
    result = cli_run("train", photo_folder, "--model", HUB_SPEC, "--out", tmp_path / "run",
                     expect=1)
    assert "HF_HUB_OFFLINE is set" in result.output and not (tmp_path / "run").exists()
    result = cli_run("add-texts", captions_csv, "--model", HUB_SPEC, "--home", tmp_path / "home",
                     expect=1)
    assert "HF_HUB_OFFLINE is set" in result.output and "`demo`" in result.output


class HubProxy:
    """A local HTTP proxy that answers every request itself, as a proxy in front of a hub would:
    200 and file metadata for HEAD. Records the request lines it saw."""

    def __init__(self):
        import http.server
        import threading

        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self):  # noqa: N802 -- http.server's naming
                seen.append(self.requestline)
                self.send_response(200)
                self.send_header("ETag", '"0123456789abcdef"')
                self.send_header("X-Repo-Commit", "0" * 40)
                self.send_header("Content-Length", "4")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_the_hub_check_goes_through_the_configured_proxy(tmp_path):
    """A machine whose only way out is a proxy is online: the check asks through the proxy
    (a raw TCP probe of the hub's host, which cannot even be resolved here, called it offline)."""
    proxy = HubProxy()
    try:
        out = run_check(tmp_path, HF_ENDPOINT="http://hub.invalid", HTTP_PROXY=proxy.url,
                        http_proxy=proxy.url)
    finally:
        proxy.close()
    assert out.startswith("AVAILABLE"), out
    assert any("http://hub.invalid/laion/" in line for line in proxy.seen), proxy.seen


def test_a_refusing_proxy_is_named_as_the_reason(tmp_path):
    import socket

    with socket.socket() as closed:  # a port that nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    out = run_check(tmp_path, HTTPS_PROXY=f"http://127.0.0.1:{port}",
                    https_proxy=f"http://127.0.0.1:{port}")
    assert out.startswith("UNAVAILABLE")
    assert f"cannot be reached through the proxy http://127.0.0.1:{port}" in out
    assert "HF_HUB_OFFLINE" not in out and "`demo`" in out
