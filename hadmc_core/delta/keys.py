"""Ed25519 keys and signed manifests."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hadmc_core.delta.errors import FormatError, KeyFileError, SignatureError
from hadmc_core.delta.manifest import MAX_MANIFEST_BYTES, Manifest, canonical, hash_bytes, loads


def generate_keys(private_path: Path, public_path: Path | None = None) -> tuple[Path, Path]:
    """Write a new private key (PEM, mode 0600) and its public half (PEM)."""
    private_path = Path(private_path)
    public_path = Path(public_path or private_path.with_suffix(".pub"))
    if private_path.exists():
        raise KeyFileError(f"{private_path} exists; refusing to overwrite a key (choose "
                           "another path with -o or delete the old key first)")
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
    """A public key from a PEM file, PEM bytes, or the raw 32-byte key (binary or hex)."""
    data = path_or_pem if isinstance(path_or_pem, bytes) else Path(path_or_pem).read_bytes()
    raw = data.strip()
    if len(raw) == 64:
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            raw = bytes.fromhex(raw.decode("ascii"))
    if len(raw) == 32 and not raw.startswith(b"-----"):
        return Ed25519PublicKey.from_public_bytes(raw)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise SignatureError(f"not a PEM or raw Ed25519 public key: {e}") from e
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

    def to_dict(self) -> dict:
        return {"manifest": self.manifest.to_dict(), "signature": self.signature,
                "key_id": self.key_id}

    def to_bytes(self) -> bytes:
        return canonical(self.to_dict())

    @classmethod
    def from_dict(cls, d: object) -> SignedManifest:
        if not isinstance(d, dict) or not isinstance(d.get("manifest"), dict):
            raise FormatError("signed manifest is malformed: no manifest object")
        sig, kid = d.get("signature", ""), d.get("key_id", "")
        if not isinstance(sig, str) or not isinstance(kid, str) or len(sig) > 256:
            raise FormatError("signed manifest is malformed: bad signature field")
        return cls(Manifest.from_dict(d["manifest"]), sig, kid[:64])

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedManifest:
        """A signed manifest file; a bare (unsigned) manifest is accepted too."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise FormatError(f"signed manifest larger than the {MAX_MANIFEST_BYTES >> 20} "
                              "MiB cap")
        d = loads(data, "signed manifest")
        if isinstance(d, dict) and "manifest" not in d and "format" in d:
            return cls(Manifest.from_dict(d))
        return cls.from_dict(d)

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
