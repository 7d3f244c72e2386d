"""`fedtune certs`: the TLS and node-authentication material of a deployment.

A self-signed CA, the SuperLink's certificate (signed by the CA, with a SAN for every name
or address that SuperNodes and `flwr` use to reach it) and one ECDSA P-384 key pair per
SuperNode in OpenSSH format (what `flwr supernode register` and
`flower-supernode --auth-supernode-private-key` read), plus the shared secret that
protects the Runtime APIs from foreign SuperExecs (`--superexec-auth-secret-file`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedtune.atomic import create_file, make_dir

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1", "superlink")
"""SANs always in the server certificate (`superlink` is its Docker Compose service name)."""
VALID_DAYS = 365


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """A new file (FileExistsError if anything, a link included, is there); a private one
    is 0600 from the start."""
    create_file(path, data, 0o600 if private else 0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None = None,
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
    names: tuple[str, ...] = (),
) -> x509.Certificate:
    """A CA certificate (no issuer) or a server certificate for `names`, signed by the CA."""
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    is_ca = issuer is None
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name if is_ca else issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(n) for n in names]), critical=False
        )
    return builder.sign(key if is_ca else issuer_key, hashes.SHA384())


def node_key_pair(path: Path) -> None:
    """`path` (OpenSSH private key) and `path.pub`: a SuperNode's ECDSA P-384 key pair."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write(path, private, private=True)
    _write(path.with_name(path.name + ".pub"), public + b"\n")


def make_certs(out: Path, nodes: int, names: tuple[str, ...] = ()) -> list[Path]:
    """Write into `out`: ca.crt/ca.key, server.pem/server.key (SANs: DEFAULT_NAMES plus
    `names`), superexec.secret, and node-<i>/node-<i>.pub for i in 0..nodes-1 (the
    nodes' partition ids). Return the files written. `out` may exist (not as a link); a
    file already there is an error, never replaced."""
    if make_dir(out):
        os.chmod(out, 0o755)  # the public files are readable by a container's other users
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = _certificate("fedtune CA", ca_key)
    server_key = ec.generate_private_key(ec.SECP384R1())
    sans = tuple(dict.fromkeys((*DEFAULT_NAMES, *names)))
    server = _certificate("superlink", server_key, ca.subject, ca_key, sans)
    pem = serialization.Encoding.PEM
    _write(out / "ca.crt", ca.public_bytes(pem))
    _write(out / "ca.key", _key_pem(ca_key), private=True)
    _write(out / "server.pem", server.public_bytes(pem))
    _write(out / "server.key", _key_pem(server_key), private=True)
    _write(out / "superexec.secret", secrets.token_hex(32).encode(), private=True)
    for i in range(nodes):
        node_key_pair(out / f"node-{i}")
    written = ["ca.crt", "ca.key", "server.pem", "server.key", "superexec.secret"]
    written += [f"node-{i}{ext}" for i in range(nodes) for ext in ("", ".pub")]
    return [out / name for name in written]
