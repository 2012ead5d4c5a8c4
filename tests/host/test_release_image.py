"""`aedgate release build --image`: the MicroPython app image and its block hash list in a signed
release (docs/updates-install.md "The MicroPython image"), checked by `release inspect`; images
no cabinet could boot are refused at build time with one line."""
from __future__ import annotations

import hashlib
import shutil

import cbor2
import pytest

from host_tools.cli import main
from host_tools.releases import APP_PARTITION_BYTES, IMAGE_BLOCK

SIZE = 1_500_000  # about what an ESP32_GENERIC-OTA micropython.bin weighs


def _app_image(size=SIZE, chip=0):
    """An ESP32 app image as esptool lays one out: header magic 0xE9, segment count, SPI mode
    and size, entry point, then chip_id (little-endian) at byte 12; the rest pseudo-random."""
    head = bytes([0xE9, 4, 2, 0x20]) + (0x400D1234).to_bytes(4, "little") + bytes([0xEE, 0, 0, 0]) \
        + chip.to_bytes(2, "little") + bytes(10)
    body = hashlib.shake_256(b"micropython").digest(size - len(head))
    return head + body


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
def image_release(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgrel")
    key = d / "release.key"
    assert main(["release", "keygen", "--out", str(key)]) == 0
    img = d / "micropython.bin"
    img.write_bytes(_app_image())
    rel = d / "rel-0.3.0"
    assert main(["release", "build", "--version", "0.3.0", "--created", "1795000000",
                 "--image", str(img), "--out", str(rel)]) == 0
    assert main(["release", "sign", "--key", str(key), str(rel)]) == 0
    return rel, key, str(key) + ".pub"


def test_build_adds_the_image_and_its_hash_list_and_inspect_checks_them(image_release, capsys):
    rel, key, pub = image_release
    m = cbor2.loads((rel / "manifest.cbor").read_bytes())
    paths = [f[0] for f in m["files"]]
    assert paths[-2:] == ["micropython.bin.sha", "micropython.bin"]  # the list first
    image = (rel / "files" / "micropython.bin").read_bytes()
    hashes = (rel / "files" / "micropython.bin.sha").read_bytes()
    assert image == _app_image()
    blocks = (SIZE + IMAGE_BLOCK - 1) // IMAGE_BLOCK
    assert len(hashes) == 32 * blocks == 32 * 367
    assert hashes[-32:] == hashlib.sha256(image[(blocks - 1) * IMAGE_BLOCK:]).digest()  # unpadded
    for i in (0, 100, blocks - 2):
        assert hashes[32 * i:32 * i + 32] == hashlib.sha256(image[i * IMAGE_BLOCK:(i + 1) * IMAGE_BLOCK]).digest()
    assert m["files"][-1][1] == SIZE and m["files"][-1][2] == hashlib.sha256(image).digest()
    assert len((rel / "release.cose").read_bytes()) < 8192
    code, out, err = run(capsys, "release", "inspect", rel, "--key", pub)
    assert code == 0, err
    assert "micropython.bin.sha" in out and "%d files match" % len(paths) in out


def test_inspect_refuses_a_hash_list_that_does_not_match_the_image(image_release, tmp_path, capsys):
    # A hash list re-made for a different image and the manifest re-signed with it: every file
    # matches its manifest entry, but a cabinet would drop block 5 again and again.
    rel, key, pub = image_release
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copytree(rel / "files", bad / "files")
    hashes = bytearray((bad / "files" / "micropython.bin.sha").read_bytes())
    hashes[5 * 32] ^= 1
    (bad / "files" / "micropython.bin.sha").write_bytes(bytes(hashes))
    m = cbor2.loads((rel / "manifest.cbor").read_bytes())
    m["files"][-2][2] = hashlib.sha256(bytes(hashes)).digest()
    (bad / "manifest.cbor").write_bytes(cbor2.dumps(m))
    assert main(["release", "sign", "--key", str(key), str(bad)]) == 0
    capsys.readouterr()
    code, out, err = run(capsys, "release", "inspect", bad, "--key", pub)
    line = one_error_line(code, err, 1)
    assert "micropython.bin.sha does not match micropython.bin: block 5 (offset 20480)" in line
    # And a manifest with the image but no list is refused even without the files.
    del m["files"][-2]
    (bad / "manifest.cbor").write_bytes(cbor2.dumps(m))
    assert main(["release", "sign", "--key", str(key), str(bad)]) == 0
    capsys.readouterr()
    code, out, err = run(capsys, "release", "inspect", bad / "release.cose", "--key", pub)
    assert "come together" in one_error_line(code, err, 1)


def test_images_no_cabinet_could_boot_are_refused_at_build(tmp_path, capsys):
    cases = {
        "not.bin": (b"\x00" + _app_image(8192)[1:], "not an ESP32 app image"),
        "s3.bin": (_app_image(8192, chip=9), "chip id 9, not esp32"),
        "big.bin": (_app_image(APP_PARTITION_BYTES + 1), "an app partition holds 1572864"),
    }
    combined = bytearray(_app_image(0x20000))
    combined[0x7000:0x7002] = combined[0x7020:0x7022] = b"\xaa\x50"
    cases["combined.bin"] = (bytes(combined), "combined image for esptool")
    for name, (data, says) in cases.items():
        (tmp_path / name).write_bytes(data)
        code, out, err = run(capsys, "release", "build", "--version", "0.3.0", "--image",
                             tmp_path / name, "--out", tmp_path / ("out-" + name))
        assert says in one_error_line(code, err), (name, err)
        assert not (tmp_path / ("out-" + name)).exists()
    code, out, err = run(capsys, "release", "build", "--version", "0.3.0", "--image",
                         tmp_path / "missing.bin", "--out", tmp_path / "out-missing")
    assert "cannot read image" in one_error_line(code, err)
