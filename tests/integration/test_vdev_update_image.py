"""A release that carries the MicroPython image, end to end on the virtual device (issue 12):
built with `aedgate release build --image` from a small twin image (shims/_vdevota.py image():
the 0xE9 header and a version text), signed, offered over a real Mosquitto and served block by
block by the rollout's BlockServer. The real firmware downloads the slot files into slot a and
the image, checked per 4 KB block against its signed hash list (aedgate/image.py), into the next
OTA partition (the twin's esp32.Partition, ota_1); set_boot(), the slot switch, one reset: the
bootloader starts ota_1 on trial (PENDING_VERIFY) with slot a on trial; online and healthy, the
app marks the image valid and confirms the slot. A power cut in the middle of the image: after
power-on the cabinet resumes by itself at the first block not good on flash, and finishes."""
import hashlib
import time

from host_tools import releases
from simulator.vdev.device import OTA
from tests.integration.test_provision import DEVICE, fleet_key  # noqa: F401 (fixture)
from tests.integration.test_vdev import vdev_factory  # noqa: F401 (fixture)
from tests.integration.test_vdev_ota import _show
from tests.integration.test_vdev_update import Server, _events, _in_order, _provisioned, _type, cut_and_resume
from tests.fixtures import schema_validator

BLOCK = 4096
SIZE = 3 * BLOCK + 500     # four 4 KB blocks, the last one short: a few seconds over MQTT
IMAGE_VERSION = "4.0.0"


def _twin_image():
    # The twin boots no second MicroPython: an image is the 0xE9 header with its version text
    # (shims/_vdevota.py image()); chip id 0 at bytes 12-13 (ESP32), as `release build` checks.
    head = OTA.image(IMAGE_VERSION) + bytes(16)
    return head + hashlib.shake_256(b"twin image").digest(SIZE - len(head))


def _release(tmp_path):
    key = str(tmp_path / "release.key")
    public = releases.keygen(key)
    image = tmp_path / "micropython.bin"
    image.write_bytes(_twin_image())
    folder = tmp_path / "rel-0.2.0"
    manifest = releases.build(str(folder), "0.2.0", image=str(image))
    releases.sign_release(str(folder), key)
    return public, folder, manifest


def _otadata(v):
    """(app partition the bootloader starts, state of its otadata entry)."""
    with open(v.dir / OTA.OTADATA, "rb") as f:
        entries = OTA.read_entries(f)
    i = OTA.active(entries)
    return (None, None) if i is None else (OTA.app_of(entries[i]), entries[i][1])


def _done(backend, server, rel):
    server.offer(rel)
    backend.wait_for(_type("update_installed"), 60)
    backend.wait_for(_type("update_confirmed"), 60)
    _, st = backend.wait_for(lambda t, o: t == "aed/v1/%s/state" % DEVICE and o.get("fw_trial") is False
                             and o.get("fw_slot") == "a", 10)
    assert st["fw"] == "0.2.0", st


def _on_flash(v, manifest):
    """After the run: slot a holds every slot file as signed (not the image), ota_1 the image,
    and the bootloader starts ota_1, marked valid."""
    v.stop()
    data = _twin_image()
    assert (v.dir / "ota_1.img").read_bytes()[:SIZE] == data
    assert _otadata(v) == ("ota_1", OTA.VALID)
    for path, size, digest in manifest["files"]:
        if path == "micropython.bin":
            assert not (v.flash / ("a/" + path)).exists()
        else:
            assert hashlib.sha256((v.flash / ("a/" + path)).read_bytes()).digest() == digest, path


def test_a_release_with_an_image_goes_to_the_next_ota_partition_boots_on_trial_and_is_confirmed(
        vdev_factory, mosquitto, backend, fleet_key, tmp_path):  # noqa: F811
    public, folder, manifest = _release(tmp_path)
    assert [f[0] for f in manifest["files"]][-2:] == ["micropython.bin.sha", "micropython.bin"]
    v = _provisioned(vdev_factory, mosquitto, backend, fleet_key, public)
    assert _otadata(v) == (None, None)      # as esptool left it: ota_0, otadata blank
    server = Server(mosquitto.port, folder)
    try:
        t0 = time.monotonic()
        _done(backend, server, server.rels[0])
        print("offer to confirmed %.1f s, %d gets" % (time.monotonic() - t0, len(server.gets)))
    finally:
        server.close()
    # What the board runs now, asked at its REPL (Ctrl-C stops the app): the new image, from
    # ota_1, which is also the one the next reset boots.
    assert _show(v.path, resume=True) == ("ota_1", "ota_1", IMAGE_VERSION)
    gets = [g for _, g in server.gets]
    image = [g["offset"] for g in gets if g["file"] == "micropython.bin"]
    # The hash list before the image's blocks, each image block asked once, in order.
    names = [g["file"] for g in gets]
    assert names.index("micropython.bin.sha") < names.index("micropython.bin")
    assert image == list(range(0, SIZE, 1536)), image
    assert server.blocks.refused == {}
    # One deliberate reset (the update's) after provisioning's: the bootloader took ota_1.
    assert v.log().count("reset: machine.reset()") == 2
    evs = _events(backend)
    types = _in_order(evs, ("boot", "update_offered", "update_verified", "update_downloaded",
                            "update_installed", "update_trial", "update_confirmed"))
    assert types.count("boot") == 2 and "update_refused" not in types and "update_rolled_back" not in types
    check = schema_validator("event")
    for e in evs:
        assert list(check.iter_errors(e)) == [], e
    by = {e["type"]: e for e in evs}
    assert by["update_downloaded"]["bytes"] == sum(f[1] for f in manifest["files"])
    for k in ("update_installed", "update_trial", "update_confirmed"):
        assert (by[k]["version"], by[k]["slot"]) == ("0.2.0", "a"), by[k]
    _on_flash(v, manifest)


def test_a_power_cut_in_the_middle_of_the_image_resumes_at_the_first_block_not_on_flash(
        vdev_factory, mosquitto, backend, fleet_key, tmp_path):  # noqa: F811
    public, folder, manifest = _release(tmp_path)
    v = _provisioned(vdev_factory, mosquitto, backend, fleet_key, public)
    server = Server(mosquitto.port, folder)
    # The cut while the board waits for a block in the image's second 4 KB block; it resumes
    # from the image's first block that does not read back good: block 0 is, block 1 is half
    # written.
    before, after = cut_and_resume(v, server, backend,
                                   lambda g: g["file"] == "micropython.bin" and g["offset"] > BLOCK, "the image")
    cut = before[-1]
    assert cut["offset"] > BLOCK and after[0]["file"] == "micropython.bin", (cut, after[:3])
    assert after[0]["offset"] == BLOCK, after[:3]
    assert [g["file"] for g in after] == ["micropython.bin"] * len(after), after   # nothing else again
    evs = _events(backend)
    types = _in_order(evs, ("update_offered", "update_verified", "update_downloaded",
                            "update_installed", "update_trial", "update_confirmed"))
    assert types.count("update_offered") == 1 and types.count("boot") == 3, types
    assert [e["cause"] for e in evs if e["type"] == "boot"][1] == "power_on"
    _on_flash(v, manifest)
