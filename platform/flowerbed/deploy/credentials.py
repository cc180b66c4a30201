"""TLS and SuperNode-authentication credentials, made with `cryptography` (no openssl).

The coordinator makes a CA and the SuperLink's certificate (its host names and IPs in
the subject alternative names); each institution gets the CA certificate (public) and
makes its own SuperNode key pair, sending only the public key to be registered. The
keys are EC (SECP384R1) in OpenSSH format, as `flower-supernode` and
`flwr supernode register` read them.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 365


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    subject: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name | None,
    signer: ec.EllipticCurvePrivateKey,
    hosts: list[str] = (),
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(h) for h in hosts]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def supernode_key_pair(folder: Path, name: str) -> Path:
    """Write `<name>` (private, OpenSSH) and `<name>.pub` under folder; return the .pub path."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write(folder / name, private, private=True)
    _write(folder / f"{name}.pub", public + b"\n")
    return folder / f"{name}.pub"


def coordinator_credentials(folder: Path, hosts: list[str], institutions: list[str]) -> None:
    """CA, SuperLink certificate for `hosts`, and a key pair per institution.

    Writes `ca.crt`, `ca.key` (keep it offline), `superlink.crt`, `superlink.key`, and
    `supernodes/<name>[.pub]`. Institutions may instead make their own key pair with
    `flowerbed credentials supernode-key` and send only the public key.
    """
    if (folder / "ca.key").exists():
        raise FileExistsError(
            f"{folder / 'ca.key'} exists: credentials are made once; choose another folder "
            "or remove the old one on purpose"
        )
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = _certificate("flowerbed CA", ca_key.public_key(), None, ca_key)
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = _certificate(hosts[0], server_key.public_key(), ca_cert.subject, ca_key, hosts)
    _write(folder / "ca.key", _pem_key(ca_key), private=True)
    _write(folder / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(folder / "superlink.key", _pem_key(server_key), private=True)
    _write(folder / "superlink.crt", server_cert.public_bytes(serialization.Encoding.PEM))
    for name in institutions:
        supernode_key_pair(folder / "supernodes", name)
