"""Index kinds chosen by size (auto), compressed IVF kinds, the recall guard and the memory budget,
against brute force in float64 on the vectors the catalog stores."""

# faiss' short names (D scores, I ids) are the house style in vector code.
# ruff: noqa: E741

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import TINY_MODEL, fast_ingest
from float_noise import assert_same_embeddings, assert_top_k, score_noise

from searchengine.catalog import Catalog
from searchengine.catalog.records import NewImage
from searchengine.errors import InvalidInputError
from searchengine.images import ImageInfo
from searchengine.index.kinds import IndexSettings, outgrown, parse_size, plan_index
from searchengine.index.spaces import VectorSpace
from searchengine.index.tuning import RecallTargetError, apply_params
from searchengine.index.vectors import VectorIndex, manifest_path, read_manifest

DIM = 16
INFO = ImageInfo(width=1, height=1, format="JPEG", taken_at=None, camera=None)
# auto in each regime, at 600 vectors of 16 dimensions: exact below its limit, IVF-SQ8 above it,
# IVF-PQ when a budget leaves no room for 8-bit codes (sq8 needs ~16 kB here, PQ ~8 kB)
REGIMES = {
    "flat": ("flat", IndexSettings(target_recall=0.3)),
    "hnsw": ("hnsw", IndexSettings(target_recall=0.3)),
    "ivf": ("ivf", IndexSettings(target_recall=0.3)),
    "ivf-sq8": ("ivf-sq8", IndexSettings(target_recall=0.3)),
    "ivf-pq": ("ivf-pq", IndexSettings(target_recall=0.3)),
    "auto-flat": ("auto", IndexSettings(target_recall=0.3, flat_limit=10_000)),
    "auto-sq8": ("auto", IndexSettings(target_recall=0.3, flat_limit=100)),
    "auto-pq": ("auto", IndexSettings(target_recall=0.3, flat_limit=100, memory=10_000)),
}
BUILT = {"auto-flat": "flat", "auto-sq8": "ivf-sq8", "auto-pq": "ivf-pq"}


def clustered(n: int, seed: int, centres: int = 20, spread: float = 0.6) -> np.ndarray:
    """(n, DIM) float32 unit vectors around `centres` random directions (CLIP embeddings
    cluster; uniform random vectors have no neighbours worth finding)."""
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centres, DIM))
    x = middle[rng.integers(0, centres, n)] + spread * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def store(catalog: Catalog, model_id: int, paths: list[str], vectors: np.ndarray, tag: str = ""):
    """Catalog `paths` (no files needed) with (n, DIM) vectors; returns their (n,) int64 ids."""
    images = [NewImage(p, 1, 1, f"{p}{tag}", INFO) for p in paths]
    return np.array(catalog.write_images(model_id, images, vectors, []).ids, dtype=np.int64)


@pytest.fixture()
def home(tmp_path):
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    model = catalog.ensure_model("test/model", DIM)
    yield tmp_path, catalog, model
    catalog.close()


def exhaustive(index: VectorIndex) -> None:
    """Search parameters that visit every stored vector: any difference from brute force is
    then a wrong id or vector, not the approximation."""
    if index.kind == "hnsw":
        apply_params(index.index, {"efSearch": max(index.count, 16)})
    elif index.kind != "flat":
        apply_params(index.index, {"nprobe": index.plan.nlist})


def assert_agrees_with_catalog(space: VectorSpace, index: VectorIndex) -> None:
    """The index holds exactly the catalog's ids, each with the catalog's vector (or its code),
    and its exhaustive top-10 is brute force in float64 over what it stores."""
    ids, vectors = space.catalog.vectors("image", space.model.id)
    assert sorted(index.ids().tolist()) == ids.tolist()
    held = index.reconstruct_batch(ids)  # (n, DIM) float32
    expected = index.stored_form(vectors)
    if index.stores_exact_vectors:
        np.testing.assert_array_equal(held, vectors)
    else:  # codes decode to the same vector as the catalog's vector encoded now
        np.testing.assert_allclose(held, expected, rtol=0, atol=1e-5)
        assert np.mean(np.sum(held * vectors, axis=1)) > 0.8  # codes of these vectors
    exhaustive(index)
    xq = clustered(20, seed=99)
    D, I = index.search(xq, 10)
    assert_top_k(I, xq, held, ids)  # ranks may swap only within float noise
    rows = {int(i): r for r, i in enumerate(ids)}
    exact = np.array([[xq[q].astype(np.float64) @ held[rows[int(i)]] for i in row]
                      for q, row in enumerate(I)])
    # scores: the index's own arithmetic on its codes, within a few roundings of the dot product
    np.testing.assert_allclose(D, exact, rtol=0, atol=4 * score_noise(DIM))


