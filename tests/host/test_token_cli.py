"""`aedgate keys ...` and `aedgate token ...`: the happy paths and the error paths (exit status
non-zero, exactly one line on stderr)."""
from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aedgate import token as fw_token  # firmware verifier, on sys.path via tests/conftest.py
from host_tools import fleetkeys
from host_tools.cli import main

MASTER = bytes(range(32))
DOC_KEY_CAB1 = "fe3568814b3a44a6621ea8aec9f8d607b814996407006d6859387615960f2199"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code: int, err: str) -> str:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("aedgate: error: ")
    return lines[0]


@pytest.fixture
def fleet_key(tmp_path: Path) -> Path:
    p = tmp_path / "fleet.key"
    p.write_text(MASTER.hex() + "\n")
    return p


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_keys_new_writes_0600_and_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    out_file = tmp_path / "new.key"
    code, out, err = run(capsys, "keys", "new", "--out", str(out_file))
    assert code == 0
    text = out_file.read_text()
    assert len(text) == 65 and text.endswith("\n") and len(bytes.fromhex(text.strip())) == 32
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    assert text.strip() not in out + err  # the key is never printed
    code, out, err = run(capsys, "keys", "new", "--out", str(out_file))
    assert "refusing to overwrite" in one_error_line(code, err)
    assert out_file.read_text() == text
    # Two new keys differ.
    run(capsys, "keys", "new", "--out", str(tmp_path / "other.key"))
    assert (tmp_path / "other.key").read_text() != text


def test_keys_derive_matches_protocol_example(fleet_key: Path, capsys) -> None:
    code, out, err = run(capsys, "keys", "derive", "--fleet-key", str(fleet_key), "--device", "cab-0001")
    assert code == 0
    assert out.strip() == DOC_KEY_CAB1
    assert "kid " + fleetkeys.key_id(bytes.fromhex(DOC_KEY_CAB1)).hex() in err


def test_token_mint_then_verify_on_firmware(fleet_key: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run(capsys, "token", "mint", "--fleet-key", str(fleet_key), "--device", "cab-0001",
                         "--mission", "M-2291", "--window", "120", "--ttl", "60")
    assert code == 0
    raw = _b64(out.strip())
    key = bytes.fromhex(DOC_KEY_CAB1)
    got = fw_token.verify(raw, "cab-0001", [(fleetkeys.key_id(key), key)], int(time.time()))
    assert got["mission"] == "M-2291" and got["window_s"] == 120 and got["exp"] - got["iat"] == 60
    # --out writes raw bytes; --kid sets a provisioned key id.
    path = tmp_path / "t.cbor"
    code, out, err = run(capsys, "token", "mint", "--fleet-key", str(fleet_key), "--device", "cab-0001",
                         "--mission", "M-1", "--window", "30", "--kid", "k1", "--out", str(path))
    assert code == 0 and out == ""
    got = fw_token.verify(path.read_bytes(), "cab-0001", [(b"k1", key)], int(time.time()))
    assert got["kid"] == b"k1"


def test_token_inspect(fleet_key: Path, tmp_path: Path, capsys) -> None:
    code, out, _ = run(capsys, "token", "mint", "--fleet-key", str(fleet_key), "--device", "cab-0007",
                       "--mission", "M-5", "--window", "90")
    b64 = out.strip()
    code, out, err = run(capsys, "token", "inspect", b64, "--fleet-key", str(fleet_key))
    assert code == 0, err
    assert "verdict   valid" in out and "mission = 'M-5'" in out and "alg = 5 (HMAC 256/256)" in out
    code, out, err = run(capsys, "token", "inspect", b64)
    assert code == 0 and "verdict   unchecked" in out
    raw = bytearray(_b64(b64))
    raw[-1] ^= 1
    path = tmp_path / "bad.cbor"
    path.write_bytes(bytes(raw))
    code, out, err = run(capsys, "token", "inspect", "--in", str(path), "--fleet-key", str(fleet_key),
                         "--json")
    assert code == 1
    report = json.loads(out)
    assert report["verdict"] == "invalid" and report["mac"] == "invalid"
    assert report["claims"]["aud"]["value"] == "cab-0007"
    # Hex input works too; garbage is reported, not a traceback.
    code, out, err = run(capsys, "token", "inspect", bytes(raw).hex())
    assert code == 0  # MAC unchecked without a key
    code, out, err = run(capsys, "token", "inspect", "AAAA")
    assert code == 1 and "malformed" in out


@pytest.mark.parametrize("content,needle", [
    (None, "does not exist"),
    ("zz" * 32, "not hexadecimal"),
    ("00" * 31, "expected 64 hex characters"),
    ("", "expected 64 hex characters"),
])
def test_bad_key_files(tmp_path: Path, capsys, content: str | None, needle: str) -> None:
    path = tmp_path / "k"
    if content is not None:
        path.write_text(content)
    for argv in (["keys", "derive", "--fleet-key", str(path), "--device", "cab-0001"],
                 ["token", "mint", "--fleet-key", str(path), "--device", "cab-0001",
                  "--mission", "M", "--window", "10"],
                 ["token", "inspect", "AAAA", "--fleet-key", str(path)]):
        code, out, err = run(capsys, *argv)
        assert needle in one_error_line(code, err), argv


@pytest.mark.parametrize("device", ["cab/0001", "cab+1", "#", "a" * 65, "", "cab 1", "cäb"])
def test_bad_device_ids(fleet_key: Path, capsys, device: str) -> None:
    for sub in (["keys", "derive"], ["token", "mint", "--mission", "M", "--window", "10"]):
        code, out, err = run(capsys, *sub, "--fleet-key", str(fleet_key), "--device", device)
        assert "bad device id" in one_error_line(code, err)


def test_bad_mint_arguments(fleet_key: Path, capsys) -> None:
    base = ["token", "mint", "--fleet-key", str(fleet_key), "--device", "cab-0001"]
    for extra, needle in ((["--mission", "", "--window", "10"], "mission"),
                          (["--mission", "M", "--window", "0"], "window"),
                          (["--mission", "M", "--window", "10", "--ttl", "100000"], "ttl"),
                          (["--mission", "M", "--window", "10", "--kid", "hex:zz"], "kid")):
        code, out, err = run(capsys, *base, *extra)
        assert needle in one_error_line(code, err)


def test_help_teaches_with_examples(capsys) -> None:
    for argv in (["keys", "new", "--help"], ["keys", "derive", "--help"],
                 ["token", "mint", "--help"], ["token", "inspect", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "example" in out and "aedgate " + argv[0] in out


def test_installed_command_in_a_subprocess(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "aedgate"
    assert exe.exists()
    key = tmp_path / "fleet.key"
    env = dict(os.environ)
    p = subprocess.run([str(exe), "keys", "new", "--out", str(key)], capture_output=True, text=True,
                       env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([str(exe), "token", "mint", "--fleet-key", str(key), "--device", "cab-0001",
                        "--mission", "M-1", "--window", "60"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert len(_b64(p.stdout.strip())) < 512
    p = subprocess.run([str(exe), "token", "mint", "--fleet-key", str(tmp_path / "missing"),
                        "--device", "cab-0001", "--mission", "M-1", "--window", "60"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and "does not exist" in p.stderr
