"""A small certificate authority made with the `openssl` command, for `greenmine broker init --make-ca`,
the demo and the tests. The commands are the ones docs/broker.md shows; a site with its own CA
(or step-ca) passes its files to `broker init` instead.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from pathlib import Path


class CertError(RuntimeError):
    pass


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise CertError("openssl not found: install it with 'sudo apt-get install -y openssl'")
    out = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise CertError(f"openssl {args[0]} failed: {out.stderr.strip()[-500:]}")


def make_ca(folder: Path, name: str = "greenmine test CA", days: int = 3650) -> tuple[Path, Path]:
    """`ca.pem` and `ca.key` (mode 0600) in `folder`. Keys are EC P-256: quick to make, and every TLS 1.2
    client and Mosquitto take them."""
    folder.mkdir(parents=True, exist_ok=True)
    key, crt = folder / "ca.key", folder / "ca.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-sha256", "-days", str(days),
             "-keyout", str(key), "-out", str(crt), "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=folder)
    os.chmod(key, 0o600)
    return crt, key


def make_cert(folder: Path, stem: str, ca: tuple[Path, Path], names: list[str], *, client: bool = False,
              days: int = 825) -> tuple[Path, Path]:
    """`<stem>.pem` and `<stem>.key` (0600) signed by `ca`, for these DNS names / IP addresses
    (a server certificate), or with `client=True` a client certificate whose CN is names[0]."""
    folder.mkdir(parents=True, exist_ok=True)
    key, csr, crt, ext = (folder / f"{stem}.key", folder / f"{stem}.csr", folder / f"{stem}.pem",
                          folder / f"{stem}.ext")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-sha256", "-keyout", str(key), "-out", str(csr),
             "-subj", f"/CN={names[0]}", cwd=folder)
    os.chmod(key, 0o600)
    sans = []
    for n in names:
        try:
            ipaddress.ip_address(n)
            sans.append(f"IP:{n}")
        except ValueError:
            sans.append(f"DNS:{n}")
    usage = "clientAuth" if client else "serverAuth"
    ext.write_text(f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                   f"extendedKeyUsage={usage}\n" + ("" if client else f"subjectAltName={','.join(sans)}\n"))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", str(days), "-sha256", "-extfile", str(ext), "-out", str(crt), cwd=folder)
    csr.unlink(missing_ok=True)
    ext.unlink(missing_ok=True)
    return crt, key