@pytest.mark.parametrize("regime", list(REGIMES))
def test_every_kind_follows_add_change_remove_and_rebuild_like_brute_force(home, regime):
    tmp_path, catalog, model = home
    kind, settings = REGIMES[regime]
    paths = [f"/photos/{i}.jpg" for i in range(600)]
    store(catalog, model.id, paths[:500], clustered(500, seed=1))
    space = VectorSpace(catalog, tmp_path, model, "image", kind, settings)
    built = space.index
    assert built.kind == BUILT.get(regime, kind)
    assert built.plan.chosen_by_auto == (kind == "auto")
    assert_agrees_with_catalog(space, built)
    space.save()

    added = store(catalog, model.id, paths[500:], clustered(100, seed=2))  # add
    space.add(added, catalog.vectors("image", model.id, ids=added.tolist())[1])
    assert space.index is built  # into the existing index, no rebuild
    assert_agrees_with_catalog(space, space.index)

    changed = store(catalog, model.id, paths[:50], clustered(50, seed=3), tag="new")  # change
    space.update(changed, catalog.vectors("image", model.id, ids=changed.tolist())[1])
    assert_agrees_with_catalog(space, space.index)

    removed = catalog.remove_files(paths[50:120])  # remove
    before = space.index
    space.remove(np.array(removed))
    assert (space.index is before) == (built.kind != "hnsw")  # only HNSW rebuilds
    assert_agrees_with_catalog(space, space.index)

    space.save()  # rebuild: from the file, and from the catalog
    reopened = VectorSpace(catalog, tmp_path, model, "image", kind, settings)
    assert_agrees_with_catalog(reopened, reopened.index)
    reopened.repair()
    assert_agrees_with_catalog(reopened, reopened.index)


@pytest.mark.parametrize("kind", ["ivf", "ivf-sq8", "ivf-pq"])
def test_removal_from_an_ivf_kind_never_rebuilds(home, kind, monkeypatch):
    tmp_path, catalog, model = home
    paths = [f"/photos/{i}.jpg" for i in range(400)]
    store(catalog, model.id, paths, clustered(400, seed=4))
    space = VectorSpace(catalog, tmp_path, model, "image", kind, IndexSettings(target_recall=0.3))
    space.maintain()
    builds = []
    original = VectorIndex.build_from_batches.__func__
    monkeypatch.setattr(VectorIndex, "build_from_batches", classmethod(
        lambda cls, *args, **options: builds.append(args) or original(cls, *args, **options)))
    for start in range(0, 200, 50):  # several removals, each saved
        space.remove(np.array(catalog.remove_files(paths[start:start + 50])))
        space.save()
    reopened = VectorSpace(catalog, tmp_path, model, "image", kind)
    assert_agrees_with_catalog(reopened, reopened.index)
    assert builds == []


def brute_recall(index: VectorIndex, ids: np.ndarray, xb: np.ndarray, sample: np.ndarray) -> float:
    """recall@10 of the index for the stored vectors at positions `sample` as queries, each left
    out of both answers, against brute force in float64 (a plain loop: the reference)."""
    found = 0
    D, I = index.search(xb[sample], 11)
    for row, position in enumerate(sample):
        scores = xb.astype(np.float64) @ xb[position].astype(np.float64)
        scores[position] = -np.inf
        truth = set(ids[np.argsort(-scores, kind="stable")[:10]].tolist())
        answer = [i for i in I[row].tolist() if i != ids[position]][:10]
        found += len(truth & set(answer))
    return found / (10 * len(sample))


