"""The protocol contract: docs/protocol.md, docs/schemas/*.json and docs/asyncapi.yaml agree.

- every schema is a valid JSON Schema (draft 2020-12) with the agreed strictness;
- every example in docs/protocol.md (a ```json block right after `<!-- example: NAME -->`,
  NAME = `<schema>` or `<schema>:<label>`) validates against its schema, and the examples cover
  every event type;
- hand-written invalid payloads are rejected;
- the lists in the document (event types, alarms, reason codes, topics) match the schemas;
- the key-derivation and token worked examples are recomputed, not trusted;
- docs/asyncapi.yaml parses and every `$ref` in it resolves.
"""
import copy
import datetime
import json
import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SCHEMAS = DOCS / "schemas"
PROTOCOL = DOCS / "protocol.md"
ASYNCAPI = DOCS / "asyncapi.yaml"
NAMES = ["status", "state", "event", "ack", "world", "update_offer", "update_get"]

_EXAMPLE = re.compile(r"^<!-- example: ([a-z_]+)(?::([A-Za-z0-9_-]+))? -->\n```json\n(.*?)\n```",
                      re.M | re.S)


def _schema(name):
    return json.loads((SCHEMAS / ("%s.schema.json" % name)).read_text())


def _validator(name):
    return Draft202012Validator(_schema(name))


def _doc():
    return PROTOCOL.read_text()


def _examples():
    out = []
    for m in _EXAMPLE.finditer(_doc()):
        out.append((m.group(1), m.group(2) or "", json.loads(m.group(3))))
    return out


def _example(name, label):
    for n, lab, payload in _examples():
        if n == name and lab == label:
            return copy.deepcopy(payload)
    raise KeyError("%s:%s" % (name, label))


def _section(title):
    """Text of the markdown section whose heading starts with `title`, up to the next heading
    of the same or a higher level."""
    doc = _doc()
    m = re.search(r"^(#+) %s.*$" % re.escape(title), doc, re.M)
    assert m, title
    level = len(m.group(1))
    rest = doc[m.end():]
    end = re.search(r"^#{1,%d} " % level, rest, re.M)
    return rest[:end.start()] if end else rest


def _first_column_codes(section_text):
    """Back-quoted names in the first column of the markdown tables of a section."""
    return {m.group(1) for m in re.finditer(r"^\| `([a-z_]+)` \|", section_text, re.M)}


# --- the schemas themselves -------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_schema_is_valid_draft_2020_12(name):
    schema = _schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == "%s.schema.json" % name
    assert schema["type"] == "object"


@pytest.mark.parametrize("name", ["status", "state", "event", "ack"])
def test_telemetry_schemas_are_open_for_new_fields_and_pin_v_and_ts(name):
    schema = _schema(name)
    assert schema["additionalProperties"] is True
    assert {"v", "ts"} <= set(schema["required"])
    assert schema["properties"]["v"]["const"] == 1


def test_closed_enums():
    state = _schema("state")["properties"]
    assert state["door"] == {"enum": ["open", "closed"]}
    assert state["lock"] == {"enum": ["locked", "unlocked", "fault"]}
    assert _schema("ack")["properties"]["result"] == {"enum": ["accepted", "rejected"]}


def test_reason_codes_agree_between_ack_event_and_document():
    ack = _schema("ack")["$defs"]["reject_reason"]["enum"]
    event = _schema("event")["$defs"]["reject_reason"]["enum"]
    assert ack == event
    assert len(set(ack)) == len(ack)
    assert _first_column_codes(_section("ack reason codes")) == set(ack)


def test_no_echo_codes_agree_between_ack_schema_and_document():
    rows = re.findall(r"^\| `([a-z_]+)` \| [^|]* \| (no|yes[^|]*) \|", _section("ack reason codes"), re.M)
    assert rows
    no_echo = {code for code, echo in rows if echo == "no"}
    rule = [r for r in _schema("ack")["allOf"] if "reason" in r["if"].get("properties", {})]
    assert len(rule) == 1
    assert set(rule[0]["if"]["properties"]["reason"]["enum"]) == no_echo


def test_event_types_and_alarms_agree_with_document():
    types = _schema("event")["$defs"]["event_type"]["enum"]
    assert len(set(types)) == len(types)
    assert _first_column_codes(_section("Event types")) == set(types)
    alarms = _schema("state")["$defs"]["alarm"]["enum"]
    assert alarms == sorted(alarms)
    assert _first_column_codes(_section("Alarms")) == set(alarms)


