"""bench/demo_queries.py: the templated queries and what counts as a right picture."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from demo_queries import Query, is_right, templated_queries  # noqa: E402

from searchengine.demo.scenes import SCENE_COLUMNS  # noqa: E402


def _scene(**values: str) -> dict[str, str]:
    return {column: values.get(column, "") for column in SCENE_COLUMNS if column != "image"}


GROUP = _scene(kind="group", count="3", colour="purple", shape="hexagon", position="top")
PAIR = _scene(kind="pair", colour="blue", shape="star", relation="above", colour2="purple",
              shape2="hexagon")


def test_a_picture_is_right_when_it_shows_the_object_asked_for() -> None:
    assert is_right(Query("a hexagon", "hexagon"), GROUP)
    assert is_right(Query("a hexagon", "hexagon"), PAIR)  # the second object counts
    assert is_right(Query("a purple hexagon", "hexagon", "purple"), PAIR)
    assert not is_right(Query("a blue hexagon", "hexagon", "blue"), PAIR)  # colours not mixed
    assert not is_right(Query("a circle", "circle"), GROUP)


def test_a_counted_query_wants_a_group_of_that_many() -> None:
    assert is_right(Query("three hexagons", "hexagon", None, 3), GROUP)
    assert not is_right(Query("two hexagons", "hexagon", None, 2), GROUP)
    assert not is_right(Query("two purple hexagons", "hexagon", "purple", 2), PAIR)


def test_the_queries_read_as_the_captions_do() -> None:
    texts = [q.text for q in templated_queries()]
    assert len(texts) == len(set(texts)) == 8 * 3 * 2
    for text in ("a hexagon", "three crosses", "an orange square", "two purple hexagons"):
        assert text in texts
    assert not any(text.startswith("one ") for text in texts)
