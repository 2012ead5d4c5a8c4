"""The CA a technician hands to `aedgate provision` reaches the board as DER, the only form
MicroPython's TLS accepts (see tests/integration/test_tls.py)."""
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from host_tools.cli import CliError
from host_tools.commands.provision import ca_der


def _cert():
    k = ec.generate_private_key(ec.SECP256R1())
    n = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "registry-ca")])
    return (x509.CertificateBuilder().subject_name(n).issuer_name(n).public_key(k.public_key())
            .serial_number(1).not_valid_before(datetime.datetime(2020, 1, 1))
            .not_valid_after(datetime.datetime(2040, 1, 1)).sign(k, hashes.SHA256()))


def test_pem_and_der_both_become_der(tmp_path):
    c = _cert()
    der = c.public_bytes(serialization.Encoding.DER)
    (tmp_path / "ca.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca.der").write_bytes(der)
    assert ca_der(str(tmp_path / "ca.pem")) == der
    assert ca_der(str(tmp_path / "ca.der")) == der


def test_not_a_certificate_is_one_clear_error(tmp_path):
    (tmp_path / "x.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(CliError, match="not an X.509 certificate"):
        ca_der(str(tmp_path / "x.pem"))
    with pytest.raises(CliError, match="cannot read CA file"):
        ca_der(str(tmp_path / "missing.pem"))