def test_fixed_topic_table_is_in_the_document():
    doc = _doc()
    for row in [
        "| `aed/v1/<id>/status` | device → | 1 | yes |",
        "| `aed/v1/<id>/state` | device → | 1 | yes |",
        "| `aed/v1/<id>/event` | device → | 1 | no |",
        "| `aed/v1/<id>/ack` | device → | 1 | no |",
        "| `aed/v1/<id>/cmd/unlock` | → device | 1 | never |",
        "| `aed/v1/<id>/cmd/<other>` | → device | 1 | never |",
    ]:
        assert row in doc
    assert "`^[A-Za-z0-9_-]{1,64}$`" in doc
    assert "`aedsim/world/<device_id>`" in doc


# --- examples in docs/protocol.md -------------------------------------------------------------

def test_document_has_examples_for_every_schema_and_event_type():
    examples = _examples()
    # Catch a marker whose fenced block was not picked up (typo, blank line, other language).
    assert len(examples) == _doc().count("<!-- example: ")
    assert {n for n, _, _ in examples} == set(NAMES)
    event_types = {p["type"] for n, _, p in examples if n == "event"}
    assert event_types == set(_schema("event")["$defs"]["event_type"]["enum"])


@pytest.mark.parametrize("name,label,payload", _examples(),
                         ids=["%s:%s#%d" % (n, lab, i) for i, (n, lab, _) in enumerate(_examples())])
def test_example_is_valid(name, label, payload):
    _validator(name).validate(payload)
    if name == "event":
        assert payload["type"] == label
    if name == "state":
        assert payload["alarms"] == sorted(set(payload["alarms"]))
        for part in ("pads", "aed_battery"):
            expiry = payload[part + "_expiry"]
            if expiry is not None:
                assert payload[part + "_days_left"] == _days_left(payload["ts"], expiry)
    if name == "event" and "expiry" in payload:
        assert payload["days_left"] == _days_left(payload["ts"], payload["expiry"])


def _days_left(ts, expiry):
    today = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).date()
    return (datetime.date.fromisoformat(expiry) - today).days


def test_event_examples_tell_one_consistent_story():
    events = sorted((p for n, _, p in _examples() if n == "event"), key=lambda p: p["seq"])
    seqs = [p["seq"] for p in events]
    assert len(seqs) == len(set(seqs))
    assert [p["ts"] for p in events] == sorted(p["ts"] for p in events)
    # Every gap in the examples is explained by the events_dropped that follows it.
    for before, after in zip(events, events[1:]):
        gap = after["seq"] - before["seq"] - 1
        if gap:
            assert after["type"] == "events_dropped" and after["count"] == gap


# --- invalid payloads ---------------------------------------------------------------------------

def _mutate(name, label, **changes):
    payload = _example(name, label)
    for key, value in changes.items():
        if value is _DROP:
            del payload[key]
        else:
            payload[key] = value
    return payload


_DROP = object()

