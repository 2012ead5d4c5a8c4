"""Only device code on the device (issue 13 §3): every function these firmware modules define is
used by the firmware itself or is an entry point a host tool calls on the board; each constant is
defined once; no module does two jobs under one name."""
import ast
import re

from tests.fixtures import ROOT

FIRMWARE = ROOT / "firmware"
# Modules checked here (the rest belong to other work in progress and are checked there).
MODULES = ("lock", "window", "commands", "beacon", "mission", "gate", "replay", "timefloor", "hmac_sha256",
           "service", "config", "token", "app")
ENTRY_POINTS = {"apply_serial"}  # aedgate service --port runs it over the USB REPL


def _sources():
    return {p: p.read_text() for p in FIRMWARE.rglob("*.py")}


def _used_names(sources):
    """Every name the firmware's code refers to (calls, attributes, imports), not strings or
    comments."""
    used = {}
    for text in sources.values():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Name):
                n = node.id
            elif isinstance(node, ast.Attribute):
                n = node.attr
            elif isinstance(node, ast.alias):
                n = node.name
            else:
                continue
            used[n] = used.get(n, 0) + 1
    return used


def test_no_test_only_or_dead_functions_ship():
    used = _used_names(_sources())
    unused = []
    for name in MODULES:
        path = FIRMWARE / "aedgate" / (name + ".py")
        if not path.exists():
            continue  # test_no_missions_class checks the layout itself
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("__"):
                if node.name not in ENTRY_POINTS and not used.get(node.name):
                    unused.append("%s.%s" % (name, node.name))
    assert unused == [], unused


def test_constants_defined_once():
    seen = {}
    for path, text in _sources().items():
        for node in ast.parse(text).body:
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Name) and t.id.lstrip("_").isupper():
                        seen.setdefault((t.id.lstrip("_"), repr(ast.literal_eval(node.value))
                                         if isinstance(node.value, ast.Constant) else None), []).append(path.name)
    twice = {k: v for k, v in seen.items() if k[1] is not None and len(v) > 1}
    assert twice == {}, twice


def test_no_missions_class():
    assert not (FIRMWARE / "aedgate" / "mission.py").exists()
