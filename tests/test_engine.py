"""The Engine API: queries against brute force over the durable vectors, several models side by
side, index files rebuilt and repaired, remove, use-model."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import CAPTIONS, PHOTO_COUNT, TINY_MODEL, fast_ingest, write_image
from float_noise import assert_top_k, score_noise, stored_score_noise

from searchengine.errors import InvalidInputError, NotIndexedError
from searchengine.index.spaces import index_path

pytestmark = pytest.mark.usefixtures("reuse_random_encoders")
ALL_PHOTOS = PHOTO_COUNT + 1


@pytest.fixture()
def shared(open_engine, indexed_home):
    """The session's read-only indexed home, opened."""
    return open_engine(indexed_home)


def brute_force_ids(ids: np.ndarray, vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    scores = vectors @ query  # (n,)
    return ids[np.argsort(-scores, kind="stable")[:k]].tolist()


def image_paths(folder) -> list:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_search_hits_equal_brute_force(shared, tiny_encoder):
    ids, vectors = shared.vectors("image")
    assert len(ids) == ALL_PHOTOS and vectors.shape == (ALL_PHOTOS, tiny_encoder.dim)
    for query in ("a dog on the beach", "red", "a photo of a city at night"):
        result = shared.search(query, k=5)
        text = tiny_encoder.encode_texts([query])
        assert_top_k(np.array([[hit.id for hit in result.hits]]), text, vectors, ids)
        expected = [hit.id for hit in result.hits]
        assert [hit.rank for hit in result.hits] == [1, 2, 3, 4, 5]
        assert result.query == query and result.model == TINY_MODEL
        scores = [hit.score for hit in result.hits]
        assert scores == sorted(scores, reverse=True)
        media = shared.catalog.media(expected)
        assert [hit.path for hit in result.hits] == [media[i].path for i in expected]


def test_search_vectors_equal_brute_force_for_many_queries(shared, tiny_encoder):
    ids, vectors = shared.vectors("image")
    queries = tiny_encoder.encode_texts(CAPTIONS)
    D, I = shared.search_vectors("image", queries, k=4)  # noqa: E741
    assert_top_k(I, queries, vectors, ids)
    np.testing.assert_allclose(D, np.sort(queries @ vectors.T, axis=1)[:, ::-1][:, :4], rtol=0,
                               atol=score_noise(vectors.shape[1]))


def test_offset_pages_through_the_same_ranking(shared):
    full = shared.search("a dog", k=6).hits
    page = shared.search("a dog", k=3, offset=2).hits
    assert [(h.rank, h.id) for h in page] == [(h.rank, h.id) for h in full[2:5]]


def test_each_image_is_its_own_top_hit(shared, photo_folder):
    for path in image_paths(photo_folder):
        by_path = shared.similar(path, k=3)
        assert by_path.hits[0].path == str(path)
        # a stored vector with itself: 1 up to its float16 rounding
        assert by_path.hits[0].score == pytest.approx(1.0, abs=stored_score_noise(64))
        by_id = shared.similar(by_path.hits[0].id, k=3)
        assert [h.id for h in by_id.hits] == [h.id for h in by_path.hits]



def test_a_digit_string_is_never_taken_as_an_id(shared, photo_folder, tmp_path, monkeypatch):
    media = shared.similar(photo_folder / "photo_1.jpg", k=1).hits[0].id
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInputError, match=f"never taken as a catalog id.*id:{media}"):
        shared.similar(str(media), k=1)
    with pytest.raises(InvalidInputError, match="never taken as a catalog id"):
        shared.match(str(media), "a dog")
    with pytest.raises(InvalidInputError, match="ids are 1 to 2\\^63-1"):
        shared.similar(2**63, k=1)


