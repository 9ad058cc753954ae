"""Shared machinery of the decoder fuzzers (a uniquely named module, not a conftest).

Theory of operation
-------------------
Every decoder a peer can reach gets the same three kinds of input: random
bytes, mutations of a valid encoding (:func:`mutated`: bit flips, byte sets,
truncation, extension, insertion, deletion, swapped or duplicated slices) and
structured invalid values (per decoder). :func:`run` calls the decoder with a
wall-clock bound (``SIGALRM``; a hang is a failure, not a stuck CI job) and
allows exactly the decoder's documented error classes; anything else, and any
acceptance a test rules out (a mutated signed object that still verifies),
fails the test and hypothesis shrinks it.

Budgets: the default run is small (the whole directory in well under 30 s).
``pytest tests/fuzz --fuzz-long`` adds tests/fuzz/test_fuzz_long.py: every
decoder gets :data:`LONG_EXAMPLES` seeded mutations of its valid encodings
(and random bytes); :data:`COUNTS` records how many inputs each decoder saw and the
session hook of ``tests/fuzz/conftest.py`` prints them (and writes them to
``$SECUREMESH_FUZZ_REPORT`` as JSON when set), which is where the figures of
docs/reliability.md come from.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from securemesh.errors import RemoteError

T = TypeVar("T")

LONG_EXAMPLES = int(
    os.environ.get("SECUREMESH_FUZZ_LONG_EXAMPLES", "100000")
)  # smaller: a smoke run
#: Wall-clock bound per decoder call. Every decoder here answers in micro- to
#: milliseconds; seconds means a hang (or a quadratic blow-up worth a bug).
HANG_BOUND_S = 5.0

#: decoder name -> inputs run, and seconds spent inside the decoder.
COUNTS: Counter[str] = Counter()
SECONDS: Counter[str] = Counter()
OUTCOMES: dict[str, Counter[str]] = {}


def long_mode() -> bool:
    # tests/conftest.py sets this for --fuzz-long at configure time: after this
    # module may have been imported (by tests/fuzz/conftest.py), before collection.
    return os.environ.get("SECUREMESH_FUZZ_LONG") == "1"


def fuzz(examples: int = 60) -> Callable[[T], T]:
    """The settings of one hypothesis fuzz test: ``examples`` inputs (the default run).

    The long run (``--fuzz-long``) is tests/fuzz/test_fuzz_long.py: hypothesis
    costs about a millisecond per example here before the decoder runs, so
    100,000 inputs per decoder go through a seeded mutation loop instead
    (:func:`mutate`), over the same properties.
    """
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


class Hang(Exception):
    """A decoder call ran past HANG_BOUND_S."""


def _alarm(_signum: int, _frame: object) -> None:
    raise Hang(f"decoder ran past {HANG_BOUND_S} s")


@contextmanager
def bounded(seconds: float = HANG_BOUND_S) -> Iterator[None]:
    """Raise :class:`Hang` in the body after ``seconds``; an outer timer (pytest-timeout's
    signal method uses the same ``ITIMER_REAL``) is put back with what it had left."""
    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _alarm)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:
            left = outer - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))


def run(
    name: str,
    call: Callable[[], T],
    allowed: type[BaseException] | tuple[type[BaseException], ...] = RemoteError,
) -> T | None:
    """``call()`` under the hang bound: its value, or None if it raised an ``allowed`` error.

    Any other exception propagates (the test fails). A RemoteError must carry
    its stable ``reason`` code (the rejection counters and audit records use it).
    """
    COUNTS[name] += 1
    start = time.perf_counter()
    try:
        with bounded():
            value = call()
    except allowed as exc:
        if isinstance(exc, RemoteError):
            assert exc.reason, f"{type(exc).__name__} without a reason code"  # noqa: PT017
        OUTCOMES.setdefault(name, Counter())[type(exc).__name__] += 1
        return None
    finally:
        SECONDS[name] += time.perf_counter() - start
    OUTCOMES.setdefault(name, Counter())["accepted"] += 1
    return value


def report() -> dict[str, Any]:
    return {
        name: {
            "inputs": COUNTS[name],
            "decoder_seconds": round(SECONDS[name], 2),
            "outcomes": dict(OUTCOMES.get(name, {})),
        }
        for name in sorted(COUNTS)
    }


def write_report(path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(report(), fh, indent=1, sort_keys=True)


# ------------------------------------------------------------------ mutations

_OPS = ("flip", "set", "truncate", "extend", "insert", "delete", "swap", "duplicate", "zero")


def mutate(original: bytes, rng: random.Random, max_edits: int = 4) -> bytes:
    """``original`` after 1..max_edits random edits (the result may equal it: callers check)."""
    data = bytearray(original)
    for _ in range(rng.randint(1, max_edits)):
        op = rng.choice(_OPS)
        n = len(data)
        if op == "flip" and n:
            data[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == "set" and n:
            data[rng.randrange(n)] = rng.randrange(256)
        elif op == "truncate":
            del data[rng.randint(0, n) :]
        elif op == "extend":
            data += rng.randbytes(rng.randint(1, 64))
        elif op == "insert":
            at = rng.randint(0, n)
            data[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == "delete" and n:
            at = rng.randrange(n)
            del data[at : at + rng.randint(1, 16)]
        elif op == "swap" and n >= 2:
            # swap two equal-length slices: moves fields around, keeps the length
            size = rng.randint(1, max(1, n // 2))
            a, b = rng.randint(0, n - size), rng.randint(0, n - size)
            sa, sb = bytes(data[a : a + size]), bytes(data[b : b + size])
            data[a : a + size] = sb
            data[b : b + size] = sa
        elif op == "duplicate" and n:
            at = rng.randrange(n)
            piece = data[at : at + rng.randint(1, 32)]
            where = rng.randint(0, n)
            data[where:where] = piece
        elif op == "zero" and n:
            at = rng.randrange(n)
            size = rng.randint(1, 32)
            data[at : at + size] = bytes(len(data[at : at + size]))
    return bytes(data)


def mutated(original: bytes, max_edits: int = 4) -> st.SearchStrategy[bytes]:
    """Mutations of ``original``, drawn as one seed (cheap per input; reproducible from it)."""
    return st.integers(0, 2**64 - 1).map(
        lambda seed: mutate(original, random.Random(seed), max_edits)
    )


# ---------------------------------------------------- JSON bodies from schemas

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4)
    ),
    max_leaves=12,
)


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _from_schema(  # noqa: PLR0911, PLR0912 - one case per JSON schema keyword
    schema: dict[str, Any], defs: dict[str, Any], depth: int = 0
) -> st.SearchStrategy[Any]:
    """A strategy for (mostly) valid JSON values of a pydantic JSON schema."""
    schema = _resolve(schema, defs)
    if depth > 6:
        return st.none()
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([_from_schema(s, defs, depth + 1) for s in schema[key]])
    if "allOf" in schema:
        return _from_schema(schema["allOf"][0], defs, depth + 1)
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        if not props and isinstance(schema.get("additionalProperties"), dict):
            return st.dictionaries(
                st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
                _from_schema(schema["additionalProperties"], defs, depth + 1),
                max_size=3,
            )
        if not props:
            return st.dictionaries(st.text(max_size=8), JSON_LEAVES, max_size=3)
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: _from_schema(v, defs, depth + 1) for k, v in props.items() if k in required},
            optional={
                k: _from_schema(v, defs, depth + 1) for k, v in props.items() if k not in required
            },
        )
    if kind == "array":
        items = schema.get("items", {})
        if "prefixItems" in schema:
            return st.tuples(
                *(_from_schema(s, defs, depth + 1) for s in schema["prefixItems"])
            ).map(list)
        return st.lists(
            _from_schema(items, defs, depth + 1) if items else JSON_LEAVES,
            min_size=schema.get("minItems", 0),
            max_size=min(schema.get("maxItems", 4), 4),
        )
    if kind == "string":
        if "pattern" in schema:
            strat = st.from_regex(schema["pattern"], fullmatch=True)
        else:
            strat = st.text(
                min_size=schema.get("minLength", 0),
                max_size=schema.get("maxLength", 40) if schema.get("maxLength", 40) < 40 else 40,
            )
        return strat
    if kind == "integer":
        lo = schema.get(
            "minimum",
            schema.get("exclusiveMinimum", -(2**63)) + (1 if "exclusiveMinimum" in schema else 0),
        )
        hi = schema.get(
            "maximum",
            schema.get("exclusiveMaximum", 2**63) - (1 if "exclusiveMaximum" in schema else 0),
        )
        return st.integers(lo, hi)
    if kind == "number":
        return st.floats(
            min_value=schema.get("minimum"),
            max_value=schema.get("maximum"),
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return JSON_VALUES


def documents(model: type[BaseModel]) -> st.SearchStrategy[Any]:
    """Documents shaped by ``model``'s JSON schema (valid or nearly: cross-field rules aside)."""
    schema = model.model_json_schema()
    return _from_schema(schema, schema.get("$defs", {}))


