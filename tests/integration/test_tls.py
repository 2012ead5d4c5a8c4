"""TLS with server verification: the firmware's own MQTT client against Mosquitto running the
production configuration's TLS listeners, under CPython and under the MicroPython unix port.

Every key and certificate is made here, in the test's tmp dir, with `cryptography`: a CA that
signs the broker's certificate (SAN IP 127.0.0.1 and DNS localhost) and a device certificate,
plus an unrelated CA that must not be trusted.

MicroPython facts this file pins (unix port 1.29-preview, Mbed TLS 3.6):
- `tls.SSLContext.load_verify_locations` takes the CA data as ONE POSITIONAL argument;
  `load_verify_locations(cadata=...)` raises TypeError("function doesn't take keyword
  arguments"). (The `ssl` module's Python wrapper takes keywords, but its SSLContext starts
  with verify_mode CERT_NONE.)
- cadata must be DER: PEM bytes (with or without a trailing NUL) raise ValueError("invalid
  cert") on this build.
- A failed verification raises ValueError (not OSError) from the first read/write, with
  mbedtls' text, e.g. "The certificate is not correctly signed by the trusted CA".
- The hostname is checked against server_hostname (asyncio.open_connection falls back to the
  host), and the certificate's validity dates are checked against the clock.
"""
import asyncio
import datetime
import ipaddress
import ssl
import subprocess

import pytest

from aedgate.mqtt import MQTTClient
from host_tools.commands import broker as broker_tool
from tests.fixtures import ROOT
from tests.integration.test_broker_acl import TLS_PW, Client, ProductionBroker

FIRMWARE = ROOT / "firmware"


def make_pki(d):
    """CA + broker certificate + device certificate (CN cab-cert) + an unrelated CA, as files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    pem, der = serialization.Encoding.PEM, serialization.Encoding.DER

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(cn, key, issuer=None, issuer_key=None, ca=False, san=None, eku=None):
        b = (x509.CertificateBuilder().subject_name(name(cn))
             .issuer_name(issuer.subject if issuer else name(cn)).public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(hours=1))
             .not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            b = b.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False), critical=True)
            b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        else:
            b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer_key.public_key()), False)
            b = b.add_extension(x509.ExtendedKeyUsage([eku]), False)
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), False)
        return b.sign(issuer_key or key, hashes.SHA256())

    def write(fname, data):
        (d / fname).write_bytes(data)
        return str(d / fname)

    def key_pem(k):
        return k.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    files = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("aedgate test CA", ca_key, ca=True)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = cert("unrelated CA", other_key, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = cert("broker", srv_key, ca, ca_key, eku=ExtendedKeyUsageOID.SERVER_AUTH,
               san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    dev_key = ec.generate_private_key(ec.SECP256R1())
    dev = cert("cab-cert", dev_key, ca, ca_key, eku=ExtendedKeyUsageOID.CLIENT_AUTH)
    files["ca"] = write("ca.pem", ca.public_bytes(pem))
    files["ca_der"] = write("ca.der", ca.public_bytes(der))
    files["other"] = write("other.pem", other.public_bytes(pem))
    files["other_der"] = write("other.der", other.public_bytes(der))
    files["cert"] = write("server.pem", srv.public_bytes(pem))
    files["key"] = write("server.key", key_pem(srv_key))
    files["dev_cert"] = write("cab-cert.pem", dev.public_bytes(pem))
    files["dev_key"] = write("cab-cert.key", key_pem(dev_key))
    return files


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    d = tmp_path_factory.mktemp("tlsbroker")
    pki = make_pki(d)
    b = ProductionBroker(d, tls=pki)
    for user, pw in (("cab-tls", "pw-tls"), ("registry", "pw-reg")):
        broker_tool.set_password(b.passwd, user, pw, hash_with="builtin")
    b.start()
    b.pki = pki
    registry = Client(b, "registry", "pw-reg")  # on the loopback plain listener
    registry.subscribe("aed/v1/#")
    b.registry = registry
    yield b
    registry.close()
    b.stop()


class Net:
    """What board.py's WiFi.open does once the link is up: asyncio streams, TLS passed through."""

    async def open(self, host, port, ssl=None, server_hostname=None):
        return await asyncio.open_connection(host, port, ssl=ssl, server_hostname=server_hostname)


