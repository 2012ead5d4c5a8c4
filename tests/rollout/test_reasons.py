"""Every reason the firmware can send in `update_refused` or `update_rolled_back` is known to the
operator's report (host_tools/rollout/release.py REFUSED / ROLLED_BACK) and documented in
docs/updates.md ("Why a cabinet failed"). The codes are derived from the firmware's source (its
syntax tree), not listed by hand, so a new code in the firmware fails this test until the
report and the docs know it; and a code the firmware no longer sends fails it too."""
import ast
import re
from pathlib import Path

from host_tools.rollout import release
from host_tools.rollout.report import explain

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"


def _text(node):
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _name(func):
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)


def firmware_reasons():
    """(refused, rolled_back): the reason codes in firmware/**.py, from
    - ReleaseError("code", ...) anywhere, and release.REASONS (the codes ReleaseError carries);
    - Update._refuse(rid, "code", ...);
    - Slots.check's `return "code"` (begin/commit/install pass it on as the refusal);
    - Slots._back(rec, "code") and slots.expire("code") (the rollbacks);
    - an event dict literal {"type": "update_refused"|"update_rolled_back", "reason": "code"}."""
    refused, back = set(), set()
    for path in FIRMWARE.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name, args = _name(node.func), node.args
                if name == "ReleaseError" and args and _text(args[0]):
                    refused.add(_text(args[0]))
                elif name == "_refuse" and len(args) > 1 and _text(args[1]):
                    refused.add(_text(args[1]))
                elif name == "_back" and len(args) > 1 and _text(args[1]):
                    back.add(_text(args[1]))
                elif name == "expire" and args and _text(args[0]):
                    back.add(_text(args[0]))
            elif isinstance(node, ast.FunctionDef) and node.name == "check" and path.name == "slots.py":
                for r in ast.walk(node):
                    if isinstance(r, ast.Return) and r.value is not None and _text(r.value):
                        refused.add(_text(r.value))
            elif isinstance(node, ast.Assign) and path.name == "release.py" and any(
                    getattr(t, "id", None) == "REASONS" for t in node.targets):
                refused.update(_text(e) for e in node.value.elts)
            elif isinstance(node, ast.Dict):
                d = {_text(k): v for k, v in zip(node.keys, node.values) if k is not None}
                kind, why = _text(d.get("type")), _text(d.get("reason"))
                if why and kind == "update_refused":
                    refused.add(why)
                elif why and kind == "update_rolled_back":
                    back.add(why)
    return refused, back


def test_the_extractor_finds_the_codes_it_must():
    # Honest: the derivation itself could find nothing and pass everything below.
    refused, back = firmware_reasons()
    assert {"bad_signature", "not_newer", "on_trial", "bad_image", "no_space", "no_image_slot",
            "internal"} <= refused
    assert back == {"crash_loop", "slot_missing", "trial_timeout"}


def test_every_firmware_reason_is_known_to_the_report_and_documented():
    refused, back = firmware_reasons()
    assert refused == set(release.REFUSED), (refused ^ set(release.REFUSED))
    assert back == set(release.ROLLED_BACK), (back ^ set(release.ROLLED_BACK))
    doc = (ROOT / "docs" / "updates.md").read_text()
    section = doc.split("### Why a cabinet failed", 1)[1].split("\n### ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+:)?([a-z_]+)` \|", section, re.M))
    for code in refused:
        assert ("refused:", code) in documented, code
    for code in back:
        assert ("rolled_back:", code) in documented, code
    for code in release.CONTROLLER:
        if code != "already":            # a done cabinet's note, never a failure
            assert ("", code) in documented, code
    assert len(documented) == len(refused) + len(back) + 1   # nothing stale in the table


def test_the_report_explains_each_reason_and_says_when_it_does_not_know_one():
    for code, text in release.REFUSED.items():
        assert explain("refused:" + code) == text
    for code, text in release.ROLLED_BACK.items():
        assert explain("rolled_back:" + code) == text
    assert explain("timeout") == release.CONTROLLER["timeout"]
    assert "unknown" in explain("refused:from_the_future") and "unknown" in explain("odd")
    assert explain(None) == ""
