# Heap probe for tests/test_release_heap.py: run under the MicroPython unix port with a given
# -X heapsize, it loads the release modules (compiled .mpy, as on a board) and a signed release,
# then, in mode "verify", checks it. Prints "ok" when everything fit in the heap.
# Usage: micropython -X heapsize=N heap_release.py MPY_DIR RELEASE_FILE PUBLIC_KEY_HEX MODE
import sys

mpy_dir, path, pub_hex, mode = sys.argv[1:5]
sys.path.insert(0, mpy_dir)
import gc  # noqa: E402

from aedgate import release  # noqa: E402
from aedgate.compat import asyncio  # noqa: E402

with open(path, "rb") as f:
    raw = f.read()
pub = bytes.fromhex(pub_hex)
keys = [(release.key_id(pub), pub)]
if mode == "kept":
    # What a verification leaves in the heap once it is over (release.verify drops the
    # signature modules it loaded): bytes still allocated after a collection, against before.
    gc.collect()
    before = gc.mem_alloc()
    m = asyncio.run(release.verify(raw, keys))
    m = None
    gc.collect()
    print("kept", gc.mem_alloc() - before, "loaded", "aedgate.ed25519" in sys.modules)
    raise SystemExit
# The signature modules count as loaded (verify imports them; they are its code, not its work).
from aedgate import ed25519, sha512  # noqa: E402,F401
gc.collect()
if mode == "verify":
    m = asyncio.run(release.verify(raw, keys))
    assert len(m["files"]) > 20
print("ok")