INVALID = [
    ("state door ajar", "state", ("state", "normal", {"door": "ajar"})),
    ("state lock missing", "state", ("state", "normal", {"lock": _DROP})),
    ("state lock jammed", "state", ("state", "normal", {"lock": "jammed"})),
    ("state v 2", "state", ("state", "normal", {"v": 2})),
    ("state ts as string", "state", ("state", "normal", {"ts": "1767225600"})),
    ("state battery_pct 101", "state", ("state", "normal", {"battery_pct": 101})),
    ("state mains as string", "state", ("state", "normal", {"mains": "yes"})),
    ("state bad date", "state", ("state", "normal", {"pads_expiry": "2026-13-01"})),
    ("state expiry null, days int", "state", ("state", "normal", {"pads_expiry": None})),
    ("state expiry set, days null", "state", ("state", "normal", {"aed_battery_days_left": None})),
    ("state duplicate alarm", "state", ("state", "alarms", {"alarms": ["mains_lost", "mains_lost"]})),
    ("state unknown alarm", "state", ("state", "normal", {"alarms": ["door_ajar"]})),
    ("state outbox missing", "state", ("state", "normal", {"outbox": _DROP})),
    ("status v 2", "status", ("status", "birth", {"v": 2})),
    ("status birth without fw", "status", ("status", "birth", {"fw": _DROP})),
    ("status bad reset cause", "status", ("status", "birth", {"reset_cause": "cosmic_ray"})),
    ("status ts in 2000 epoch", "status", ("status", "lwt", {"ts": 1767225612 - 946684800})),
    ("event seq 0", "event", ("event", "boot", {"seq": 0})),
    ("event seq negative", "event", ("event", "boot", {"seq": -3})),
    ("event seq as string", "event", ("event", "boot", {"seq": "41"})),
    ("event v 2", "event", ("event", "boot", {"v": 2})),
    ("event ts as string", "event", ("event", "boot", {"ts": "1767225600"})),
    ("event ts float", "event", ("event", "boot", {"ts": 1767225600.5})),
    ("event seq missing", "event", ("event", "boot", {"seq": _DROP})),
    ("unknown event type", "event", ("event", "boot", {"type": "door_slammed"})),
    ("unlocked without mission", "event", ("event", "unlocked", {"mission": _DROP})),
    ("unlocked without window", "event", ("event", "unlocked", {"window_s": _DROP})),
    ("relocked without mission", "event", ("event", "relocked", {"mission": _DROP})),
    ("relocked bad reason", "event", ("event", "relocked", {"reason": "tired"})),
    ("token_rejected without reason", "event", ("event", "token_rejected", {"reason": _DROP})),
    ("token_rejected unknown reason", "event", ("event", "token_rejected", {"reason": "nope"})),
    ("token_rejected cti not hex", "event", ("event", "token_rejected", {"cti": "xyz"})),
    ("boot without cause", "event", ("event", "boot", {"cause": _DROP})),
    ("door_closed without open_s", "event", ("event", "door_closed", {"open_s": _DROP})),
    ("pads_expiring without expiry", "event", ("event", "pads_expiring", {"expiry": _DROP})),
    ("config_error without field", "event", ("event", "config_error", {"field": _DROP})),
    ("events_dropped count 0", "event", ("event", "events_dropped", {"count": 0})),
    ("ack result maybe", "ack", ("ack", "accepted", {"result": "maybe"})),
    ("ack rejected without reason", "ack", ("ack", "rejected", {"reason": _DROP})),
    ("ack accepted with reason", "ack", ("ack", "accepted", {"reason": "bad_mac"})),
    ("ack accepted without cti", "ack", ("ack", "accepted", {"cti": _DROP})),
    ("ack unlock accepted without mission", "ack", ("ack", "accepted", {"mission": _DROP})),
    ("ack bad_mac echoes cti", "ack", ("ack", "rejected", {"cti": "0102030405060708"})),
    ("ack bad_mac echoes mission", "ack", ("ack", "rejected", {"mission": "M-1"})),
    ("ack unknown reason", "ack", ("ack", "rejected", {"reason": "sorry"})),
    ("ack cti too short", "ack", ("ack", "accepted", {"cti": "0102"})),
    ("world door ajar", "world", ("world", "door", {"door": "ajar"})),
    ("world unknown key", "world", ("world", "door", {"flood": True})),
    ("world button hold", "world", ("world", "door", {"button": "hold"})),
    ("world power as bool", "world", ("world", "power", {"power": False})),
]


@pytest.mark.parametrize("schema,base", [(s, b) for _, s, b in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_payload_is_rejected(schema, base):
    name, label, changes = base
    _validator(name).validate(_example(name, label))  # the base itself is valid
    bad = _mutate(name, label, **changes)
    assert not _validator(schema).is_valid(bad), bad


def test_empty_world_message_is_rejected():
    assert not _validator("world").is_valid({})


def _device_id_validator():
    defs = _schema("status")["$defs"]
    return Draft202012Validator({"$ref": "#/$defs/device_id", "$defs": defs})


@pytest.mark.parametrize("device_id", ["cab-0001", "A_b-9", "x" * 64])
def test_device_id_accepted(device_id):
    assert _device_id_validator().is_valid(device_id)


@pytest.mark.parametrize("device_id", ["cab+0001", "cab#1", "cab/1", "", "x" * 65, "cab 1",
                                       "caf\u00e9", "cab-1\n", 17])
def test_device_id_rejected(device_id):
    assert not _device_id_validator().is_valid(device_id)


# --- worked examples of the token profile ------------------------------------------------------

def _derive(device_id, master=bytes(range(32))):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"aedgate/v1",
                info=b"device-key:" + device_id.encode()).derive(master)


def test_hkdf_is_rfc5869():
    # RFC 5869 A.1, to show the helper is plain HKDF-SHA256.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    okm = HKDF(algorithm=hashes.SHA256(), length=42, salt=bytes(range(13)),
               info=bytes(range(0xf0, 0xfa))).derive(b"\x0b" * 22)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")


def test_key_derivation_example_in_document():
    doc = _doc()
    for device_id in ("cab-0001", "cab-0002"):
        assert "| `%s` | `%s` |" % (device_id, _derive(device_id).hex()) in doc


# cab-0001's default kid (docs/protocol.md, "Default kid"): the worked token carries it.
DEFAULT_KID_0001 = bytes.fromhex("d75fb396cb3d9d13")


