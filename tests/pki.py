"""A throw-away PKI for TLS tests: a CA, a server certificate for 127.0.0.1/localhost, a client.

Made with the ``openssl`` command line (Debian's openssl), one key pair per role.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _issue(folder: Path, name: str, subject: str, extensions: str, ca: tuple[Path, Path]) -> None:
    key, request, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    _openssl(
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key,
        "-subj",
        subject,
        "-out",
        request,
    )
    extfile = folder / f"{name}.ext"
    extfile.write_text(extensions)
    _openssl(
        "x509",
        "-req",
        "-in",
        request,
        "-CA",
        ca[0],
        "-CAkey",
        ca[1],
        "-CAcreateserial",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        extfile,
        "-out",
        cert,
    )


def make_pki(folder: Path) -> Pki:
    """Write a CA and two certificates it signs into ``folder``."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = folder / "ca.key", folder / "ca.pem"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        ca_key,
        "-out",
        ca_cert,
        "-days",
        "2",
        "-subj",
        "/CN=cxr-node test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    _issue(
        folder,
        "server",
        "/CN=localhost",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        (ca_cert, ca_key),
    )
    _issue(folder, "client", "/CN=CXR_NODE", "extendedKeyUsage=clientAuth\n", (ca_cert, ca_key))
    return Pki(
        ca_cert=ca_cert,
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
    )
