"""Index kinds as FAISS factory strings, chosen for a collection's size and memory budget.

Every kind is built by `faiss.index_factory` from the string `plan_index` writes ("IDMap2,Flat",
"IDMap2,HNSW32,Flat", "IVF1000,Flat", "IVF1000,SQ8", "IVF1000,PQ64x8"). The IVF kinds hold catalog
ids natively (`IndexIVF.add_with_ids`), so they drop ids in place; flat and HNSW sit inside an
IndexIDMap2. `auto` is exact search below `flat_limit` vectors (where one flat query at 512-d
stops being a few milliseconds on a 2-core machine; `bench/index_kinds.py`), above it IVF with
8-bit scalar codes, or PQ codes sized to the memory budget when those do not fit.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from searchengine.errors import InvalidInputError

INDEX_KINDS: dict[str, str] = {
    "flat": "exact inner-product search (right up to about 25k vectors at a few ms a query)",
    "hnsw": "approximate graph search (HNSW, M=32): fast on large collections, no training",
    "ivf": "approximate inverted lists (IVF-Flat, sqrt(n) lists): trained on the data",
}
COMPRESSED_KINDS: dict[str, str] = {
    "ivf-sq8": "inverted lists with 8-bit scalar codes (a quarter of flat's memory)",
    "ivf-pq": "inverted lists with product-quantizer codes sized to --index-memory",
}
KIND_CHOICES: dict[str, str] = {
    "auto": "flat below a size threshold, a (compressed) IVF kind above it (default)",
    **INDEX_KINDS,
    **COMPRESSED_KINDS,
}
IVF_KINDS = ("ivf", "ivf-sq8", "ivf-pq")
FLAT_LIMIT = 25_000  # auto: flat up to here: one 512-d query ~5 ms on a quiet 2-core host
TRAIN_PER_LIST = 256  # IVF training vectors per list (FAISS warns below 39, gains little past 256)
HNSW_M = 32
PQ_SUBQUANTIZERS = (64, 32, 16, 8, 4, 2, 1)  # bytes per vector with 8-bit codes, best first
ID_BYTES = 8  # an int64 id beside every code in an inverted list
IDMAP_BYTES = 40  # IndexIDMap2: the id array plus its reverse hash map, per vector
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


@dataclass(frozen=True)
class IndexPlan:
    """What to build: a concrete kind, its FAISS factory string and its expected memory."""

    kind: str
    factory: str  # faiss.index_factory string, e.g. "IVF1000,SQ8"
    count: int  # vectors planned for
    memory_bytes: int  # expected size of the index holding `count` vectors
    nlist: int = 0  # IVF lists (0 for flat and hnsw)
    pq_bits: int = 0  # bits per PQ code (ivf-pq only)
    chosen_by_auto: bool = False


@dataclass(frozen=True)
class IndexSettings:
    """How a space's index is chosen and guarded; recorded per space, kept by later runs."""

    target_recall: float = 0.95  # recall@10 the tuned search parameters must reach
    memory: int | None = None  # bytes the index may take (None: no bound)
    flat_limit: int = FLAT_LIMIT  # auto: exact search up to this many vectors

    def as_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str | None) -> IndexSettings:
        """Settings recorded by `as_json` (defaults for fields missing or unreadable)."""
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def updated(
        self,
        *,
        target_recall: float | None = None,
        memory: str | int | None = None,
        flat_limit: int | None = None,
    ) -> IndexSettings:
        """These settings with the values given (None keeps a value), checked."""
        target = self.target_recall if target_recall is None else float(target_recall)
        if not 0.0 < target <= 1.0:
            raise InvalidInputError(f"the target recall must be in (0, 1], got {target}")
        limit = self.flat_limit if flat_limit is None else int(flat_limit)
        if limit < 0:
            raise InvalidInputError(f"the flat limit must be >= 0 vectors, got {limit}")
        return IndexSettings(
            target_recall=target,
            memory=self.memory if memory is None else parse_size(memory),
            flat_limit=limit,
        )


