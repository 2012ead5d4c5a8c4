"""Runs every firmware unit test file in tests/firmware/ under the real MicroPython unix port.

pytest runs the same files under CPython; here each test function becomes one pytest test whose
result is what MicroPython reported for it.
"""
import ast
import subprocess
from pathlib import Path

import pytest

from tests.fixtures import ROOT

FILES = sorted((ROOT / "tests" / "firmware").glob("test_*.py"))
_results = {}


def _tests_in(path):
    tree = ast.parse(path.read_text())
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]


def _run_file(micropython, path):
    if path not in _results:
        proc = subprocess.run(
            [micropython, "-X", "heapsize=8M", str(ROOT / "tests" / "firmware" / "mprun.py"),
             str(ROOT / "firmware"), str(path)],
            capture_output=True, text=True, timeout=600, cwd=str(ROOT))
        _results[path] = proc
    return _results[path]


@pytest.mark.parametrize("path,name", [(p, n) for p in FILES for n in _tests_in(p)],
                         ids=lambda v: v.name if isinstance(v, Path) else v)
def test_firmware_on_micropython(micropython, path, name):
    proc = _run_file(micropython, path)
    key = "%s::%s" % (path.stem, name)
    lines = proc.stdout.splitlines()
    if ("PASS " + key) in lines:
        return
    detail = [l for l in lines if key in l or l.startswith("FAIL %s:" % path.stem)]
    pytest.fail("under MicroPython: %s\n%s\n%s" % (detail or "no result", proc.stdout[-3000:], proc.stderr[-2000:]))
