"""The production path over TLS: host tools reach an mqtts:// Mosquitto with --ca and a
password file, and an untrusted broker certificate is one line, not a retry loop."""
import subprocess
import sys

import pytest

from host_tools.backend import BrokerError, BrokerOptions, FleetSubscriber
from tests.backend.conftest import PASSWORDS
from tests.fixtures import ROOT, Mosquitto, free_port, require_tool
from tests.integration.test_tls import make_pki


@pytest.fixture
def tls_mosquitto(tmp_path):
    passwd = require_tool("mosquitto_passwd", "apt-get install mosquitto (it ships mosquitto_passwd)")
    pwfile = tmp_path / "passwd"
    subprocess.run([passwd, "-b", "-c", str(pwfile), "registry", PASSWORDS["registry"]], check=True)
    pki = make_pki(tmp_path)
    port = free_port()
    b = Mosquitto(tmp_path, extra_conf="password_file %s\nuser root\nlistener %d 127.0.0.1\ncafile %s\n"
                  "certfile %s\nkeyfile %s\n" % (pwfile, port, pki["ca"], pki["cert"], pki["key"]))
    b.conf.write_text(b.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    b.start()
    b.tls_url = "mqtts://127.0.0.1:%d" % port
    b.pki = pki
    yield b
    b.stop()


def test_library_and_monitor_over_mqtts_with_ca_and_password_file(tls_mosquitto, tmp_path):
    b = tls_mosquitto
    feed = FleetSubscriber([BrokerOptions(b.tls_url, b.pki["ca"], "registry", PASSWORDS["registry"])],
                           "t-tls").start()
    feed.close()
    pw = tmp_path / "reg.pw"
    pw.write_text(PASSWORDS["registry"] + "\n")
    r = subprocess.run([sys.executable, "-m", "host_tools.cli", "monitor", "--broker", b.tls_url, "--ca",
                        b.pki["ca"], "--user", "registry", "--password-file", str(pw), "--plain",
                        "--duration", "1"], cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_untrusted_broker_certificate_is_one_line(tls_mosquitto, tmp_path):
    b = tls_mosquitto
    with pytest.raises(BrokerError, match="TLS certificate not trusted"):
        FleetSubscriber([BrokerOptions(b.tls_url, b.pki["other"], "registry", "x")], "t-tls2").start()
    r = subprocess.run([sys.executable, "-m", "host_tools.cli", "registry", "ingest", "--db", str(tmp_path / "r.db"),
                        "--broker", b.tls_url, "--ca", b.pki["other"], "--user", "registry"],
                       cwd=str(ROOT), capture_output=True, text=True, timeout=60,
                       env={"AEDGATE_BROKER_PASSWORD": PASSWORDS["registry"], "PATH": "/usr/bin:/bin"})
    assert r.returncode == 3
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "TLS certificate not trusted" in lines[0] and "as registry" in lines[0]