@st.composite
def json_mutated(draw: st.DrawFn, doc: Any) -> Any:
    """Structured invalid values: a field dropped, added, retyped or swapped with another."""
    if not isinstance(doc, dict) or not doc:
        return draw(JSON_VALUES)
    doc = dict(doc)
    op = draw(st.sampled_from(["drop", "add", "retype", "swap", "nest", "whole"]))
    keys = sorted(doc)
    key = draw(st.sampled_from(keys))
    if op == "drop":
        del doc[key]
    elif op == "add":
        doc[draw(st.text(max_size=12))] = draw(JSON_VALUES)
    elif op == "retype":
        doc[key] = draw(JSON_VALUES)
    elif op == "swap" and len(keys) > 1:
        other = draw(st.sampled_from(keys))
        doc[key], doc[other] = doc[other], doc[key]
    elif op == "nest":
        doc[key] = [doc[key]] if draw(st.booleans()) else {key: doc[key]}
    else:
        return draw(JSON_VALUES)
    return doc


def body_inputs(model: type[BaseModel]) -> st.SearchStrategy[bytes]:
    """Bytes for a strict-JSON body decoder of ``model``: valid, structurally broken, or junk."""
    docs = documents(model)
    as_json = st.one_of(docs, docs.flatmap(json_mutated)).map(
        lambda d: json.dumps(d, separators=(",", ":")).encode()
    )
    return st.one_of(
        as_json,
        as_json.flatmap(mutated),
        st.binary(max_size=200),
        st.sampled_from(
            [
                b"[" * 5000,
                b'{"a":' * 3000,
                b"{}",
                b"null",
                b'{"x":NaN}',
                b"\xff\xfe",
                b'{"a":1,"a":1}',
            ]
        ),
    )