def test_an_image_query_takes_a_path_an_id_an_image_bytes_or_a_vector(shared, photo_folder):
    from PIL import Image

    path = photo_folder / "photo_5.jpg"
    by_path = shared.similar(path, k=4)
    media = by_path.hits[0].id
    stored, _ = shared.image_vector(media)  # (1, d) float32
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    queries = {
        "id": media,
        "numpy id": np.int64(media),
        "PIL image": image,
        "bytes": path.read_bytes(),
        "(1, d) vector": stored,
        "(d,) float64 vector": stored[0].astype(np.float64) * 3.0,
    }
    for kind, query in queries.items():
        vector, _ = shared.image_vector(query)
        assert vector.shape == (1, stored.shape[1]) and vector.dtype == np.float32, kind
        assert float(vector[0] @ stored[0]) == pytest.approx(
            1.0, abs=1e-4 + stored_score_noise(64)), kind  # a fresh pass against the stored
        assert shared.similar(query, k=1).hits[0].id == media, kind
        assert shared.match(query, "a dog") == pytest.approx(shared.match(path, "a dog"),
                                                               abs=1e-4 + stored_score_noise(64)
                                                               ), kind
    assert [h.id for h in shared.lookup(image, k=3).hits] == [
        h.id for h in shared.lookup(path, k=3).hits]
    labels = shared.classify(path.read_bytes(), ["dog", "cat"], templates="single").labels
    assert [s.label for s in labels] == [
        s.label for s in shared.classify(path, ["dog", "cat"], templates="single").labels]


@pytest.mark.parametrize(
    ("query", "word"),
    [
        (np.zeros(3, dtype=np.float32), "float array"),
        (np.ones((2, 8), dtype=np.float32), "float array"),
        (np.ones(8, dtype=np.int64), "float array"),
        (b"not an image", "the image bytes"),
        (True, "an image query is"),
        (3.5, "an image query is"),
    ],
)
def test_bad_image_queries_are_refused(shared, query, word):
    if isinstance(query, np.ndarray) and query.ndim == 1 and query.dtype == np.float32:
        query = np.zeros(shared.encoder().dim, dtype=np.float32)
        word = "not all zeros"
    with pytest.raises(InvalidInputError, match=word):
        shared.image_vector(query)


def test_similar_to_an_uncatalogued_copy_finds_the_original(shared, photo_folder, tmp_path):
    original = photo_folder / "photo_3.jpg"
    copy = tmp_path / "copy.jpg"
    shutil.copy(original, copy)
    top = shared.similar(copy, k=1).hits[0]
    assert top.path == str(original) and top.score == pytest.approx(
        1.0, abs=stored_score_noise(64))  # the copy's fresh vector against the stored original
    unseen = write_image(tmp_path / "new.png", seed=77)
    assert len(shared.similar(unseen, k=4).hits) == 4


def test_lookup_equals_brute_force_over_the_text_set(shared, photo_folder, tiny_encoder):
    ids, vectors = shared.vectors("text")
    texts = shared.catalog.texts(ids.tolist())
    assert sorted(t.text for t in texts.values()) == sorted(CAPTIONS)  # duplicate stored once
    path = photo_folder / "photo_1.jpg"
    image_vector, _ = shared.image_vector(path)
    result = shared.lookup(path, k=3, text_set="captions")
    assert_top_k(np.array([[h.id for h in result.hits]]), image_vector, vectors, ids)
    assert [h.text for h in result.hits] == [texts[h.id].text for h in result.hits]
    assert all(h.path is None for h in result.hits)


def test_lookup_of_an_unknown_text_set_names_the_sets(shared, photo_folder):
    with pytest.raises(InvalidInputError, match="no text set named 'nope'; sets: captions"):
        shared.lookup(photo_folder / "photo_1.jpg", text_set="nope")


def test_classify_equals_a_direct_zero_shot_computation(shared, photo_folder, tiny_encoder):
    from searchengine.eval.prompts import label_embeddings, templates_named

    labels = ["dog", "cat", "car"]
    path = photo_folder / "photo_2.jpg"
    result = shared.classify(path, labels)
    image_vector, _ = shared.image_vector(path)
    logits = label_embeddings(tiny_encoder, labels, templates_named("ensemble")) @ image_vector[0]
    logits = logits * tiny_encoder.model.logit_scale.detach().exp().item()
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    got = {s.label: s.probability for s in result.labels}
    np.testing.assert_allclose([got[label] for label in labels], expected, atol=1e-5)
    probabilities = [s.probability for s in result.labels]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0)


