"""host_tools.backend checks messages with fastjsonschema (compiled, fast); jsonschema's Draft
2020-12 validator is the reference. They must agree on every documented example and on many
mutations of them."""
import copy

from hypothesis import given, settings, strategies as st
from jsonschema import Draft202012Validator

from host_tools.backend.messages import SchemaError, validate
from tests.host.test_schemas import _examples, _schema

KINDS = ("status", "state", "event", "ack")
EXAMPLES = [(n, p) for n, _lab, p in _examples() if n in KINDS]
REF = {k: Draft202012Validator(_schema(k)) for k in KINDS}

values = st.one_of(st.none(), st.booleans(), st.integers(-5, 2_000_000_000), st.floats(allow_nan=False),
                   st.sampled_from(["", "x", "boot", "accepted", "rejected", "unlock", "2027-01-31",
                                    "0" * 32, "bad_mac", "overflow", "closed", "open"]),
                   st.lists(st.sampled_from(["pads_expiring", "x"]), max_size=2))


def ours(kind, body):
    try:
        validate(kind, body)
        return True
    except SchemaError:
        return False


def test_every_documented_example_passes_both():
    assert len(EXAMPLES) >= 8
    for kind, body in EXAMPLES:
        assert REF[kind].is_valid(body) and ours(kind, body), (kind, body)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(range(len(EXAMPLES))), st.lists(st.tuples(st.integers(0, 30), values), max_size=3),
       st.lists(st.integers(0, 30), max_size=2))
def test_fastjsonschema_agrees_with_jsonschema(i, changes, drops):
    kind, body = EXAMPLES[i]
    body = copy.deepcopy(body)
    keys = sorted(set(body) | {"seq", "type", "count", "cti", "mission", "reason", "online", "result"})
    for k, v in changes:
        body[keys[k % len(keys)]] = v
    for k in drops:
        body.pop(keys[k % len(keys)], None)
    assert ours(kind, body) == REF[kind].is_valid(body), (kind, body)
