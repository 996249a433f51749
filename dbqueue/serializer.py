"""Job payloads are JSON text: readable with plain SQL, and never code.

A payload is ``{"args": [...], "kwargs": {...}}`` plus, only when a dispatch
overrides the job's defaults, ``"options": {...}``, and, only for a job that is
part of a workflow (a chain, a batch, a schedule), ``"flow": {...}`` (see
dbqueue.store.flows).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import SerializationError

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))

MAX_DEPTH = 100
"""How deeply lists and dicts may nest in one argument of a job (``[[1]]`` nests
two levels). Far more than any job's arguments need, and far from Python's
recursion limit, which the worker's decoding would otherwise hit."""

_PAYLOAD_DEPTH = MAX_DEPTH + 6
"""How deeply a payload read from a row may nest: whatever a dispatch took, in
the deepest place dbqueue puts it. That is a later step of a chain, in the
payload of its first step: the payload, its "flow", the "chain" list, the
step, its "payload" and its "args" hold the argument six levels down."""


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400: too large for a float, read as infinity
        raise ValueError(f"{text} is too large a number")
    return value


_decoder = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)
_scan = _decoder.scan_once  # type: ignore[attr-defined]  # set by __init__, not declared


def _parse(text: str) -> Any:
    """``_decoder.decode(text)``, without its two whitespace searches when the
    text is one JSON object and nothing else, as every payload dbqueue writes is
    (a worker decodes a payload per job). Anything else takes the full path,
    which also says what is wrong."""
    if text[:1] == "{":
        try:
            document, end = _scan(text, 0)
        except (StopIteration, ValueError):
            pass
        else:
            if end == len(text):
                return document
    return _decoder.decode(text)


@dataclass(frozen=True, slots=True)
class Payload:
    """The decoded content of a ``jobs.payload`` column."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    flow: dict[str, Any] | None = None


_PLAIN = (str, int, float, bool, type(None))


class _TooDeep(TypeError):
    """Lists and dicts nest deeper than allowed: a flatter structure is the fix,
    not plainer values."""


class _LoneSurrogate(ValueError):
    """A string holds half of a UTF-16 pair ("\\ud800"), which is no character:
    no database can store it."""


def _check_keys(value: Any, depth: int, limit: int = MAX_DEPTH, *, keys: bool = True) -> None:
    """Raise TypeError for a dict key that JSON would quietly turn into a string
    (the job would receive ``{"1": ...}`` for ``{1: ...}``; unless not
    ``keys``), or for lists and dicts nesting deeper than ``limit`` levels
    (``value`` is at ``depth``)."""
    if depth > limit:
        raise _TooDeep(f"lists and dicts nest more than {limit} levels deep")
    if isinstance(value, dict):
        for key, item in value.items():
            if keys and not isinstance(key, str):
                raise TypeError(f"dict keys must be strings, not {key!r}")
            if not isinstance(item, _PLAIN):
                _check_keys(item, depth + 1, limit, keys=keys)
    elif isinstance(value, list | tuple):
        for item in value:
            if not isinstance(item, _PLAIN):
                _check_keys(item, depth + 1, limit, keys=keys)


def _check_text(text: str) -> None:
    """Raise _LoneSurrogate if encoded JSON ``text`` holds a lone surrogate."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise _LoneSurrogate from None


def encode(job_name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
           options: dict[str, Any] | None = None) -> str:
    """Encode the arguments of a dispatch, or raise SerializationError naming the culprit."""
    document: dict[str, Any] = {"args": args, "kwargs": kwargs}
    if options:
        document["options"] = options
    try:
        text = _encoder.encode(document)  # first: it also refuses circular structures
        # From 0: the payload's object and its "args" list are not levels of an
        # argument, each of which may nest MAX_DEPTH (as the README promises).
        _check_keys(args, depth=0)
        if kwargs:
            _check_keys(kwargs, depth=0)
        _check_text(text)
        return text
    except (RecursionError, _TooDeep):
        raise SerializationError(
            f"the arguments of job {job_name!r} nest lists or dicts more than {MAX_DEPTH} "
            "levels deep (or refer to themselves); pass a flatter structure") from None
    except _LoneSurrogate:
        raise SerializationError(
            f"the arguments of job {job_name!r} hold a lone surrogate (\\ud800-\\udfff), "
            "half of a UTF-16 pair, which is no character and which no database can store; "
            "remove or replace it (text.encode('utf-8', 'replace').decode() does)"
        ) from None
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"the arguments of job {job_name!r} must be JSON-serialisable ({exc}); "
            "pass plain values (str, int, float, bool, None, lists, dicts with str keys), "
            "for example an id instead of an object"
        ) from None