def _worked_token():
    import cbor2
    from cryptography.hazmat.primitives import hashes, hmac
    protected = cbor2.dumps({1: 5})
    claims = {1: "dispatch", 3: "cab-0001", 4: 1767225900, 6: 1767225600,
              7: bytes.fromhex("0102030405060708090a0b0c0d0e0f10"),
              -65537: "M-2026-0001", -65538: 180}
    payload = cbor2.dumps(claims)
    mac_structure = cbor2.dumps(["MAC0", protected, b"", payload])
    h = hmac.HMAC(_derive("cab-0001"), hashes.SHA256())
    h.update(mac_structure)
    tag = h.finalize()
    token = cbor2.dumps(cbor2.CBORTag(17, [protected, {4: DEFAULT_KID_0001}, payload, tag]))
    return protected, payload, mac_structure, tag, token


def test_token_example_in_document():
    protected, payload, mac_structure, tag, token = _worked_token()
    doc = _doc()
    assert "→ `%s`" % protected.hex() in doc
    for label, value in [("payload (hex)", payload), ("MAC_structure (hex)", mac_structure),
                         ("tag (hex)", tag), ("token, tag 17 (%d bytes)" % len(token), token)]:
        assert "| %s | `%s` |" % (label, value.hex()) in doc, label


def test_token_example_verifies_with_independent_library():
    import cwt
    import cbor2
    token = _worked_token()[4]
    key = cwt.COSEKey.from_symmetric_key(_derive("cab-0001"), alg="HS256", kid=DEFAULT_KID_0001)
    claims = cbor2.loads(cwt.COSE.new().decode(token, key))
    assert claims[3] == "cab-0001" and claims[-65537] == "M-2026-0001"
    # And a token for another cabinet's key does not verify.
    other = cwt.COSEKey.from_symmetric_key(_derive("cab-0002"), alg="HS256", kid=DEFAULT_KID_0001)
    with pytest.raises(Exception):
        cwt.COSE.new().decode(token, other)


# --- AsyncAPI -----------------------------------------------------------------------------------

def _asyncapi():
    import yaml
    return yaml.safe_load(ASYNCAPI.read_text())


def _refs(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield path, v
            else:
                yield from _refs(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _refs(v, path + (i,))


def _pointer(doc, fragment):
    node = doc
    if fragment in ("", "/"):
        return node
    for part in fragment.lstrip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def test_asyncapi_parses_and_has_the_fixed_channels():
    api = _asyncapi()
    assert api["asyncapi"] == "3.0.0"
    assert {s["protocol"] for s in api["servers"].values()} == {"mqtt", "secure-mqtt"}
    addresses = {c["address"] for c in api["channels"].values()}
    assert {"aed/v1/{device_id}/%s" % t for t in
            ("status", "state", "event", "ack", "cmd/unlock")} <= addresses
    assert "aedsim/world/{device_id}" in addresses
    for op in api["operations"].values():
        assert op["action"] in ("send", "receive")
        address = _pointer(api, op["channel"]["$ref"][2:])["address"]
        assert op["action"] == ("send" if re.search(r"/(status|state|event|ack|update/get)$", address)
                                else "receive")
        binding = op.get("bindings", {}).get("mqtt")
        if binding:
            # update gets and blocks are QoS 0 (docs/protocol.md "Firmware updates"), all else 1
            assert binding["qos"] == (0 if address.endswith(("/update/get", "/update/block")) else 1)
            assert binding["retain"] == address.endswith(("/status", "/state"))
    assert api["components"]["parameters"]["device_id"]["x-pattern"] == \
        _schema("status")["$defs"]["device_id"]["pattern"]
    assert api["components"]["messages"]["unlockToken"]["contentType"] == "application/cose"


def test_asyncapi_refs_resolve():
    api = _asyncapi()
    refs = list(_refs(api))
    assert refs
    files = set()
    for path, ref in refs:
        target, _, fragment = ref.partition("#")
        if target:
            file = (DOCS / target).resolve()
            assert file.is_file(), (path, ref)
            files.add(file)
            if fragment:
                _pointer(json.loads(file.read_text()), fragment)
        else:
            _pointer(api, fragment)  # raises KeyError when dangling
    assert files == {(SCHEMAS / ("%s.schema.json" % n)).resolve() for n in NAMES}


def test_asyncapi_message_examples_are_valid():
    api = _asyncapi()
    for name, message in api["components"]["messages"].items():
        ref = message["payload"].get("schema", {}).get("$ref")
        if not ref:
            continue
        validator = Draft202012Validator(json.loads((DOCS / ref).read_text()))
        for example in message.get("examples", []):
            validator.validate(example["payload"])