@pytest.mark.parametrize("labels", [["dog"], ["dog", " ", ""]])
def test_classify_needs_two_distinct_labels(shared, photo_folder, labels):
    with pytest.raises(InvalidInputError, match="two distinct labels"):
        shared.classify(photo_folder / "photo_2.jpg", labels)


@pytest.mark.parametrize("labels", [["dog", "dog", "cat"], ["dog", "Dog", "cat"]])
def test_classify_names_a_label_given_twice(shared, photo_folder, labels):
    """A label given twice (in any case) would split one probability between two rows."""
    with pytest.raises(InvalidInputError, match=f"'dog' and '{labels[1]}' are the same label"):
        shared.classify(photo_folder / "photo_2.jpg", labels)


def test_lookup_leaves_the_benchmarks_caption_copies_out(
    open_engine, tmp_path, copy_photos, captions_csv
):
    """`bench recall` on a home keeps a dataset's captions as a `bench-...` set; a lookup without
    --set answers from the home's own texts, not twice from both copies."""
    engine = open_engine(tmp_path / "home")
    engine.index([copy_photos], model=TINY_MODEL, settings=fast_ingest())
    engine.add_texts(captions_csv, column="caption", text_set="captions", model=TINY_MODEL)
    engine.add_texts(captions_csv, column="caption", text_set="bench-0123abcd", model=TINY_MODEL)
    own = set(engine.text_ids("captions").values())
    hits = engine.lookup(copy_photos / "photo_1.jpg", k=50, model=TINY_MODEL).hits
    assert {h.id for h in hits} == own and len({h.text for h in hits}) == len(hits)
    scratch = engine.lookup(copy_photos / "photo_1.jpg", k=50, model=TINY_MODEL,
                            text_set="bench-0123abcd").hits
    assert {h.id for h in scratch} == set(engine.text_ids("bench-0123abcd").values())


def test_classify_refuses_an_absurd_number_of_labels(shared, photo_folder):
    from searchengine.engine import MAX_LABELS

    labels = [f"label {i}" for i in range(MAX_LABELS + 1)]
    with pytest.raises(InvalidInputError, match=f"at most {MAX_LABELS}"):
        shared.classify(photo_folder / "photo_2.jpg", labels, templates="single")


def test_match_is_the_cosine(shared, photo_folder, tiny_encoder):
    path = photo_folder / "photo_0.jpg"
    image_vector, _ = shared.image_vector(path)
    text_vector = tiny_encoder.encode_texts(["a red car"])[0]
    expected = float(text_vector @ image_vector[0])
    noise = score_noise(len(text_vector))
    assert shared.match(path, "a red car") == pytest.approx(expected, rel=0, abs=noise)


@pytest.mark.parametrize("query", ["", "   "])
def test_empty_queries_are_refused(shared, photo_folder, query):
    with pytest.raises(InvalidInputError, match="empty query"):
        shared.search(query)
    with pytest.raises(InvalidInputError, match="empty query"):
        shared.match(photo_folder / "photo_0.jpg", query)


def test_a_stored_vector_is_used_for_a_catalogued_image(shared, photo_folder, monkeypatch):
    from searchengine.encoder import Encoder

    monkeypatch.setattr(Encoder, "encode_images", lambda *a: pytest.fail("model ran"))
    vector, label = shared.image_vector(photo_folder / "trip" / "photo_6.jpg")
    assert vector.shape == (1, shared.encoder().dim) and label.endswith("photo_6.jpg")


def test_querying_a_home_without_vectors_says_what_to_run(open_engine, tmp_path):
    engine = open_engine(tmp_path / "empty")
    with pytest.raises(NotIndexedError, match="no image index for model se-tiny/random.*index"):
        engine.search("a dog", model=TINY_MODEL)
    assert engine.status().images == 0 and engine.check().ok


# -- several models, index files, repair ------------------------------------------------------


@pytest.fixture()
def two_models(open_engine, tmp_path, copy_photos, tiny_checkpoint, catalog_url):
    """A private home with `copy_photos` indexed by TINY_MODEL and by the checkpoint model; its
    catalog is the home's SQLite file, then a PostgreSQL database (`catalog_url`)."""
    engine = open_engine(tmp_path / "home", catalog_url=catalog_url)
    second = f"se-tiny/{tiny_checkpoint}"
    engine.index([copy_photos], model=TINY_MODEL, settings=fast_ingest())
    engine.index([copy_photos], model=second, settings=fast_ingest())
    return engine, second


