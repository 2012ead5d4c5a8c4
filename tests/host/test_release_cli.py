"""`aedgate release keygen|build|sign|inspect`: the whole flow on the real firmware with the real
mpy-cross, and every error path (non-zero exit, exactly one line on stderr)."""
from __future__ import annotations

import re
import shutil
import stat
from pathlib import Path

import cbor2
import pytest

from host_tools.cli import main

_RUN_ONCE: dict[str, Path] = {}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code, err, expect_code=2):
    assert code == expect_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("aedgate: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def signed_release(tmp_path_factory):
    """keygen, build and sign once: (folder, private key, public key file)."""
    d = tmp_path_factory.mktemp("release")
    key = d / "release.key"
    assert main(["release", "keygen", "--out", str(key)]) == 0
    rel = d / "rel-0.2.0"
    assert main(["release", "build", "--version", "0.2.0", "--min-version", "0.1.0",
                 "--created", "1795000000", "--out", str(rel)]) == 0
    assert main(["release", "sign", "--key", str(key), str(rel)]) == 0
    return rel, key, Path(str(key) + ".pub")


def test_keygen_writes_0600_key_and_refuses_to_overwrite(tmp_path, capsys):
    key = tmp_path / "r.key"
    code, out, err = run(capsys, "release", "keygen", "--out", key)
    assert code == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    seed = key.read_text()
    assert seed.startswith("-----BEGIN PRIVATE KEY-----") and seed not in out + err
    pub = Path(str(key) + ".pub").read_text().strip()
    assert '"key": "%s"' % pub in out and '"kid": "' in out
    code, out, err = run(capsys, "release", "keygen", "--out", key)
    assert "refusing to overwrite" in one_error_line(code, err)
    assert key.read_text() == seed


def test_build_sign_inspect_flow(signed_release, capsys):
    rel, key, pub = signed_release
    m = cbor2.loads((rel / "manifest.cbor").read_bytes())
    assert m["version"] == "0.2.0" and m["board"] == "esp32" and m["min_version"] == "0.1.0"
    assert m["mpy"] == 6
    paths = [f[0] for f in m["files"]]
    assert "boot.py" in paths and "main.py" in paths and "aedgate/ed25519.mpy" in paths
    for path, size, _ in m["files"]:
        data = (rel / "files" / path).read_bytes()
        assert len(data) == size
        if path.endswith(".mpy"):
            assert data[:2] == b"M\x06"
    code, out, err = run(capsys, "release", "inspect", rel, "--key", pub)
    assert code == 0, err
    assert "0.2.0" in out and "OK: signature valid" in out and "%d files match" % len(paths) in out
    # A file given directly, with the key as hex and a second (unused) key.
    code, out, err = run(capsys, "release", "inspect", rel / "release.cose", "--key",
                         pub.read_text().strip(), "--key", "11" * 32)
    assert code == 0, err


def test_inspect_refuses_wrong_key_tampering_and_changed_files(signed_release, tmp_path, capsys):
    rel, key, pub = signed_release
    code, out, err = run(capsys, "release", "inspect", rel, "--key", "22" * 32)
    assert "unknown_kid" in one_error_line(code, err, 1)
    copy = tmp_path / "copy"
    shutil.copytree(rel, copy)
    raw = bytearray((copy / "release.cose").read_bytes())
    raw[raw.find(b"0.2.0") + 2] ^= 1
    (copy / "release.cose").write_bytes(bytes(raw))
    code, out, err = run(capsys, "release", "inspect", copy, "--key", pub)
    assert "bad_signature" in one_error_line(code, err, 1)
    shutil.copy(rel / "release.cose", copy / "release.cose")
    target = copy / "files" / "aedgate" / "app.mpy"
    target.write_bytes(target.read_bytes() + b"\x00")
    code, out, err = run(capsys, "release", "inspect", copy, "--key", pub)
    assert "aedgate/app.mpy" in one_error_line(code, err, 1)
    (copy / "release.cose").write_bytes(bytes(raw[:100]))
    code, out, err = run(capsys, "release", "inspect", copy, "--key", pub)
    assert "malformed" in one_error_line(code, err, 1)


def test_inspect_usage_errors(signed_release, tmp_path, capsys):
    rel, key, pub = signed_release
    code, out, err = run(capsys, "release", "inspect", tmp_path / "none.cose", "--key", pub)
    assert "cannot read" in one_error_line(code, err)
    code, out, err = run(capsys, "release", "inspect", rel, "--key", "zz")
    assert "public key" in one_error_line(code, err)
    code, out, err = run(capsys, "release", "inspect", rel, "--key", key)  # the private key
    line = one_error_line(code, err)
    assert "does not hold a public key" in line and "PRIVATE" not in line


def test_build_errors(tmp_path, capsys):
    for args, needle in ((["--version", "1.2"], "MAJOR.MINOR.PATCH"),
                         (["--version", "0.2.0", "--board", "esp8266"], "known boards"),
                         (["--version", "0.2.0", "--may-replace", "latest"], "MAJOR.MINOR.PATCH")):
        code, out, err = run(capsys, "release", "build", "--out", tmp_path / "x", *args)
        assert needle in one_error_line(code, err)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "old").write_text("x")
    code, out, err = run(capsys, "release", "build", "--version", "0.2.0", "--out", busy)
    assert "not an empty folder" in one_error_line(code, err)
    code, out, err = run(capsys, "release", "build", "--version", "0.2.0", "--out", busy / "old")
    assert "not an empty folder" in one_error_line(code, err)