@pytest.mark.parametrize("kind, parameter", [("ivf", "nprobe"), ("hnsw", "efSearch")])
def test_the_recall_guard_raises_parameters_that_miss_the_target(home, kind, parameter):
    """The cheapest setting (nprobe 1, efSearch 4) misses 0.95 here; the tuner raises it until
    the held-out recall reaches the target, records it, and a float64 reference agrees."""
    tmp_path, catalog, model = home
    n = 2000
    xb = clustered(n, seed=5, centres=40, spread=1.0)
    ids = store(catalog, model.id, [f"/p/{i}.jpg" for i in range(n)], xb)
    space = VectorSpace(catalog, tmp_path, model, "image", kind, IndexSettings(target_recall=0.95))
    index = space.index
    tuning = index.tuning
    (first, first_recall), chosen = tuning.tried[0], tuning.params[parameter]
    assert first_recall < 0.95 <= tuning.recall and chosen > first
    assert tuning.tried[-1] == (chosen, tuning.recall)  # the first value reaching the target
    sample = np.arange(3, n, 7)
    assert brute_recall(index, ids, xb, sample) >= 0.93  # another sample: within its error
    apply_params(index.index, {parameter: first})
    assert brute_recall(index, ids, xb, sample) < 0.95
    space.save()
    manifest = read_manifest(space.path)
    assert manifest.params == {parameter: chosen} and manifest.recall == tuning.recall
    assert manifest.factory == index.plan.factory and manifest.memory_bytes > 0
    assert manifest.build_seconds is not None and manifest.build_seconds >= 0
    reopened = VectorSpace(catalog, tmp_path, model, "image", kind).index  # applied on load
    assert reopened.tuning.params == {parameter: chosen}
    ps_value = reopened._inner().nprobe if kind == "ivf" else reopened._inner().hnsw.efSearch
    assert ps_value == chosen


def test_a_target_the_budget_cannot_reach_is_an_error_that_says_what_to_change(home):
    tmp_path, catalog, model = home
    n = 4000  # 1-byte codes re-scored 16 a hit still miss 0.99 of a 4000-vector home
    xb = clustered(n, seed=6)
    store(catalog, model.id, [f"/p/{i}.jpg" for i in range(n)], xb)
    budget = plan_index("ivf-pq", DIM, n, memory=45_000).memory_bytes  # 1-byte PQ codes
    settings = IndexSettings(target_recall=0.99, memory=budget, flat_limit=100)
    space = VectorSpace(catalog, tmp_path, model, "image", "auto", settings)
    with pytest.raises(RecallTargetError) as error:
        space.maintain()
    message = str(error.value)
    assert "reaches recall@10 0.99" in message and "the best" in message
    for advice in ("--index-memory", "--target-recall", "--index-kind flat"):
        assert advice in message
    best = float(message.split("reaches ")[-1].split(".", 1)[0] + "." +
                 message.split("reaches ")[-1].split(".", 2)[1])
    assert best < 0.99
    assert catalog.vector_stats("image", model.id)[0] == n  # nothing stored is lost
    assert not space.path.exists()


def test_the_budget_picks_the_code_size(home):
    assert plan_index("auto", 512, 1_000_000).kind == "ivf-sq8"
    assert plan_index("auto", 512, 10_000).kind == "flat"
    fitted = plan_index("auto", 512, 1_000_000, memory=parse_size("100MB"))
    assert fitted.kind == "ivf-pq" and fitted.memory_bytes <= 100 * 10**6
    assert fitted.factory.startswith("IVF1000,PQ64x8")
    smaller = plan_index("auto", 512, 1_000_000, memory=parse_size("40MB"))
    assert smaller.memory_bytes <= 40 * 10**6 < fitted.memory_bytes
    with pytest.raises(InvalidInputError, match="over the budget.*raise --index-memory"):
        plan_index("flat", 512, 1_000_000, memory=parse_size("1GB"))  # needs ~2 GB
    with pytest.raises(InvalidInputError, match="no index kind holds"):
        plan_index("auto", 512, 1_000_000, memory=parse_size("1MB"))
    grown = plan_index("auto", 512, 2_000_000, memory=parse_size("100MB"))  # twice the vectors
    assert grown.factory.startswith("IVF1414,PQ32x8")
    assert "32-byte codes fit" in outgrown(fitted, grown)


@pytest.mark.parametrize("text, value", [("2GB", 2 * 10**9), ("512MB", 512 * 10**6),
                                         ("1.5GiB", int(1.5 * 2**30)), ("300k", 300_000)])
