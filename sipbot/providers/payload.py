"""Audio payloads inside provider JSON frames: base64 text to bytes, fast.

Both services send audio as base64 strings in JSON, 100 ms of 24 kHz audio per message by
default (6.4 kB of text). ``binascii`` decodes that in ≈ 15 µs; pydantic-core, which google-genai
already uses to decode the same field, does it in ≈ 4 µs. Both alphabets (standard and URL-safe)
and missing padding are accepted, as protobuf JSON and google-genai accept them.
"""

from __future__ import annotations

import base64

from pydantic_core import SchemaValidator, core_schema


def _bytes_validator() -> SchemaValidator | None:
    """pydantic-core's base64 bytes validator; None if it does not decode base64 from a str
    (a pydantic-core before ``val_json_bytes``): :func:`b64decode` then uses ``base64``."""
    validator = SchemaValidator(
        core_schema.bytes_schema(), core_schema.CoreConfig(val_json_bytes="base64")
    )
    return validator if validator.validate_python("AAE") == b"\x00\x01" else None


_BYTES = _bytes_validator()
_URL_SAFE = str.maketrans("-_", "+/")


def b64decode(text: str) -> bytes:
    """Base64 as protobuf JSON writes bytes: standard or URL-safe alphabet, padded or not.

    Raises:
        ValueError: ``text`` is not base64.
    """
    if _BYTES is not None:
        return _BYTES.validate_python(text)  # type: ignore[no-any-return]
    text = text.translate(_URL_SAFE).rstrip("=")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
