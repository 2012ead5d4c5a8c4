"""docs/config.md lists every configuration key the firmware knows."""
from pathlib import Path

from aedgate.config import SCHEMA


def test_every_key_is_documented():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    missing = [k for k in SCHEMA if "`%s`" % k not in doc]
    assert missing == [], missing
