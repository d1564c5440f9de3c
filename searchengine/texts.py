"""Text sources for `add-texts`: a column of a CSV/TSV or Parquet file, or the lines of a .txt."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from searchengine.errors import InvalidInputError


def read_texts(source: Path, *, column: str = "caption") -> list[str]:
    """Non-blank texts from `source`, stripped, in file order (duplicates kept for the caller).

    `.csv`/`.tsv`: the named column (header row required); `.parquet`: the named column;
    `.txt`: one text per line.
    """
    if not source.is_file():
        raise InvalidInputError(f"{source} does not exist or is not a file")
    suffix = source.suffix.lower()
    if suffix == ".txt":
        values = _read_lines(source)
    elif suffix in (".csv", ".tsv"):
        values = _read_delimited(source, column, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        values = _read_parquet(source, column)
    else:
        raise InvalidInputError(
            f"{source}: unsupported text source; give a .csv, .tsv, .parquet or .txt"
        )
    texts = [v.strip() for v in values if isinstance(v, str) and v.strip()]
    if not texts:
        raise InvalidInputError(f"{source}: no non-empty texts in column {column!r}")
    return texts


def clean_texts(values: Iterable[str]) -> list[str]:
    """Texts given directly: each a str, stripped, blanks dropped, in order (duplicates kept).
    InvalidInputError for a bare str (give a list of texts), a non-str item, or no text at all."""
    if isinstance(values, (str, bytes)):
        raise InvalidInputError("give the texts as a list of strings, not one string")
    texts = []
    for position, value in enumerate(values):
        if not isinstance(value, str):
            raise InvalidInputError(f"text {position} is a {type(value).__name__}, not a str")
        if value.strip():
            texts.append(value.strip())
    if not texts:
        raise InvalidInputError("no non-empty texts given")
    return texts


def _read_lines(source: Path) -> list[str]:
    try:
        return source.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"{source} is not UTF-8 text: {error}") from error


def _read_delimited(source: Path, column: str, delimiter: str) -> list[str]:
    try:
        with source.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            if reader.fieldnames is None or column not in reader.fieldnames:
                found = ", ".join(reader.fieldnames or []) or "none"
                raise InvalidInputError(
                    f"{source} has no column {column!r} (columns: {found}); "
                    "choose one with --column"
                )
            return [row.get(column) or "" for row in reader]
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"{source} is not UTF-8 text: {error}") from error
    except csv.Error as error:
        raise InvalidInputError(f"{source} is not valid CSV: {error}") from error


def _read_parquet(source: Path, column: str) -> list[str]:
    import pyarrow.parquet as pq
    from pyarrow import ArrowException

    try:
        schema = pq.read_schema(source)
        if column not in schema.names:
            raise InvalidInputError(
                f"{source} has no column {column!r} (columns: {', '.join(schema.names)}); "
                "choose one with --column"
            )
        return pq.read_table(source, columns=[column]).column(column).to_pylist()
    except ArrowException as error:
        raise InvalidInputError(f"{source} is not a readable Parquet file: {error}") from error