def cpython_context(cafile, cert=None):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


async def connect_publish(port, ctx, server_hostname, topic, payload, cid="cab-tls",
                          user="cab-tls", password="pw-tls", host="127.0.0.1"):
    c = MQTTClient(cid, Net(), host, port, user=user, password=password, ssl=ctx,
                   server_hostname=server_hostname, timeout_ms=5000)
    try:
        await c.connect()
        run = asyncio.create_task(c.run())  # reads the PUBACK
        await c.publish(topic, payload, qos=1)
        await c.disconnect()
        await asyncio.gather(run, return_exceptions=True)  # (see the MicroPython script)
    finally:
        c.close()


def test_cpython_firmware_client_verifies_the_broker(tls_broker):
    port = tls_broker.ports[TLS_PW]
    good = cpython_context(tls_broker.pki["ca"])
    asyncio.run(connect_publish(port, good, "localhost", "aed/v1/cab-tls/status", b"cpy-dns"))
    asyncio.run(connect_publish(port, good, "127.0.0.1", "aed/v1/cab-tls/status", b"cpy-ip"))
    tls_broker.registry.got("aed/v1/cab-tls/status", b"cpy-dns")
    tls_broker.registry.got("aed/v1/cab-tls/status", b"cpy-ip")

    wrong_ca = cpython_context(tls_broker.pki["other"])
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        asyncio.run(connect_publish(port, wrong_ca, "localhost", "aed/v1/cab-tls/status", b"bad"))
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        asyncio.run(connect_publish(port, good, "broker.example", "aed/v1/cab-tls/status", b"bad"))
    assert not [m for m in tls_broker.registry.messages if m[1] == b"bad"]


def test_tls_listener_ties_the_client_id_to_the_user_name(tls_broker):
    """use_username_as_clientid holds on the cabinets' TLS listener too: cab-tls's password with
    the registry's client id neither disconnects the registry (connected on the loopback
    listener) nor gets its session."""
    registry = tls_broker.registry
    before = registry.disconnects
    ca = tls_broker.pki["ca"]
    evil = Client(tls_broker, "cab-tls", "pw-tls", client_id="registry",
                  port=tls_broker.ports[TLS_PW],
                  tls=lambda c: c.tls_set_context(cpython_context(ca)))
    try:
        assert evil.ok
        evil.publish("aed/v1/cab-tls/event", b"as-cab-tls")
        registry.got("aed/v1/cab-tls/event", b"as-cab-tls")  # it is cab-tls, and registry still reads
        assert registry.disconnects == before and registry.ok
    finally:
        evil.close()


MPY_SCRIPT = """\
import sys
sys.path.insert(0, %(firmware)r)
import asyncio
import tls
from aedgate.mqtt import MQTTClient


class Net:
    async def open(self, host, port, ssl=None, server_hostname=None):
        return await asyncio.open_connection(host, port, ssl=ssl, server_hostname=server_hostname)


def context(cafile):
    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = tls.CERT_REQUIRED
    with open(cafile, "rb") as f:
        ctx.load_verify_locations(f.read())  # positional: this build takes no keywords here
    return ctx


async def attempt(label, cafile, host, sni):
    c = MQTTClient("cab-tls", Net(), host, %(port)d, user="cab-tls", password="pw-tls",
                   ssl=context(cafile), server_hostname=sni, timeout_ms=5000)
    try:
        await c.connect()
        run = asyncio.create_task(c.run())
        await c.publish("aed/v1/cab-tls/status", "mpy-" + label, qos=1)  # PUBACK came back
        print(label, "connected")
        await c.disconnect()
        try:
            await run
        except Exception:
            pass  # the broker may close first after DISCONNECT: run() then says "closed"
    except Exception as e:
        print(label, "refused", type(e).__name__, str(e).strip())
    finally:
        c.close()


def probe(label, fn):
    try:
        fn()
        print(label, "accepted")
    except Exception as e:
        print(label, "raised", type(e).__name__, str(e).strip())


asyncio.run(attempt("good", %(ca_der)r, "127.0.0.1", "localhost"))
asyncio.run(attempt("good-ip", %(ca_der)r, "127.0.0.1", None))
asyncio.run(attempt("wrong-ca", %(other_der)r, "127.0.0.1", "localhost"))
asyncio.run(attempt("wrong-name", %(ca_der)r, "127.0.0.1", "broker.example"))
ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
print("default-verify", ctx.verify_mode == tls.CERT_REQUIRED)
pem = open(%(ca_pem)r, "rb").read()
probe("kwarg-cadata", lambda: ctx.load_verify_locations(cadata=open(%(ca_der)r, "rb").read()))
probe("pem-cadata", lambda: ctx.load_verify_locations(pem))
probe("pem-nul-cadata", lambda: ctx.load_verify_locations(pem + b"\\0"))
print("DONE")
"""