def test_sizes_are_read_in_the_usual_units(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["lots", "2 parsecs", "-1GB", "0"])
def test_an_unreadable_size_is_a_clear_error(text):
    with pytest.raises(InvalidInputError, match="size|more than 0"):
        parse_size(text)


def test_an_outgrown_ivf_index_is_rebuilt_by_the_next_writer_which_says_why(home, caplog):
    """Adds go into the IVF index trained on 100 vectors; once it holds 3000 (its 2 lists want
    about 54), the writer's check rebuilds it, with a warning the user sees."""
    tmp_path, catalog, model = home
    paths = [f"/p/{i}.jpg" for i in range(3000)]
    store(catalog, model.id, paths[:100], clustered(100, seed=7))
    space = VectorSpace(catalog, tmp_path, model, "image", "ivf", IndexSettings(target_recall=0.9))
    first = space.index
    assert first.plan.nlist == 2
    for start in range(100, 3000, 500):
        chunk = paths[start:start + 500]
        ids = store(catalog, model.id, chunk, clustered(len(chunk), seed=start))
        space.add(ids, catalog.vectors("image", model.id, ids=ids.tolist())[1])
        assert space.index is first  # growth: no rebuild per add
    with caplog.at_level(logging.WARNING, logger="searchengine"):
        space.retrain_if_needed()
    assert any("rebuilding the index" in r.message and "trained for 100" in r.message
               for r in caplog.records)
    assert space.index is not first and space.index.plan.nlist == 54
    assert space.index.tuning.recall >= 0.9
    assert_agrees_with_catalog(space, space.index)
    caplog.clear()
    space.retrain_if_needed()  # it fits now: nothing to say
    assert not caplog.records


def test_a_new_ivf_index_is_trained_on_its_first_vectors_without_a_warning(home, caplog):
    """The first `index --index-kind ivf` of a home makes its space before any vector is stored;
    training it on the first vectors is routine, not a rebuild to warn the user about."""
    tmp_path, catalog, model = home
    space = VectorSpace(catalog, tmp_path, model, "image", "ivf", IndexSettings(target_recall=0.9))
    empty = space.index
    assert empty.count == 0 and empty.plan.count == 0
    ids = store(catalog, model.id, [f"/p/{i}.jpg" for i in range(3000)], clustered(3000, seed=3))
    space.add(ids, catalog.vectors("image", model.id, ids=ids.tolist())[1])
    with caplog.at_level(logging.INFO, logger="searchengine"):
        space.retrain_if_needed()
    assert space.index.plan.nlist == 54 and space.index.tuning.recall >= 0.9
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("training the ivf index on its first 3000 vectors" in r.message
               for r in caplog.records)


def test_auto_moves_from_flat_to_ivf_when_the_home_outgrows_its_limit(home, caplog):
    tmp_path, catalog, model = home
    paths = [f"/p/{i}.jpg" for i in range(700)]
    store(catalog, model.id, paths[:200], clustered(200, seed=8))
    settings = IndexSettings(target_recall=0.9, flat_limit=500)
    space = VectorSpace(catalog, tmp_path, model, "image", "auto", settings)
    assert space.index.kind == "flat"
    ids = store(catalog, model.id, paths[200:], clustered(500, seed=9))
    space.add(ids, catalog.vectors("image", model.id, ids=ids.tolist())[1])
    with caplog.at_level(logging.WARNING, logger="searchengine"):
        space.retrain_if_needed()
    assert any("auto picks ivf-sq8 for 700 vectors" in r.message for r in caplog.records)
    assert space.index.kind == "ivf-sq8" and space.index.plan.chosen_by_auto
    assert_agrees_with_catalog(space, space.index)