def test_two_models_side_by_side(two_models, copy_photos):
    engine, second = two_models
    spaces = {(s.model, s.modality): s.vectors for s in engine.status().spaces}
    assert spaces == {(TINY_MODEL, "image"): ALL_PHOTOS, (second, "image"): ALL_PHOTOS}
    assert engine.status().images == ALL_PHOTOS  # one catalog row per file, shared
    ids_a, vectors_a = engine.vectors("image", model=TINY_MODEL)
    ids_b, vectors_b = engine.vectors("image", model=second)
    np.testing.assert_array_equal(ids_a, ids_b)
    assert not np.allclose(vectors_a, vectors_b, atol=1e-3)
    for model, ids, vectors in ((TINY_MODEL, ids_a, vectors_a), (second, ids_b, vectors_b)):
        query = engine.encoder(model).encode_texts(["a dog"])[0]
        hits = engine.search("a dog", k=4, model=model)
        assert hits.model == model
        assert_top_k(np.array([[h.id for h in hits.hits]]), query[None], vectors, ids)
    paths = {index_path(engine.home, m, "image") for m in (TINY_MODEL, second)}
    assert len(paths) == 2 and all(p.is_file() for p in paths)
    assert engine.check().ok and len(engine.check().spaces) == 2


def test_a_changed_file_is_redone_by_each_model(two_models, copy_photos):
    engine, second = two_models
    path = copy_photos / "photo_1.jpg"
    write_image(path, seed=90)
    report = engine.index([copy_photos], model=TINY_MODEL, settings=fast_ingest())
    assert report.embedded == 1
    second_id = engine.catalog.find_model(second).id
    assert engine.catalog.count_vectors("image", second_id) == ALL_PHOTOS - 1
    assert engine.check().ok  # the other model's index dropped the stale vector
    again = engine.index([copy_photos], model=second, settings=fast_ingest())
    assert (again.embedded, again.unchanged) == (1, ALL_PHOTOS - 1)
    assert engine.check().ok


def test_use_model_switches_the_default_only_when_complete(two_models, copy_photos, tmp_path):
    engine, second = two_models
    assert engine.use_model(second) == second
    assert engine.search("a dog", k=1).model == second
    write_image(copy_photos / "extra.jpg", seed=91)
    engine.index([copy_photos], model=second, settings=fast_ingest())
    with pytest.raises(NotIndexedError, match=f"{ALL_PHOTOS} of {ALL_PHOTOS + 1} images"):
        engine.use_model(TINY_MODEL)
    assert engine.default_model() == second
    assert engine.use_model(TINY_MODEL, force=True) == TINY_MODEL


def test_removing_files_forgets_them_for_every_model(two_models, copy_photos):
    engine, second = two_models
    trip = copy_photos / "trip"
    on_disk = image_paths(trip)
    assert engine.remove([trip]) == len(on_disk)
    assert image_paths(trip) == on_disk  # files on disk are untouched
    for model in (TINY_MODEL, second):
        hits = engine.search("a dog", k=ALL_PHOTOS, model=model).hits
        assert len(hits) == ALL_PHOTOS - len(on_disk)
        assert not any(h.path.startswith(str(trip)) for h in hits)
    assert engine.check().ok
    with pytest.raises(InvalidInputError, match="nothing catalogued"):
        engine.remove([trip])


@pytest.mark.parametrize("damage", ["garbage", "no manifest", "deleted", "truncated"])
def test_a_damaged_index_file_is_rebuilt_from_the_catalog(
    two_models, open_engine, tiny_encoder, damage
):
    engine, _ = two_models
    path = index_path(engine.home, TINY_MODEL, "image")
    manifest = path.with_name(path.name + ".manifest.json")
    before = [h.id for h in engine.search("a dog", k=5, model=TINY_MODEL).hits]
    if damage == "garbage":
        path.write_bytes(b"garbage" * 100)
    elif damage == "no manifest":
        manifest.unlink()
    elif damage == "deleted":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:-64])
    assert not open_engine(engine.home).check().ok
    reopened = open_engine(engine.home)
    # a search uses the catalog's vectors in memory and leaves the file alone
    assert [h.id for h in reopened.search("a dog", k=5, model=TINY_MODEL).hits] == before
    assert not reopened.check().ok
    assert "check --repair" in next(s for s in reopened.check().spaces if not s.ok).summary
    assert open_engine(engine.home).check(repair=True).ok
    assert reopened.check().ok and manifest.is_file()


