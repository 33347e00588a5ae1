"""``hadmc delta`` and ``hadmc keys`` commands."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from hadmc_core.cli._common import console, friendly, out
from hadmc_core.fsutil import write_atomic

app = typer.Typer(no_args_is_help=True)
keys_app = typer.Typer(no_args_is_help=True)


@keys_app.command("generate")
@friendly
def keys_generate(
    out_key: Path = typer.Option(Path("hadmc-signing.pem"), "--out", "-o",
                                 help="Private key file (written with mode 0600)."),
) -> None:
    """Create an Ed25519 signing key pair (KEY and KEY.pub)."""
    from hadmc_core.delta import generate_keys

    priv, pub = generate_keys(out_key)
    out.print(f"private key: {priv} (keep it secret)\npublic key:  {pub}")


@app.command("manifest")
@friendly
def manifest_cmd(
    file: Path = typer.Argument(..., help="Model file (safetensors, ONNX, or any file)."),
    sign_key: Path | None = typer.Option(None, "--sign", help="Private key to sign with."),
    model: str = typer.Option("", help="Model name (default: the file's stem)."),
    version: int = typer.Option(1, help="Version number (monotonically increasing)."),
    ttl_days: float = typer.Option(30, help="Days until the manifest expires (0 = never)."),
    output: Path | None = typer.Option(None, "--out", "-o", help="Write here, not stdout."),
) -> None:
    """Hash a file into a (signed) manifest: per-tensor chunks, BLAKE3, root hash."""
    from hadmc_core.delta import SignedManifest, build_manifest, load_private, sign

    m = build_manifest(file, model=model, version=version, ttl_seconds=int(ttl_days * 86400))
    signed = sign(m, load_private(sign_key)) if sign_key else SignedManifest(m)
    data = signed.to_bytes()
    if output:
        output.write_bytes(data)
        console.print(f"wrote {output}: {len(m.files)} file(s), {m.n_chunks} chunks, "
                      f"root {m.root[:16]}")
    else:
        out.print(json.dumps(json.loads(data), indent=1), highlight=False)


@app.command("diff")
@friendly
def diff_cmd(
    old: Path = typer.Argument(..., help="The version the device has (or its manifest, "
                               "with --base-manifest)."),
    new: Path = typer.Argument(..., help="The version to send."),
    base_manifest: bool = typer.Option(False, "--base-manifest",
                                       help="OLD is the device's manifest, not the file: "
                                       "send what it lacks by hash."),
    output: Path = typer.Option(..., "--out", "-o", help="Delta file to write."),
    sign_key: Path | None = typer.Option(None, "--sign", help="Private key to sign with."),
    model: str = typer.Option("", help="Model name (default: the new file's stem)."),
    version: int = typer.Option(1, help="Version number of NEW."),
    ttl_days: float = typer.Option(30, help="Days until the manifest expires (0 = never)."),
    level: int = typer.Option(3, help="zstd level for chunk encodings."),
) -> None:
    """Compute a delta that turns OLD into NEW."""
    from hadmc_core.delta import SignedManifest, diff, diff_from_manifest, load_private

    for p in (old, new):
        if not p.is_file():
            raise FileNotFoundError(2, "No such file", str(p))
    t = time.perf_counter()
    key = load_private(sign_key) if sign_key else None
    ttl = int(ttl_days * 86400)
    if base_manifest:
        device = SignedManifest.from_bytes(old.read_bytes()).manifest
        data, stats = diff_from_manifest(device, new, key, model=model, version=version,
                                         ttl_seconds=ttl, level=level)
    else:
        data, stats = diff(old, new, key, model=model, version=version, ttl_seconds=ttl,
                           level=level)
    write_atomic(output, data, mode=0o666)
    note = " (fell back to the full file: the delta was not smaller)" if stats.fallback else ""
    out.print(f"{output}: {stats.delta_bytes:,} bytes for a {stats.target_bytes:,}-byte target "
              f"({stats.delta_bytes / max(1, stats.target_bytes):.1%}; full zstd "
              f"{stats.full_zstd_bytes:,}) in {time.perf_counter() - t:.2f} s{note}")
    out.print("ops: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.ops.items())))


@app.command("apply")
@friendly
def apply_cmd(
    old: Path = typer.Argument(..., help="The base version on this device."),
    patch: Path = typer.Argument(..., help="Delta file."),
    output: Path = typer.Option(..., "--out", "-o", help="Rebuilt file (written atomically)."),
    public_key: Path | None = typer.Option(None, help="Pinned public key: check the signature."),
    min_version: int | None = typer.Option(None, help="Refuse versions below this."),
) -> None:
    """Rebuild NEW from OLD and a delta; every hash verified. OUT is untouched on failure."""
    from hadmc_core.delta import apply_delta, load_public

    for p in (old, patch):
        if not p.is_file():
            raise FileNotFoundError(2, "No such file", str(p))
    key = load_public(public_key) if public_key else None
    m = apply_delta(old, patch, output, public_key=key, min_version=min_version)
    signed = "signature verified" if key else "unsigned check (hashes only)"
    out.print(f"{output}: {m.model} v{m.version}, {m.size:,} bytes, root "
              f"{m.root[:16]}, {signed}")