def run_micropython(micropython, script_path, text):
    script_path.write_text(text)
    res = subprocess.run([micropython, str(script_path)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    return dict(line.split(" ", 1) for line in res.stdout.splitlines() if " " in line), res.stdout


def test_micropython_firmware_client_verifies_the_broker(tls_broker, micropython, tmp_path):
    pki = tls_broker.pki
    got, out = run_micropython(micropython, tmp_path / "mpy_tls.py", MPY_SCRIPT % {
        "firmware": str(FIRMWARE), "port": tls_broker.ports[TLS_PW], "ca_der": pki["ca_der"],
        "other_der": pki["other_der"], "ca_pem": pki["ca"]})
    assert out.splitlines()[-1] == "DONE", out
    assert got["good"] == "connected" and got["good-ip"] == "connected", out
    tls_broker.registry.got("aed/v1/cab-tls/status", b"mpy-good")
    tls_broker.registry.got("aed/v1/cab-tls/status", b"mpy-good-ip")
    assert got["wrong-ca"].startswith("refused ValueError The certificate is not correctly "
                                      "signed by the trusted CA"), out
    assert got["wrong-name"].startswith("refused ValueError The certificate Common Name"), out
    assert not [m for m in tls_broker.registry.messages
                if m[1] in (b"mpy-wrong-ca", b"mpy-wrong-name")]
    # What this MicroPython build accepts (see the module docstring):
    assert got["default-verify"] == "True", out
    assert got["kwarg-cadata"].startswith("raised TypeError"), out
    assert got["pem-cadata"] == "raised ValueError invalid cert", out
    assert got["pem-nul-cadata"] == "raised ValueError invalid cert", out


BOARD_SCRIPT = """\
import sys
sys.path.insert(0, %(stubs)r)
sys.path.insert(0, %(firmware)r)
import asyncio
import board

ctx = board.Hardware.tls_context(None, {"broker_ca": %(ca)r})


class Net:
    async def open(self, host, port, ssl=None, server_hostname=None):
        return await asyncio.open_connection(host, port, ssl=ssl, server_hostname=server_hostname)


async def main():
    from aedgate.mqtt import MQTTClient
    c = MQTTClient("cab-tls", Net(), "localhost", %(port)d, user="cab-tls", password="pw-tls",
                   ssl=ctx, server_hostname="localhost", timeout_ms=5000)
    await c.connect()
    await c.disconnect()
    print("board-connected")

asyncio.run(main())
"""


@pytest.mark.parametrize("ca", ["ca_der"])
def test_board_tls_context_on_micropython(tls_broker, micropython, tmp_path, ca):
    """board.py's own tls_context(), run unchanged on the unix port (network is stubbed: the unix
    port has none; tls_context does not use it). The CA file is DER: this MicroPython's mbedTLS
    refuses PEM cadata, so provisioning converts the CA to DER (config broker_ca: ca.der)."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "network.py").write_text("STA_IF = 0\n")
    path = tls_broker.pki[ca]
    script = tmp_path / "board_tls.py"
    script.write_text(BOARD_SCRIPT % {
        "stubs": str(stubs), "firmware": str(FIRMWARE), "ca": path.lstrip("/"),
        "port": tls_broker.ports[TLS_PW]})
    res = subprocess.run([micropython, str(script)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "board-connected" in res.stdout, res.stdout + res.stderr
