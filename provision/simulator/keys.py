"""Public SSH keys in the formats Lambda accepts: OpenSSH, RFC4716 (SSH2), PEM and PKCS#8.

Lambda's docs list OpenSSH, RFC4716, PKCS8 and PEM. Each is read with `cryptography`'s loader for
that format, and the key is kept as the OpenSSH line that goes into a machine's authorized_keys:
- OpenSSH: `ssh-ed25519 AAAA... comment` (`load_ssh_public_key`; the comment is kept);
- RFC4716: `---- BEGIN SSH2 PUBLIC KEY ----`, headers, base64 of the SSH wire blob (the blob is
  what `load_ssh_public_key` reads; a `Comment:` header becomes the comment);
- PEM / PKCS#8: `-----BEGIN PUBLIC KEY-----` (SubjectPublicKeyInfo) or `-----BEGIN RSA PUBLIC
  KEY-----` (PKCS#1) through `load_pem_public_key`.
Only key types that OpenSSH's server takes are accepted (RSA, ECDSA, Ed25519); anything else, or
junk, raises `ValueError`, which the API answers with 400 `global/invalid-parameters`.
"""

from __future__ import annotations

import base64
import binascii
import struct

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

RFC4716_BEGIN = "---- BEGIN SSH2 PUBLIC KEY ----"
RFC4716_END = "---- END SSH2 PUBLIC KEY ----"
SSHD_KEY_TYPES = (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)


def openssh_public_key(text: str) -> str:
    """The OpenSSH line (`<type> <base64> [comment]`) of a public key in any accepted format."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key, comment = serialization.load_pem_public_key(text.encode()), ""
        elif text.startswith("---- BEGIN SSH2"):
            blob, comment = _rfc4716_blob(text)
            key = serialization.load_ssh_public_key(_blob_type(blob) + b" " + base64.b64encode(blob))
        else:
            parts = text.split(None, 2)
            key = serialization.load_ssh_public_key(" ".join(parts[:2]).encode())
            comment = parts[2] if len(parts) > 2 else ""
        if not isinstance(key, SSHD_KEY_TYPES):
            raise ValueError(f"{type(key).__name__} keys are not accepted by SSH")
        line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    except (UnsupportedAlgorithm, TypeError, IndexError, struct.error, binascii.Error) as exc:
        raise ValueError(str(exc) or "not a public key") from None
    # one line in authorized_keys: a comment must not carry a newline into it
    comment = " ".join(comment.split())
    return f"{line} {comment}" if comment else line


def _rfc4716_blob(text: str) -> tuple[bytes, str]:
    """(SSH wire blob, comment) of an RFC4716 key: header lines (`Tag: value`, `\\` continues a
    line) come before the base64 body, whose alphabet has no colon."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < 3 or lines[0] != RFC4716_BEGIN or lines[-1] != RFC4716_END:
        raise ValueError("not an RFC4716 public key")
    headers: list[str] = []
    body: list[str] = []
    continued = False
    for line in lines[1:-1]:
        if continued:
            headers[-1] = headers[-1][:-1] + line
        elif ":" in line and not body:
            headers.append(line)
        else:
            body.append(line)
            continue
        continued = headers[-1].endswith("\\")
    comment = ""
    for header in headers:
        tag, _, value = header.partition(":")
        if tag.strip().lower() == "comment":
            comment = value.strip().strip('"')
    return base64.b64decode("".join(body), validate=True), comment


def _blob_type(blob: bytes) -> bytes:
    """The key type named at the head of an SSH wire blob (a length-prefixed string)."""
    (length,) = struct.unpack(">I", blob[:4])
    if not 0 < length <= 64 or len(blob) < 4 + length:
        raise ValueError("not an SSH public key blob")
    return blob[4 : 4 + length]
