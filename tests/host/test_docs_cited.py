"""Firmware comments cite documents that are in this repository (issue 11.7, issue 13 §3)."""
import re

from tests.fixtures import ROOT


def test_firmware_cites_only_docs_in_the_repository():
    outside = []
    missing = []
    for path in sorted((ROOT / "firmware").rglob("*.py")):
        text = path.read_text()
        for name in re.findall(r"\b([A-Z]+\.md)\b", text):
            outside.append("%s: %s" % (path.relative_to(ROOT), name))
        for name in re.findall(r"docs/([\w/.-]+\.md)", text):
            if not (ROOT / "docs" / name).exists():
                missing.append("%s: docs/%s" % (path.relative_to(ROOT), name))
    assert outside == [], outside
    assert missing == [], missing


def test_security_doc_covers_what_a_stolen_cabinet_gives_away():
    text = (ROOT / "docs" / "security.md").read_text()
    for needed in ("Threat model", "stolen cabinet", "config.json", "broker_password", "REPL",
                   "Frozen firmware", "flash encryption", "per-device", "rule 4"):
        assert needed.lower() in text.lower(), needed
