"""Throwaway certificates for TLS tests, made with the openssl command: an authority, and certificates it signs
for a broker (its addresses as subject alternative names) or a client. Two days' validity; RSA 2048, which
both Erlang's TLS and Python's default context accept."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def openssl(*args: str | Path) -> None:
    r = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def authority(d: Path, name: str) -> Pair:
    """A self-signed authority `name` in `d`."""
    pair = Pair(d / f"{name}.crt", d / f"{name}.key")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", pair.key, "-out", pair.cert, "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-addext", "subjectKeyIdentifier=hash")
    return pair


def issue(ca: Pair, d: Path, name: str, addresses: tuple[str, ...] = ()) -> Pair:
    """A certificate for `name` signed by `ca`, valid for the IP `addresses` given (a server's) and as a client."""
    pair, csr, ext = Pair(d / f"{name}.crt", d / f"{name}.key"), d / f"{name}.csr", d / f"{name}.ext"
    names = ",".join([f"DNS:{name}", *(f"IP:{a}" for a in addresses)])
    ext.write_text(f"subjectAltName={names}\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n"
                   "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", pair.key, "-out", csr)
    openssl("x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-set_serial",
            str(int.from_bytes(name.encode()[:8], "big") + 1), "-days", "2", "-extfile", ext, "-out", pair.cert)
    return pair