def test_an_ivf_file_in_the_old_id_map_form_is_rebuilt_from_the_catalog(home):
    import faiss

    tmp_path, catalog, model = home
    xb = clustered(300, seed=10)
    store(catalog, model.id, [f"/p/{i}.jpg" for i in range(300)], xb)
    space = VectorSpace(catalog, tmp_path, model, "image", "ivf", IndexSettings(target_recall=0.3))
    space.save()
    ids, vectors = catalog.vectors("image", model.id)
    inner = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, 4, faiss.METRIC_INNER_PRODUCT)
    old = faiss.IndexIDMap2(inner)
    old.train(vectors)
    old.add_with_ids(vectors, ids)
    faiss.write_index(old, str(space.path))
    data = json.loads(manifest_path(space.path).read_text())
    data.update(version=1, file_size=space.path.stat().st_size)
    manifest_path(space.path).write_text(json.dumps(data))
    reopened = VectorSpace(catalog, tmp_path, model, "image", "ivf")
    assert isinstance(faiss.downcast_index(reopened.index.index), faiss.IndexIVF)
    assert_agrees_with_catalog(reopened, reopened.index)


def test_status_shows_the_kind_auto_chose_and_its_recall(
    cli_run, copy_photos, tmp_path, reuse_random_encoders
):
    home = tmp_path / "home"
    cli_run("index", copy_photos, "--home", home, "--model", TINY_MODEL, "--workers", 0)
    (space,) = cli_run.json("status", "--home", home)["spaces"]
    assert space["kind"] == "flat" and space["chosen_by_auto"] is True
    assert space["recall"] == 1.0 and space["params"] == {} and space["memory_bytes"] > 0
    result = cli_run("index", copy_photos, "--home", home, "--index-memory", "lots", expect=1)
    assert "cannot read the size 'lots'" in result.stderr + result.stdout
    cli_run("index", copy_photos, "--home", home, "--model", TINY_MODEL, "--target-recall",
            "0.9", "--index-memory", "2GB", "--index-kind", "ivf-sq8")
    cli_run("index", copy_photos, "--home", home, "--model", TINY_MODEL)  # keeps the options
    (space,) = cli_run.json("status", "--home", home)["spaces"]
    assert space["kind"] == "ivf-sq8" and space["chosen_by_auto"] is False
    assert space["target_recall"] == 0.9 and space["memory_budget"] == 2 * 10**9
    assert space["recall"] >= 0.9 and set(space["params"]) == {"nprobe", "rerank"}
    text = cli_run("status", "--home", home).output
    assert "recall@10" in text and "nprobe=" in text


@pytest.mark.parametrize("kind", ["ivf-sq8", "ivf-pq"])
def test_check_finds_a_stale_code_in_a_compressed_kind_and_only_that(home, kind):
    """Compressed kinds do not give back the vectors added: `check` compares each code with
    the code of the catalog's vector, so an in-step file is ok and one changed vector is seen."""
    tmp_path, catalog, model = home
    paths = [f"/p/{i}.jpg" for i in range(500)]
    store(catalog, model.id, paths, clustered(500, seed=11))
    space = VectorSpace(catalog, tmp_path, model, "image", kind, IndexSettings(target_recall=0.3))
    space.save()
    assert space.check().ok
    store(catalog, model.id, paths[:1], clustered(1, seed=12), tag="changed")  # file not saved
    result = space.check()
    assert (result.stale, result.missing, result.extra) == (1, 0, 0)


