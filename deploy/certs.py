"""TLS certificates and SuperNode authentication keys for a Flower 1.41 deployment.

``tls`` writes a certificate authority (``ca.crt``, ``ca.key``; kept if already there) and a
server certificate for the SuperLink (``server.crt``, ``server.key``) whose subject alternative
names are the given hosts (DNS names or IP addresses; ``127.0.0.1`` and ``localhost`` are always
added, because the SuperLink's own SuperExec connects to it over loopback). The SuperLink takes
``--ssl-ca-certfile ca.crt --ssl-certfile server.crt --ssl-keyfile server.key``; every SuperNode
and the ``flwr`` CLI verify it with ``ca.crt`` (``--root-certificates``, ``root-certificates``).

``keys`` writes one key pair per SuperNode as ``ssh-keygen -t ecdsa -b 384 -N ""`` would: the
private key ``NAME`` (OpenSSH format, what ``flower-supernode --auth-supernode-private-key``
loads) and the public key ``NAME.pub`` (one OpenSSH line, what ``flwr supernode register``
loads; Flower 1.41 accepts NIST EC curves only). A device should ideally make its own pair and
send only the ``.pub``; this command is for test fleets and for provisioning.

    python deploy/certs.py tls --out certs --host 127.0.0.1 --host superlink.lan --host 192.0.2.10
    python deploy/certs.py keys --out keys --count 2          # supernode-0(.pub), supernode-1(.pub)
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ALWAYS_SANS = ("127.0.0.1", "localhost")
VALID_DAYS = 365


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (0600 from the start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(host: str) -> x509.GeneralName:
    """An IP address SAN for an address, else a DNS name SAN."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _builder(subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
    )


def make_ca(out: Path, name: str = "FedADMP deployment CA") -> tuple[Path, Path]:
    """Write ``ca.crt``/``ca.key`` in ``out`` unless both exist; return their paths."""
    crt, key_path = out / "ca.crt", out / "ca.key"
    if crt.is_file() and key_path.is_file():
        return crt, key_path
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _builder(name, subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # key_cert_sign, crl_sign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write_private(key_path, _pem_key(key))
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt, key_path


def make_server_cert(out: Path, hosts: Sequence[str]) -> tuple[Path, Path]:
    """Write ``server.crt``/``server.key`` signed by the CA in ``out`` (made if missing) for ``hosts``.

    ``127.0.0.1`` and ``localhost`` are always among the names; returns the two paths.
    """
    ca_crt, ca_key_path = make_ca(out)
    ca_cert = x509.load_pem_x509_certificate(ca_crt.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey), "ca.key must be an EC key"
    names = list(dict.fromkeys([*hosts, *ALWAYS_SANS]))  # ordered, unique
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(names[0], ca_cert.subject, key.public_key())
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    crt, key_path = out / "server.crt", out / "server.key"
    _write_private(key_path, _pem_key(key))
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt, key_path


def make_supernode_key(out: Path, name: str) -> tuple[Path, Path]:
    """Write an ECDSA P-384 key pair ``out/name`` (OpenSSH private key) and ``out/name.pub``
    (OpenSSH public key line); an existing pair is kept. Returns (private, public)."""
    private, public = out / name, out / f"{name}.pub"
    if private.is_file() and public.is_file():
        return private, public
    key = ec.generate_private_key(ec.SECP384R1())
    ssh_private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    ssh_public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write_private(private, ssh_private)
    public.write_bytes(ssh_public + f" {name}\n".encode())
    return private, public


def make_supernode_keys(out: Path, count: int, prefix: str = "supernode") -> list[tuple[Path, Path]]:
    """Key pairs ``prefix-0`` .. ``prefix-(count-1)`` in ``out`` (see ``make_supernode_key``)."""
    return [make_supernode_key(out, f"{prefix}-{i}") for i in range(count)]


def main(argv: Sequence[str] | None = None) -> int:
    """The ``tls`` and ``keys`` commands (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tls = sub.add_parser("tls", help="CA (kept if present) and a SuperLink server certificate")
    tls.add_argument("--out", type=Path, required=True)
    tls.add_argument("--host", action="append", default=[], help="DNS name or IP of the SuperLink (repeatable)")
    keys = sub.add_parser("keys", help="SuperNode authentication key pairs")
    keys.add_argument("--out", type=Path, required=True)
    group = keys.add_mutually_exclusive_group(required=True)
    group.add_argument("--count", type=int, help="make supernode-0 .. supernode-(N-1)")
    group.add_argument("--name", action="append", help="make a pair with this file name (repeatable)")
    args = parser.parse_args(argv)
    if args.command == "tls":
        crt, key = make_server_cert(args.out, args.host)
        print(f"CA {args.out / 'ca.crt'}\nserver certificate {crt} (key {key}) for {[*args.host, *ALWAYS_SANS]}")
    else:
        pairs = (
            make_supernode_keys(args.out, args.count)
            if args.count
            else [make_supernode_key(args.out, n) for n in args.name]
        )
        for private, public in pairs:
            print(f"private {private}  public {public}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
