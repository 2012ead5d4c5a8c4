"""What arrives from a cabinet: topic `aed/v1/<device>/<kind>` with a JSON body, checked against
the JSON Schemas of docs/schemas/ (the contract in docs/protocol.md).

Needs `fastjsonschema` at run time (a main dependency of the aedgate package)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("status", "state", "event", "ack")


def _schema_dir() -> Path:
    """docs/schemas of a source checkout, or the copy `pip install` put beside the host tools
    (package `aedgate_schemas`, the same files as data)."""
    checkout = Path(__file__).resolve().parents[2] / "docs" / "schemas"
    if (checkout / "event.schema.json").is_file():
        return checkout
    import importlib.util
    spec = importlib.util.find_spec("aedgate_schemas")
    for where in (spec.submodule_search_locations or []) if spec else []:
        if (Path(where) / "event.schema.json").is_file():
            return Path(where)
    raise FileNotFoundError("the aedgate message schemas are missing: reinstall aedgate")


SCHEMA_DIR = _schema_dir()


class SchemaError(ValueError):
    """A message that is not JSON or breaks its schema; str() is one line."""


@dataclass
class FleetMessage:
    """One message from the fleet. `ack()` tells the broker it is safely handled (only when the
    subscriber runs with manual_ack=True; otherwise paho acknowledged it on arrival)."""

    device: str
    kind: str           # status | state | event | ack
    body: dict
    retain: bool = False
    dup: bool = False
    shard: int = 0
    received: float = 0.0  # time.time() on arrival
    topic: str = ""
    duplicate: bool = False  # an event whose (device, seq) this process has already seen
    _ack: object = field(default=None, repr=False)

    def ack(self) -> None:
        if self._ack is not None:
            self._ack()
            self._ack = None


def parse_topic(topic: str) -> tuple[str, str] | None:
    """aed/v1/<device>/<kind> -> (device, kind) for the four telemetry kinds; else None."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != "aed" or parts[1] != "v1" or parts[3] not in KINDS:
        return None
    return parts[2], parts[3]


_validators: dict = {}


def _validator(kind: str):
    """The compiled check of docs/schemas/<kind>.schema.json. fastjsonschema turns a schema into
    Python code (about 15x faster than jsonschema here); tests/backend/test_schema_check.py
    shows it agrees with jsonschema's Draft 2020-12 verdicts on these schemas."""
    v = _validators.get(kind)
    if v is None:
        import fastjsonschema
        path = SCHEMA_DIR / ("%s.schema.json" % kind)
        try:
            schema = json.loads(path.read_text())
        except OSError as e:
            raise RuntimeError("schema %s is not readable: %s" % (path, e)) from None
        v = _validators[kind] = fastjsonschema.compile(schema)
    return v


def decode(kind: str, payload: bytes, check: bool = True) -> dict:
    """The JSON body of a `kind` message; SchemaError when it is not valid."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise SchemaError("not JSON: %s" % e) from None
    if not isinstance(body, dict):
        raise SchemaError("not a JSON object")
    if check:
        validate(kind, body)
    return body


def validate(kind: str, body: dict) -> None:
    import fastjsonschema
    try:
        _validator(kind)(body)
    except fastjsonschema.JsonSchemaException as e:
        raise SchemaError("%s: %s" % (kind, str(e.message)[:160])) from None
