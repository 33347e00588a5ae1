"""Ed25519 keys and signed manifests."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hadmc_core.delta.errors import FormatError, SignatureError
from hadmc_core.delta.manifest import MAX_MANIFEST_BYTES, Manifest, canonical, hash_bytes


def generate_keys(private_path: Path, public_path: Path | None = None) -> tuple[Path, Path]:
    """Write a new private key (PEM, mode 0600) and its public half (PEM)."""
    private_path = Path(private_path)
    public_path = Path(public_path or private_path.with_suffix(".pub"))
    if private_path.exists():
        raise FileExistsError(17, "refusing to overwrite an existing key", str(private_path))
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(public_pem(key.public_key()))
    return private_path, public_path


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise SignatureError(f"{path} is not a PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 key")
    return key


def load_public(path_or_pem: Path | bytes) -> Ed25519PublicKey:
    data = path_or_pem if isinstance(path_or_pem, bytes) else Path(path_or_pem).read_bytes()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise SignatureError(f"not a PEM public key: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("the public key is not an Ed25519 key")
    return key


def key_id(key: Ed25519PublicKey) -> str:
    return hash_bytes(public_pem(key))[:16]


@dataclass
class SignedManifest:
    manifest: Manifest
    signature: str = ""   # hex; empty when unsigned
    key_id: str = ""

    def to_bytes(self) -> bytes:
        return canonical({"manifest": self.manifest.to_dict(), "signature": self.signature,
                          "key_id": self.key_id})

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedManifest:
        if len(data) > MAX_MANIFEST_BYTES:
            raise FormatError("signed manifest larger than the 64 MiB cap")
        try:
            d = json.loads(data)
            return cls(Manifest.from_dict(d["manifest"]), str(d.get("signature", "")),
                       str(d.get("key_id", "")))
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise FormatError(f"signed manifest is malformed: {e}") from e

    def verify(self, public: Ed25519PublicKey) -> None:
        if not self.signature:
            raise SignatureError("manifest is not signed but a public key was given; "
                                 "sign it with --sign KEY")
        try:
            public.verify(bytes.fromhex(self.signature), self.manifest.to_bytes())
        except (InvalidSignature, ValueError) as e:
            raise SignatureError(
                f"bad manifest signature (key id {key_id(public)}, manifest says "
                f"{self.key_id or 'none'}): wrong key or tampered manifest") from e


def sign(manifest: Manifest, private: Ed25519PrivateKey) -> SignedManifest:
    sig = private.sign(manifest.to_bytes()).hex()
    return SignedManifest(manifest, sig, key_id(private.public_key()))