def check_kind(kind: str) -> str:
    """`kind` if it names a kind (or auto); otherwise an error that lists the choices."""
    if kind not in KIND_CHOICES:
        choices = "; ".join(f"{k}: {v}" for k, v in KIND_CHOICES.items())
        raise InvalidInputError(f"unknown index kind {kind!r}; choose one of: {choices}")
    return kind


def parse_size(text: str | int) -> int:
    """Bytes in a size such as "2GB", "512MB", "1.5G", "300k" or 1000000 (1 GB = 10**9;
    "GiB" = 2**30)."""
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.match(str(text))
        if match is None:
            raise InvalidInputError(
                f"cannot read the size {text!r}; write it as a number and a unit, e.g. 2GB, "
                "512MB or 1.5GiB"
            )
        number, unit = float(match.group(1)), match.group(2).lower()
        base = 1024 if "i" in unit else 1000
        power = "kmgt".find(unit[:1]) + 1 if unit[:1] in "kmgt" and unit else 0
        value = int(number * base**power)
    if value <= 0:
        raise InvalidInputError(f"the index memory must be more than 0 bytes, got {text!r}")
    return value


def format_size(value: int) -> str:
    """A size in the units `parse_size` reads ("1.95GB", "512MB", "800kB")."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value}B"


def ivf_lists(n: int) -> int:
    """About sqrt(n) inverted lists, with at least 39 training points per list (FAISS' minimum)."""
    return max(1, min(int(math.sqrt(max(n, 1))), n // 39))


def pq_bits(n: int) -> int:
    """Bits per PQ sub-code: 8, unless too few vectors (39 a centroid) train 2**8 centroids."""
    return max(1, min(8, int(math.log2(max(n, 78) / 39))))


def plan_index(
    kind: str,
    dim: int,
    count: int,
    *,
    memory: int | None = None,
    flat_limit: int = FLAT_LIMIT,
) -> IndexPlan:
    """The index to build for `count` vectors of dimension `dim` under a `memory` budget in
    bytes (None: unbounded). `auto` resolves to flat up to `flat_limit` vectors (when it fits),
    above it to ivf-sq8, or ivf-pq with the largest code that fits. Raises InvalidInputError
    when the kind cannot fit the budget, saying what would."""
    check_kind(kind)
    if kind != "auto":
        plan = _plan(kind, dim, count, memory)
        if memory is not None and plan.memory_bytes > memory:
            other = "" if kind == "ivf-pq" else " or choose --index-kind auto or ivf-pq"
            raise InvalidInputError(
                f"the {kind} index of {count} vectors of dimension {dim} needs about "
                f"{format_size(plan.memory_bytes)}, over the budget of {format_size(memory)}; "
                f"raise --index-memory{other}"
            )
        return plan
    for candidate in auto_candidates(dim, count, memory=memory, flat_limit=flat_limit):
        return candidate
    smallest = _plan("ivf-pq", dim, count, None, subquantizers=_subquantizers(dim)[-1])
    raise InvalidInputError(
        f"no index kind holds {count} vectors of dimension {dim} in {format_size(memory or 0)}; "
        f"the smallest (ivf-pq) needs about {format_size(smallest.memory_bytes)}: raise "
        "--index-memory"
    )


def auto_candidates(
    dim: int, count: int, *, memory: int | None = None, flat_limit: int = FLAT_LIMIT
) -> list[IndexPlan]:
    """The plans `auto` may build for `count` vectors, best first, all within `memory`: flat
    (up to `flat_limit`), then ivf-sq8, ivf (when sq8 misses the recall target), ivf-pq."""
    plans = []
    if count <= flat_limit:
        plans.append(_plan("flat", dim, count, memory))
    plans += [_plan("ivf-sq8", dim, count, memory), _plan("ivf", dim, count, memory)]
    plans += [
        _plan("ivf-pq", dim, count, None, subquantizers=m) for m in _subquantizers(dim)
    ]
    fitting = [p for p in plans if memory is None or p.memory_bytes <= memory]
    if fitting and fitting[0].kind == "ivf-pq":
        fitting = [p for p in fitting if p.kind == "ivf-pq"]  # largest PQ code first
    elif fitting:
        fitting = [p for p in fitting if p.kind != "ivf-pq"]
    return [_auto(p) for p in fitting]


def _auto(plan: IndexPlan) -> IndexPlan:
    return IndexPlan(**{**plan.__dict__, "chosen_by_auto": True})


def _plan(
    kind: str, dim: int, count: int, memory: int | None, *, subquantizers: int | None = None
) -> IndexPlan:
    if kind == "flat":
        return IndexPlan("flat", "IDMap2,Flat", count, count * (4 * dim + IDMAP_BYTES))
    if kind == "hnsw":
        per_vector = 4 * dim + HNSW_M * 2 * 4 * 1.1 + IDMAP_BYTES  # level 0 links, upper levels
        return IndexPlan("hnsw", f"IDMap2,HNSW{HNSW_M},Flat", count, int(count * per_vector))
    nlist = ivf_lists(count)
    centroids = nlist * dim * 4
    if kind == "ivf":
        factory, code = f"IVF{nlist},Flat", 4 * dim
        return IndexPlan(kind, factory, count, centroids + count * (code + ID_BYTES), nlist)
    if kind == "ivf-sq8":
        factory, code = f"IVF{nlist},SQ8", dim
        extra = 2 * dim * 4  # the quantizer's per-dimension range
        return IndexPlan(kind, factory, count, centroids + extra + count * (code + ID_BYTES), nlist)
    if subquantizers is None:  # the largest code within the budget
        options = _subquantizers(dim)
        subquantizers = options[-1]
        for m in options:
            if memory is None or _plan(kind, dim, count, None, subquantizers=m).memory_bytes <= (
                memory
            ):
                subquantizers = m
                break
    bits = pq_bits(count)
    codebooks = (1 << bits) * dim * 4
    code = -(-subquantizers * bits // 8)
    memory_bytes = centroids + codebooks + count * (code + ID_BYTES)
    factory = f"IVF{nlist},PQ{subquantizers}x{bits}np"  # np: no polysemous training
    return IndexPlan(kind, factory, count, memory_bytes, nlist, pq_bits=bits)


def _subquantizers(dim: int) -> list[int]:
    """PQ sub-quantizer counts that divide `dim`, at most dim / 2 (two dimensions a code), the
    largest (most accurate) first."""
    options = [m for m in PQ_SUBQUANTIZERS if dim % m == 0 and m <= max(dim // 2, 1)]
    return options or [1]


def outgrown(built: IndexPlan, wanted: IndexPlan) -> str | None:
    """Why an index built as `built` no longer fits the collection `wanted` plans for (a
    sentence for the user), or None while it still does."""
    if built.kind != wanted.kind:
        if wanted.chosen_by_auto:
            return (
                f"auto picks {wanted.kind} for {wanted.count} vectors (flat up to its limit), "
                f"the index is {built.kind}"
            )
        return f"the index kind changes from {built.kind} to {wanted.kind}"
    if built.kind in IVF_KINDS and built.nlist * 2 < wanted.nlist:
        return (
            f"its {built.nlist} IVF lists were trained for {built.count} vectors; "
            f"{wanted.count} want about {wanted.nlist}"
        )
    if built.kind == "ivf-pq" and _pq_bytes(wanted) < _pq_bytes(built):
        return (
            f"its {_pq_bytes(built)}-byte PQ codes for {wanted.count} vectors would pass the "
            f"memory budget; {_pq_bytes(wanted)}-byte codes fit"
        )
    if built.kind == "ivf-pq" and built.pq_bits < wanted.pq_bits:
        return (
            f"its {built.pq_bits}-bit PQ codes were trained on {built.count} vectors; "
            f"{wanted.count} allow {wanted.pq_bits}-bit codes"
        )
    return None


def _pq_bytes(plan: IndexPlan) -> int:
    """Bytes of one PQ code in an ivf-pq plan's factory string ("IVF100,PQ16x8np" -> 16)."""
    match = re.search(r",PQ(\d+)x(\d+)", plan.factory)
    if match is None:
        return 0
    return -(-int(match.group(1)) * int(match.group(2)) // 8)