def test_sign_errors(signed_release, tmp_path, capsys):
    rel, key, pub = signed_release
    loose = tmp_path / "loose.key"
    loose.write_bytes(key.read_bytes())
    loose.chmod(0o644)
    code, out, err = run(capsys, "release", "sign", "--key", loose, rel)
    assert "chmod 600" in one_error_line(code, err)
    bad = tmp_path / "bad.key"
    bad.write_text("11" * 32 + "\n")  # a public key, not the private one
    bad.chmod(0o600)
    code, out, err = run(capsys, "release", "sign", "--key", bad, rel)
    assert "not a release key" in one_error_line(code, err)
    code, out, err = run(capsys, "release", "sign", "--key", key, tmp_path / "nowhere")
    assert "cannot read" in one_error_line(code, err)
    # A manifest the cabinets would refuse is never signed.
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "manifest.cbor").write_bytes(cbor2.dumps({"format": 1, "version": "0.2.0"}))
    code, out, err = run(capsys, "release", "sign", "--key", key, odd)
    assert "would refuse it: bad_manifest" in one_error_line(code, err)
    assert not (odd / "release.cose").exists()


def test_help_teaches_with_examples(capsys):
    for argv in (["release", "--help"], ["release", "keygen", "--help"],
                 ["release", "build", "--help"], ["release", "sign", "--help"],
                 ["release", "inspect", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "example" in out and "aedgate release " in out, argv


def test_source_build_ships_py_files_and_no_mpy_format(signed_release, tmp_path, capsys):
    """`--source` (simulator releases): every file as it is in firmware/, no `mpy` in the
    manifest, and it signs and inspects like any release."""
    _, key, pub = signed_release
    rel = tmp_path / "src-0.2.0"
    code, out, err = run(capsys, "release", "build", "--source", "--version", "0.2.0", "--out", rel)
    assert code == 0, err
    m = cbor2.loads((rel / "manifest.cbor").read_bytes())
    assert "mpy" not in m
    paths = [f[0] for f in m["files"]]
    assert "aedgate/app.py" in paths and not any(p.endswith(".mpy") for p in paths)
    from host_tools.firmware import FIRMWARE
    assert (rel / "files" / "aedgate" / "app.py").read_bytes() == (FIRMWARE / "aedgate" / "app.py").read_bytes()
    assert run(capsys, "release", "sign", "--key", key, rel)[0] == 0
    code, out, err = run(capsys, "release", "inspect", rel, "--key", pub)
    assert code == 0 and "files match" in out, err


def test_build_sets_the_package_version_to_the_release_version(tmp_path, capsys):
    """The cabinet reports `fw` from aedgate/__init__.py's VERSION line, and a rollout counts it
    done only when `fw` names the release: a release built as 0.2.0 from a tree that says 0.1.0
    ran 0.2.0 on the vdev yet reported 0.1.0 (test_vdev_update.py failed on that). Both the
    source and the compiled build carry the release's version; the rest of the file is kept."""
    from host_tools.firmware import FIRMWARE
    original = (FIRMWARE / "aedgate" / "__init__.py").read_text()
    rel = tmp_path / "src-7.8.9"
    code, out, err = run(capsys, "release", "build", "--source", "--version", "7.8.9", "--out", rel)
    assert code == 0, err
    text = (rel / "files" / "aedgate" / "__init__.py").read_text()
    assert 'VERSION = "7.8.9"' in text and text.count("VERSION = ") == 1
    assert text.replace('"7.8.9"', "X") == re.sub(r'"\d+\.\d+\.\d+"', "X", original, count=1)
    rel = tmp_path / "mpy-7.8.9"
    code, out, err = run(capsys, "release", "build", "--version", "7.8.9", "--out", rel)
    assert code == 0, err
    compiled = (rel / "files" / "aedgate" / "__init__.mpy").read_bytes()
    assert b"7.8.9" in compiled and b"0.1.0" not in compiled
    assert str(tmp_path).encode() not in compiled and b"aedgate/__init__.py" in compiled  # mpy-cross -s
    # A package without a VERSION line cannot be given the release's version: one-line error.
    fw = tmp_path / "fw"
    shutil.copytree(FIRMWARE, fw, ignore=shutil.ignore_patterns("__pycache__"))
    (fw / "aedgate" / "__init__.py").write_text("# no version here\n")
    from host_tools import releases
    with pytest.raises(releases.ReleaseToolError, match="no line VERSION"):
        releases.build(str(tmp_path / "none"), "1.0.0", firmware=fw, source=True)