@pytest.mark.parametrize("texts", ["stored captions", "sentences of the model"])
def test_the_recall_guard_also_answers_for_queries_across_the_modality_gap(home, texts):
    """Photos in tight clusters, captions between two clusters (as text sits across CLIP's
    modality gap): photo queries alone are satisfied by nprobe 1, which finds about half of a
    caption's neighbours. With the home's captions as cross-modal queries, or in a home of
    photos alone the sentences its model encodes (`guard_texts`, set by the engine), the tuner
    raises nprobe until they too reach the target, checked against float64 brute force."""
    tmp_path, catalog, model = home
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(40, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    n = 2000
    xb = centres[rng.integers(0, 40, n)] + 0.05 * rng.normal(size=(n, DIM))
    xb = (xb / np.linalg.norm(xb, axis=1, keepdims=True)).astype(np.float32)
    ids = store(catalog, model.id, [f"/p/{i}.jpg" for i in range(n)], xb)
    pairs = rng.integers(0, 40, (300, 2))
    captions = centres[pairs[:, 0]] + centres[pairs[:, 1]]
    captions = (captions / np.linalg.norm(captions, axis=1, keepdims=True)).astype(np.float32)
    if texts == "stored captions":
        catalog.add_texts("captions", [f"caption {i}" for i in range(len(captions))])
        text_ids = sorted(catalog.text_ids("captions").values())
        catalog.write_text_vectors(model.id, text_ids, captions)

    def caption_recall(index: VectorIndex) -> float:
        _, found = index.search(captions, 10)
        exact = xb.astype(np.float64) @ captions.astype(np.float64).T  # (n, c)
        hits = 0
        for column, row in enumerate(found):
            truth = set(ids[np.argsort(-exact[:, column], kind="stable")[:10]].tolist())
            hits += len(truth & set(row.tolist()))
        return hits / (10 * len(captions))

    settings = IndexSettings(target_recall=0.95)
    space = VectorSpace(catalog, tmp_path, model, "image", "ivf", settings)
    photo_only = VectorIndex.build_from_batches(
        "ivf", DIM, n, space._batches, plan=plan_index("ivf", DIM, n)
    )
    from searchengine.index.tuning import tune

    alone = tune(photo_only, space._batches, target=0.95)
    photo_only.apply_tuning(alone)
    assert alone.reached and caption_recall(photo_only) < 0.9  # photo queries miss captions'
    if texts == "sentences of the model":
        unguarded = VectorSpace(catalog, tmp_path, model, "image", "ivf", settings)
        assert unguarded.index.tuning.params == alone.params  # no texts, no sentences: photos
        space.guard_texts = lambda: captions
    guarded = space.index
    assert guarded.tuning.params["nprobe"] > alone.params["nprobe"]
    assert guarded.tuning.recall >= 0.95 and caption_recall(guarded) >= 0.93
    if texts == "sentences of the model":  # stand-ins: their misses count twice
        plain = tune(photo_only, space._batches, target=0.95, cross=captions)
        doubled = tune(photo_only, space._batches, target=0.95, cross=captions, stand_in=True)
        assert doubled.params["nprobe"] >= plain.params["nprobe"]
        plain_tried = dict(plain.tried)
        pairs = [(plain_tried[value], measured) for value, measured in doubled.tried
                 if value in plain_tried]
        assert all(d <= p for p, d in pairs) and any(d < p for p, d in pairs)
        assert guarded.tuning.params == doubled.params


def test_the_engine_gives_a_photo_index_sentences_of_its_model_until_texts_are_stored(
    tmp_path, copy_photos, captions_csv, reuse_random_encoders
):
    from searchengine.engine import Engine
    from searchengine.index.guard_queries import guard_sentences
    from searchengine.index.tuning import QUERIES

    with Engine.open(tmp_path / "home") as engine:
        engine.index([copy_photos], model=TINY_MODEL, settings=fast_ingest())
        space = engine.space(TINY_MODEL, "image", create=True)  # as a writer has it
        sentences = guard_sentences(QUERIES)
        assert len(set(sentences)) == QUERIES
        expected = engine.encoder(TINY_MODEL).encode_texts(sentences)  # (500, d)
        sentences, stand_in = space._cross_queries()
        assert stand_in
        assert_same_embeddings(sentences, expected)
        engine.add_texts(captions_csv, column="caption", text_set="captions")
        captions = engine.catalog.vectors("text", space.model.id)[1]
        stored, stand_in = space._cross_queries()
        assert stored.shape == captions.shape and not stand_in  # the stored texts, not these
    with Engine.open(tmp_path / "home", create=False) as reader:  # rebuilds, never saves: photos
        assert reader.space(TINY_MODEL, "image").guard_texts is None


@pytest.mark.parametrize("kind", ["ivf-sq8", "ivf-pq"])
def test_a_compressed_kind_rescores_its_candidates_with_the_catalogs_vectors(home, kind):
    """With the catalog to read (as every engine search has), a compressed kind's hits come back
    with the exact scores of the stored vectors, and with every list probed they are the float64
    brute-force top-k over the candidates' own vectors; without it, the scores are the codes'."""
    from searchengine.index.search import rescore, space_vectors

    tmp_path, catalog, model = home
    n = 1500
    xb = clustered(n, seed=21)
    ids = store(catalog, model.id, [f"/p/{i}.jpg" for i in range(n)], xb)
    xb = catalog.vectors("image", model.id, ids=ids.tolist())[1]  # as stored (float16 values)
    space = VectorSpace(catalog, tmp_path, model, "image", kind, IndexSettings(target_recall=0.3))
    index, read = space.index, space_vectors(space)
    assert index.rerank > 1 and index.tuning.params["rerank"] == index.rerank
    exhaustive(index)
    xq = clustered(15, seed=98)
    D, I = index.search(xq, 10, vectors_of=read)
    rows = {int(i): r for r, i in enumerate(ids)}
    exact = np.array([[xq[q].astype(np.float64) @ xb[rows[int(i)]] for i in row]
                      for q, row in enumerate(I)])
    np.testing.assert_allclose(D, exact, rtol=0, atol=score_noise(DIM))  # the stored vectors'
    # the reference: every candidate of the codes' own top-(rerank * k), scored in float64
    _, wide = index.search(xq, 10 * index.rerank)
    for q, row in enumerate(wide):
        scores = sorted((xq[q].astype(np.float64) @ xb[rows[int(i)]] for i in row), reverse=True)
        np.testing.assert_allclose(sorted(exact[q], reverse=True), scores[:10], rtol=0,
                                   atol=score_noise(DIM))
    coded, _ = index.search(xq, 10)  # no reader: the codes' approximate scores
    assert np.abs(coded - exact).max() > score_noise(DIM)
    # rescore pads a row with fewer candidates than k as FAISS does
    few = np.array([[int(ids[0]), -1, -1]], dtype=np.int64)
    D1, I1 = rescore(xq[:1], few, 3, read)
    assert I1.tolist() == [[int(ids[0]), -1, -1]] and D1[0, 1] < -1e30


@pytest.mark.parametrize("kind", ["ivf-sq8", "ivf-pq"])
def test_a_compressed_kinds_filtered_hits_are_rescored_on_the_selector_road(home, kind):
    """A broad filter over a compressed kind takes the index's own search with a selector; its
    hits come back with the exact scores of the stored vectors, as unfiltered hits do, and only
    allowed ids, best first."""
    from searchengine.index.search import index_shape, plan_filtered_search, space_vectors

    tmp_path, catalog, model = home
    n = 1500
    ids = store(catalog, model.id, [f"/p/{i}.jpg" for i in range(n)], clustered(n, seed=23))
    xb = catalog.vectors("image", model.id, ids=ids.tolist())[1]  # as stored (float16 values)
    space = VectorSpace(catalog, tmp_path, model, "image", kind, IndexSettings(target_recall=0.3))
    index = space.index
    allowed = ids[np.random.default_rng(4).random(n) < 0.9]
    shape = index_shape(index, exact_vectors=False)
    assert plan_filtered_search(shape, len(allowed), 10, 1).road == "selector"
    rows = {int(i): r for r, i in enumerate(ids)}
    for q in clustered(8, seed=99):
        D, I = index.search(q[None], 10, allowed_ids=allowed, vectors_of=space_vectors(space))
        assert (I >= 0).all() and np.isin(I, allowed).all()
        exact = [float(q.astype(np.float64) @ xb[rows[int(i)]]) for i in I[0]]
        np.testing.assert_allclose(D[0], exact, rtol=0, atol=score_noise(DIM))
        assert (np.diff(exact) <= score_noise(DIM)).all()  # best first


def test_training_and_tuning_samples_do_not_keep_the_batches_they_were_drawn_from():
    """The IVF training sample and the tuner's held-out queries take every s-th row of each
    batch; they must copy those rows, not keep views that hold each whole batch (a 10M build
    held every vector, 20 GB). Traced numpy memory stays near the sample, not the batches."""
    import tracemalloc

    from searchengine.index.tuning import held_out
    from searchengine.index.vectors import _training_sample

    batch, count, dim = 4000, 40 * 4000, 64  # 41 MB of batches, drawn one at a time

    def batches():
        rng = np.random.default_rng(0)
        for start in range(0, count, batch):
            yield np.arange(start, start + batch), rng.random((batch, dim), dtype=np.float32)

    for draw in (lambda: _training_sample(batches(), count, 400),
                 lambda: held_out(batches(), count, 400)[1]):
        tracemalloc.start()
        sample = draw()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(sample) == 400
        assert peak < 4 * batch * dim * 4  # a few batches at most, not all 40