def test_check_repair_fixes_a_stale_index(two_models, open_engine, tmp_path, copy_photos):
    engine, second = two_models
    path = index_path(engine.home, second, "image")
    old = tmp_path / "old.faiss"
    shutil.copy(path, old)
    shutil.copy(path.with_name(path.name + ".manifest.json"), tmp_path / "old.manifest.json")
    write_image(copy_photos / "late.jpg", seed=92)
    engine.index([copy_photos], model=second, settings=fast_ingest())
    shutil.copy(old, path)  # an index file from before the last run
    shutil.copy(tmp_path / "old.manifest.json", path.with_name(path.name + ".manifest.json"))
    stale = open_engine(engine.home).check()
    assert not stale.ok
    [bad] = [s for s in stale.spaces if not s.ok]
    assert (bad.model, bad.missing, bad.extra) == (second, 1, 0)
    repaired = open_engine(engine.home).check(repair=True)
    assert repaired.ok and repaired.repaired
    assert open_engine(engine.home).check().ok


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_kinds_through_the_engine(open_engine, tmp_path, copy_photos, kind):
    engine = open_engine(tmp_path / "home")
    engine.index([copy_photos], model=TINY_MODEL, settings=fast_ingest(), index_kind=kind)
    assert [s.kind for s in engine.status().spaces] == [kind]
    ids, vectors = engine.vectors("image", model=TINY_MODEL)
    query = engine.encoder(TINY_MODEL).encode_texts(["a dog"])[0]
    hits = [h.id for h in engine.search("a dog", k=5, model=TINY_MODEL).hits]
    assert len(set(hits) & set(brute_force_ids(ids, vectors, query, 5))) >= 4
    (copy_photos / "photo_0.jpg").unlink()  # removal: hnsw rebuilds, ivf removes ids
    engine.index([copy_photos], model=TINY_MODEL, settings=fast_ingest())
    assert engine.check().ok
    reopened = open_engine(engine.home)
    assert [s.kind for s in reopened.status().spaces] == [kind]
    hits = reopened.search("a dog", k=ALL_PHOTOS, model=TINY_MODEL).hits
    assert len(hits) == ALL_PHOTOS - 1
    assert_scores_are_the_stored_cosines(reopened, "a dog", hits)


def assert_scores_are_the_stored_cosines(engine, query: str, hits) -> None:
    """Each hit's score is its own stored vector's cosine with the query: no id points at
    another image's vector."""
    ids, vectors = engine.vectors("image", model=TINY_MODEL, ids=[h.id for h in hits])
    by_id = dict(zip(ids.tolist(), vectors, strict=True))
    text = engine.encoder(TINY_MODEL).encode_texts([query])[0]
    np.testing.assert_allclose([h.score for h in hits], [by_id[h.id] @ text for h in hits],
                               rtol=0, atol=score_noise(len(text)))


def test_switching_the_index_kind_rebuilds(open_engine, tmp_path, copy_photos):
    engine = open_engine(tmp_path / "home")
    engine.index([copy_photos], model=TINY_MODEL, settings=fast_ingest())
    report = engine.index([copy_photos], model=TINY_MODEL, settings=fast_ingest(),
                          index_kind="hnsw")
    assert report.unchanged == ALL_PHOTOS
    reopened = open_engine(engine.home)
    assert [s.kind for s in reopened.check().spaces] == ["hnsw"] and reopened.check().ok