def with_flow(payload: str, flow: dict[str, Any]) -> str:
    """``payload`` (an encoded payload) with ``flow`` set: its workflow state."""
    if payload.startswith('{"args":') and '"flow"' not in payload:
        # As encode() wrote it: the key goes at the end, with no decoding (a
        # batch of many thousand jobs is dispatched at once).
        return f'{payload[:-1]},"flow":{_encoder.encode(flow)}}}'
    document = _decoder.decode(payload)
    document["flow"] = flow
    return _encoder.encode(document)


def encode_value(what: str, value: Any) -> str:
    """Encode any JSON value to be stored (a workflow's step, say)."""
    try:
        text = _encoder.encode(value)
        _check_text(text)
        return text
    except RecursionError:
        raise SerializationError(f"{what} nests lists or dicts too deeply (or refers to "
                                 "itself)") from None
    except _LoneSurrogate:
        raise SerializationError(f"{what} holds a lone surrogate (\\ud800-\\udfff), half of "
                                 "a UTF-16 pair, which no database can store") from None
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"{what} must be JSON-serialisable: {exc}") from None


def encode_result(what: str, value: Any) -> str:
    """Encode what a job returned (``what`` says which), to be stored and
    passed on as a later job's ``previous``: like an argument, it nests lists
    and dicts up to MAX_DEPTH levels, so that the payload it goes into can be
    decoded."""
    text = encode_value(what, value)
    if not isinstance(value, _PLAIN) and text.count("[") + text.count("{") > MAX_DEPTH:
        try:
            _check_keys(value, depth=1, keys=False)
        except _TooDeep:
            raise SerializationError(f"{what} nests lists or dicts more than {MAX_DEPTH} "
                                     "levels deep; return a flatter structure") from None
    return text


def decode(text: str) -> Payload:
    """Decode a payload column; raise ValueError with a readable reason when it is malformed.

    Anyone with SQL access can write a payload: whatever it holds, this raises
    ValueError and nothing else, so the worker fails that one job and goes on.
    """
    try:
        document = _parse(text)
    except RecursionError:
        raise ValueError(f"payload nests lists or dicts more than {_PAYLOAD_DEPTH} levels "
                         "deep") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"payload is not valid JSON: {exc}") from None
    # Counting brackets is cheap and bounds the depth from above: only a payload
    # with many of them is walked (by dispatch's own check, from the top).
    if text.count("[") + text.count("{") > _PAYLOAD_DEPTH:
        try:  # keys from JSON are strings: only depth can fail
            _check_keys(document, depth=1, limit=_PAYLOAD_DEPTH)
        except TypeError:
            raise ValueError(f"payload nests lists or dicts more than {_PAYLOAD_DEPTH} levels "
                             "deep") from None
    if "\\u" in text:
        try:  # no database can store a lone surrogate, and a "\ud800" escape makes one
            _encoder.encode(document).encode()
        except UnicodeEncodeError:
            raise ValueError("payload holds a lone surrogate (\\ud800-\\udfff), which is "
                             "not a Unicode character") from None
    if not isinstance(document, dict):
        raise ValueError(f"payload must be a JSON object, not {type(document).__name__}")
    args = document.get("args", [])
    kwargs = document.get("kwargs", {})
    options = document.get("options", {})
    flow = document.get("flow")
    if not isinstance(args, list):
        raise ValueError("payload 'args' must be a JSON array")
    if not isinstance(kwargs, dict):
        raise ValueError("payload 'kwargs' must be a JSON object")
    if not isinstance(options, dict):
        raise ValueError("payload 'options' must be a JSON object")
    if flow is not None and not isinstance(flow, dict):
        raise ValueError("payload 'flow' must be a JSON object")
    return Payload(tuple(args), kwargs, options, flow)
