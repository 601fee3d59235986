"""A throw-away certificate authority and server certificate for 127.0.0.1, made at run time.

The google-genai SDK always connects with ``wss://`` in API-key mode, so the Gemini emulator has
to speak TLS. Nothing here is ever committed: :class:`LocalCertificate` generates a fresh CA and
a server certificate (``IP:127.0.0.1``, ``DNS:localhost``) into a private temporary directory and
deletes it on :meth:`LocalCertificate.cleanup`. Clients trust :attr:`LocalCertificate.ca_file`
(``ssl.create_default_context(cafile=...)`` or ``SSL_CERT_FILE``).

The chain is CA → leaf with the extensions OpenSSL's strict verification asks for (key usage,
subject/authority key identifiers, serverAuth), so it also verifies under Python 3.13's
``VERIFY_X509_STRICT`` default.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=2)
CLOCK_SKEW = datetime.timedelta(hours=1)  # backdate so a slightly slow client clock still verifies


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sipbot emulator"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _make_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("sipbot emulator CA")
    cert = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        _builder(_name("127.0.0.1"), ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _write(path: str, data: bytes) -> None:
    # 0600: the key is throw-away, but other users of a shared machine have no business reading it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


class LocalCertificate:
    """A CA and a server certificate for 127.0.0.1 / localhost in a private temporary directory.

    Attributes:
        directory: the temporary directory holding the files (removed by :meth:`cleanup`).
        ca_file: PEM of the CA certificate; this is what clients trust.
        cert_file: PEM of the server certificate followed by the CA (the chain a server presents).
        key_file: PEM of the server's private key (PKCS#8, unencrypted).
    """

    def __init__(self) -> None:
        ca_key, ca_cert = _make_ca()
        leaf_key, leaf_cert = _make_leaf(ca_key, ca_cert)
        self.directory = tempfile.mkdtemp(prefix="sipbot-emulator-tls-")
        self.ca_file = os.path.join(self.directory, "ca.pem")
        self.cert_file = os.path.join(self.directory, "server.pem")
        self.key_file = os.path.join(self.directory, "server.key")
        ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
        _write(self.ca_file, ca_pem)
        _write(self.cert_file, leaf_cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
        _write(
            self.key_file,
            leaf_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )

    def server_context(self) -> ssl.SSLContext:
        """An SSL context for a server presenting this certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A verifying client SSL context that trusts only this CA."""
        return ssl.create_default_context(cafile=self.ca_file)

    def cleanup(self) -> None:
        """Delete the files (idempotent)."""
        shutil.rmtree(self.directory, ignore_errors=True)
