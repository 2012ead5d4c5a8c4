# Runs firmware unit tests under the MicroPython unix port (pytest runs the same files under
# CPython). Usage: micropython mprun.py FIRMWARE_DIR TEST_FILE...
# Prints one line per test ("PASS name" / "FAIL name: error") and a closing count.
import sys

firmware, files = sys.argv[1], sys.argv[2:]
sys.path.insert(0, firmware)
passed = failed = 0
for path in files:
    folder, _, fname = path.rpartition("/")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    modname = fname[:-3]
    try:
        mod = __import__(modname)
    except Exception as e:
        print("FAIL %s: import: %s %r" % (modname, type(e).__name__, e))
        failed += 1
        continue
    for name in sorted(dir(mod)):
        if not name.startswith("test_"):
            continue
        fn = getattr(mod, name)
        try:
            fn()
            print("PASS %s::%s" % (modname, name))
            passed += 1
        except Exception as e:
            print("FAIL %s::%s: %s %r" % (modname, name, type(e).__name__, e))
            sys.print_exception(e)
            failed += 1
print("micropython: %d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
