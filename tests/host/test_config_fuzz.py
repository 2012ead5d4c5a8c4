"""Hypothesis: config validation with arbitrary JSON never raises and always yields a config
the firmware can run with (every key present, every value of its declared type and range)."""
import json

from hypothesis import given, settings, strategies as st

from aedgate import config
from aedgate.compat import parse_date

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20)

# Objects that mostly use the real keys, with values of any JSON type.
config_like = st.dictionaries(st.sampled_from(sorted(config.SCHEMA)) | st.text(max_size=8), json_values, max_size=12)


def _check_config(cfg):
    assert set(config.SCHEMA) <= set(cfg)
    for name, (kind, default, lo, hi) in config.SCHEMA.items():
        v = cfg[name]
        if v == default:
            continue
        assert config._check(name, v) is None, (name, v)
    assert cfg["battery_critical_mv"] < cfg["battery_low_mv"]
    assert cfg["battery_empty_mv"] < cfg["battery_full_mv"]
    assert cfg["temp_min_c"] < cfg["temp_max_c"]
    for field in ("pads_expiry", "aed_battery_expiry"):
        assert cfg[field] is None or parse_date(cfg[field]) is not None


@settings(max_examples=1500, deadline=None)
@given(st.one_of(config_like, json_values))
def test_validate_never_raises_and_yields_a_runnable_config(raw):
    cfg, errors = config.validate(raw)
    _check_config(cfg)
    for field, reason in errors:
        assert isinstance(field, str) and reason in ("bad_type", "out_of_range", "bad_value", "unknown_key")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300) | config_like.map(lambda d: json.dumps(d).encode()))
def test_load_from_any_file_content(tmp_path_factory, data):
    from aedgate.storage import Flash
    flash = Flash(str(tmp_path_factory.mktemp("flash")))
    flash.write(config.CONFIG_FILE, data)
    cfg, errors = config.load(flash, "aed-fallback")
    _check_config(cfg)
    assert config.valid_device_id(cfg["device_id"])
