"""Shared helpers for the JSON wires: strict parsing of one object and its fields.

Every wire in PeerDesk is JSON text holding one object with a ``type`` tag. These
helpers turn hostile text into checked Python values or raise ``DecodeError`` with a
message that names the field and what was wrong with it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from agent.errors import DecodeError


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_object(data: str | bytes, *, max_bytes: int, what: str) -> dict[str, Any]:
    """Parse ``data`` as one JSON object of at most ``max_bytes`` bytes."""
    size = len(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    if size > max_bytes:
        raise DecodeError(f"{what} is {size} bytes; the limit is {max_bytes}", code="too_large")
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise DecodeError(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"{what} must be a JSON object, not {type(obj).__name__}")
    return obj


def dump(obj: Mapping[str, Any]) -> str:
    """Compact, deterministic JSON text."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def get_type(obj: Mapping[str, Any], *, key: str = "type") -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > 64:
        raise DecodeError(f'message has no "{key}" tag')
    return value


def get_str(
    obj: Mapping[str, Any],
    name: str,
    *,
    max_len: int = 1024,
    pattern: re.Pattern[str] | None = None,
    optional: bool = False,
    allow_empty: bool = True,
) -> Any:
    """A string field, checked for length and (if given) a full-match pattern."""
    if name not in obj or obj[name] is None:
        if optional:
            return None
        raise DecodeError(f'field "{name}" is missing')
    value = obj[name]
    if not isinstance(value, str):
        raise DecodeError(f'field "{name}" must be a string')
    if len(value) > max_len:
        raise DecodeError(f'field "{name}" is longer than {max_len} characters')
    if not allow_empty and not value:
        raise DecodeError(f'field "{name}" must not be empty')
    if "\x00" in value:
        raise DecodeError(f'field "{name}" contains a NUL character')
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate, e.g. from a "\ud800" escape
            raise DecodeError(f'field "{name}" is not valid Unicode text') from None
    if pattern is not None and not pattern.fullmatch(value):
        raise DecodeError(f'field "{name}" has an invalid value')
    return value


def get_choice(obj: Mapping[str, Any], name: str, choices: tuple[str, ...]) -> str:
    """A string field that must be one of ``choices`` (the error lists them)."""
    value = get_str(obj, name, max_len=64)
    if value not in choices:
        raise DecodeError(f'field "{name}" must be one of {", ".join(choices)}')
    return str(value)


def get_int(obj: Mapping[str, Any], name: str, *, lo: int, hi: int, optional: bool = False) -> Any:
    """An integer field within ``lo..hi`` (booleans are not integers here)."""
    if name not in obj or obj[name] is None:
        if optional:
            return None
        raise DecodeError(f'field "{name}" is missing')
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(f'field "{name}" must be an integer')
    if not lo <= value <= hi:
        raise DecodeError(f'field "{name}" must be between {lo} and {hi}')
    return value


def get_bytes(obj: Mapping[str, Any], name: str, *, min_len: int = 0, max_len: int) -> bytes:
    """A base64url (unpadded) field decoded to bytes of a bounded length."""
    text = get_str(obj, name, max_len=(max_len * 4) // 3 + 4)
    try:
        raw = b64d(text)
    except (binascii.Error, ValueError):
        raise DecodeError(f'field "{name}" is not base64url') from None
    if not min_len <= len(raw) <= max_len:
        raise DecodeError(f'field "{name}" must hold {min_len}..{max_len} bytes')
    return raw


def b64(raw: bytes) -> str:
    """Unpadded base64url text for ``raw``."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    """Decode unpadded base64url (raises ``binascii.Error`` for what is not)."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def get_str_list(
    obj: Mapping[str, Any],
    name: str,
    *,
    max_items: int,
    pattern: re.Pattern[str],
    optional: bool = False,
) -> tuple[str, ...] | None:
    """A list of short strings, each matching ``pattern``."""
    if name not in obj or obj[name] is None:
        if optional:
            return None
        raise DecodeError(f'field "{name}" is missing')
    value = obj[name]
    if not isinstance(value, list):
        raise DecodeError(f'field "{name}" must be a list')
    if len(value) > max_items:
        raise DecodeError(f'field "{name}" has more than {max_items} items')
    out = []
    for item in value:
        if not isinstance(item, str) or not pattern.fullmatch(item):
            raise DecodeError(f'field "{name}" has an invalid item')
        out.append(item)
    return tuple(out)