def test_add_texts_embeds_only_new_texts(open_engine, tmp_path, captions_csv, catalog_url):
    engine = open_engine(tmp_path / "home", catalog_url=catalog_url)
    first = engine.add_texts(captions_csv, text_set="captions", model=TINY_MODEL)
    assert (first.read, first.added, first.embedded) == (len(CAPTIONS) + 1, len(CAPTIONS),
                                                          len(CAPTIONS))
    more = tmp_path / "more.txt"
    more.write_text("a blue circle\na yellow taxi\n\n")
    second = engine.add_texts(more, text_set="captions", model=TINY_MODEL)
    assert (second.read, second.added, second.embedded) == (2, 1, 1)
    other = engine.add_texts(more, text_set="other", model=TINY_MODEL)
    assert other.added == 2
    assert engine.status().text_sets == {"captions": len(CAPTIONS) + 1, "other": 2}
    query = write_image(tmp_path / "q.jpg", seed=1)
    hits = engine.lookup(query, k=10, text_set="other", model=TINY_MODEL).hits
    assert sorted(h.text for h in hits) == ["a blue circle", "a yellow taxi"]
    assert engine.check().ok


def test_add_texts_takes_the_texts_themselves(open_engine, tmp_path, captions_csv):
    engine = open_engine(tmp_path / "home")
    report = engine.add_texts(["a blue circle", "  a yellow taxi ", "", "a blue circle"],
                              text_set="mine", model=TINY_MODEL)
    assert (report.read, report.added, report.embedded) == (3, 2, 2)
    assert set(engine.text_ids("mine")) == {"a blue circle", "a yellow taxi"}
    from_file = engine.add_texts(source=captions_csv, text_set="file", model=TINY_MODEL)
    assert from_file.added == len(CAPTIONS)
    generated = engine.add_texts((f"caption {i}" for i in range(3)), text_set="gen",
                                 model=TINY_MODEL)
    assert generated.added == 3 and engine.check().ok


@pytest.mark.parametrize(
    ("texts", "source", "word"),
    [
        ("a single string", "x.csv", "not both"),
        (None, None, "either the texts or source"),
        ([], None, "no non-empty texts"),
        (["ok", 3], None, "text 1 is a int"),
        (b"bytes", None, "list of strings"),
    ],
)
def test_add_texts_refuses_unclear_input(open_engine, tmp_path, texts, source, word):
    engine = open_engine(tmp_path / "home")
    with pytest.raises(InvalidInputError, match=word):
        engine.add_texts(texts, source=source, model=TINY_MODEL)


def test_a_file_turning_bad_leaves_every_model_in_agreement(two_models, copy_photos):
    import os

    engine, second = two_models
    corrupt = copy_photos / "photo_3.jpg"
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    piped = copy_photos / "photo_4.jpg"
    piped.unlink()
    os.mkfifo(piped)  # not a regular file any more: skipped at the walk
    report = engine.index([copy_photos], model=TINY_MODEL, settings=fast_ingest())
    assert report.skipped == 2
    assert {p for p, _ in engine.status().skipped} == {str(corrupt), str(piped)}
    check = engine.check()
    assert check.ok, check.spaces
    for model in (TINY_MODEL, second):
        hits = engine.search("a dog", k=ALL_PHOTOS, model=model).hits
        assert len(hits) == ALL_PHOTOS - 2


def test_relative_and_dotted_paths_mean_what_the_indexer_stored(
    open_engine, tmp_path, copy_photos, monkeypatch
):
    from searchengine.encoder import Encoder

    engine = open_engine(tmp_path / "home")
    monkeypatch.chdir(copy_photos.parent)
    engine.index(["photos/trip/../trip"], model=TINY_MODEL, settings=fast_ingest())
    engine.use_model(TINY_MODEL, force=True)
    stored_paths = sorted(engine.catalog.files_under([str(copy_photos)]))
    assert stored_paths == [str(copy_photos / "trip" / f"photo_{i}.jpg") for i in (6, 7)]
    monkeypatch.setattr(Encoder, "encode_images", lambda *a: pytest.fail("model ran"))
    top = engine.similar("photos/trip/../trip/photo_6.jpg", k=1).hits[0]  # the stored vector
    assert top.path == stored_paths[0]
    assert engine.remove(["./photos/nothing/../trip//photo_7.jpg"]) == 1
    assert engine.remove(["photos/trip/"]) == 1
