"""Delta benchmark: our delta vs zstd --patch-from, xdelta3, bsdiff, 64 KiB block hashing.

    nice -n 10 python bench/delta.py [--width 1] [--fuzz-minutes 3] [--repeat 3]

Scenarios (bench/delta_scenarios.py) come from a ResNet-18 (small stem) trained by
``hadmc train`` on Fashion-MNIST. Our encode time is measured in-process (``diff``: both
manifests, the signature and the container; median of ``--repeat``) and as CLI wall time;
the other tools are timed as CLI processes. Apply is timed, with its peak RSS, as a Python
process that calls ``apply_delta`` (as the edge agent does) and as the ``hadmc`` CLI (which
also loads typer, rich and any installed CLI plugins). Writes
bench/results/delta-w<width>.json after each scenario and prints a Markdown table.
``--fuzz-minutes`` then fuzzes the delta and manifest parsers (bench/delta_fuzz.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 64 * 1024
TOOL_TIMEOUT = 900


_PEAK = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
         "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


_APPLY = ("import sys; from pathlib import Path; from hadmc_core.delta import apply_delta, "
          "load_public; a = [Path(x) for x in sys.argv[1:]]; "
          "apply_delta(a[0], a[1], a[2], public_key=load_public(a[3]))")  # as the edge agent


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process (measured by a fresh parent)."""
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", _PEAK, *cmd], check=True, capture_output=True,
                         text=True, timeout=TOOL_TIMEOUT)
    return time.perf_counter() - t, int(res.stdout.strip()) * 1024


def block_hash_bytes(old: Path, new: Path) -> int:
    """The paper's algorithm: send every 64 KiB block whose hash changed (+32 B per hash)."""
    import blake3

    a, b = old.read_bytes(), new.read_bytes()
    changed = 0
    for i in range(0, len(b), BLOCK):
        blk = b[i:i + BLOCK]
        if blake3.blake3(blk).digest() != blake3.blake3(a[i:i + BLOCK]).digest():
            changed += len(blk)
    return changed + 32 * (-(-len(b) // BLOCK))


def ours_in_process(old: Path, new: Path, key, repeat: int) -> tuple[bytes, dict, float]:
    """Our delta (signed, version 2), its stats, and the median in-process encode time
    (both manifests hashed, signed, encoded)."""
    from hadmc_core.delta import diff

    times, data, stats = [], b"", None
    for _ in range(repeat):
        t = time.perf_counter()
        data, stats = diff(old, new, private_key=key, version=2)
        times.append(time.perf_counter() - t)
    return data, stats, float(np.median(times))


def run_scenario(name: str, old: Path, new: Path, tmp: Path, key, repeat: int) -> dict:
    hadmc = [sys.executable, "-m", "hadmc_core.cli"]
    r: dict = {"scenario": name, "old": old.name, "new": new.name,
               "new_bytes": new.stat().st_size}
    ours = tmp / "ours.delta"
    data, stats, r["ours_encode_s"] = ours_in_process(old, new, key, repeat)
    r["ours"], r["ours_ops"], r["ours_op_bytes"] = len(data), stats.ops, stats.op_bytes
    r["ours_header_bytes"] = stats.header_bytes
    r["ours_cli_encode_s"], _ = timed([*hadmc, "delta", "diff", str(old), str(new), "-o",
                                       str(ours), "--sign", str(tmp / "k.pem"), "--version",
                                       "2"])
    r["ours_apply_s"], r["ours_apply_peak_bytes"] = timed(
        [sys.executable, "-c", _APPLY, str(old), str(ours), str(tmp / "out"),
         str(tmp / "k.pub")])
    assert (tmp / "out").read_bytes() == new.read_bytes(), "round trip must be exact"
    r["ours_cli_apply_s"], r["ours_cli_apply_peak_bytes"] = timed(
        [*hadmc, "delta", "apply", str(old), str(ours), "-o", str(tmp / "out"),
         "--public-key", str(tmp / "k.pub")])
    assert (tmp / "out").read_bytes() == new.read_bytes(), "round trip must be exact"
    r["apply_peak_limit_bytes"] = r["new_bytes"] + (64 << 20)
    zp = tmp / "z.patch"
    r["zstd_patch_encode_s"], _ = timed(["zstd", "-q", "-f", "-19", "--long=27",
                                         f"--patch-from={old}", str(new), "-o", str(zp)])
    r["zstd_patch_from"] = zp.stat().st_size
    r["xdelta3_encode_s"], _ = timed(["xdelta3", "-f", "-9", "-e", "-s", str(old), str(new),
                                      str(tmp / "x.vcdiff")])
    r["xdelta3"] = (tmp / "x.vcdiff").stat().st_size
    r["bsdiff_encode_s"], _ = timed(["bsdiff", str(old), str(new), str(tmp / "b.patch")])
    r["bsdiff"] = (tmp / "b.patch").stat().st_size
    r["block64k"] = block_hash_bytes(old, new)
    timed(["zstd", "-q", "-f", "-19", "--long=27", str(new), "-o", str(tmp / "full.zst")])
    r["full_zstd"] = (tmp / "full.zst").stat().st_size
    others = [r[k] for k in ("zstd_patch_from", "xdelta3", "bsdiff", "block64k", "full_zstd")]
    r["ours_vs_best_other"] = round(r["ours"] / min(others), 3)
    r["encode_speedup_vs_zstd"] = round(r["zstd_patch_encode_s"] / r["ours_encode_s"], 1)
    r["cli_encode_speedup_vs_zstd"] = round(r["zstd_patch_encode_s"] / r["ours_cli_encode_s"],
                                            1)
    return r


def hash_rates(path: Path, repeat: int = 7) -> dict:
    """build_manifest (chunk hashes + file hash, from disk) and, for reference, one
    single-threaded BLAKE3 call over the same bytes in memory; medians (the machine is
    shared) and bests, GB/s."""
    import blake3

    from hadmc_core.delta import build_manifest

    data, size = path.read_bytes(), path.stat().st_size
    man, raw = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        build_manifest(path)
        man.append(time.perf_counter() - t)
        t = time.perf_counter()
        blake3.blake3(data).digest()
        raw.append(time.perf_counter() - t)
    return {"file": path.name, "bytes": size,
            "manifest_median_gbs": round(size / np.median(man) / 1e9, 2),
            "manifest_best_gbs": round(size / min(man) / 1e9, 2),
            "raw_blake3_1thread_median_gbs": round(size / np.median(raw) / 1e9, 2)}


def main() -> None:
    from delta_fuzz import fuzz
    from delta_scenarios import make_scenarios

    from hadmc_core.delta import diff, generate_keys, load_private

    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--fuzz-minutes", type=float, default=3.0)
    ap.add_argument("--only", default="", help="comma-separated scenario numbers")
    args = ap.parse_args()
    work, scenarios = make_scenarios(args.width)
    tmp = work / "tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    generate_keys(tmp / "k.pem")
    key = load_private(tmp / "k.pem")
    res: dict = {"command": " ".join(["python", *sys.argv]), "width": args.width,
                 "cpu": _cpu(), "cores": os.cpu_count(), "load_before": os.getloadavg(),
                 "rows": []}
    out = ROOT / "bench" / "results" / f"delta-w{args.width:g}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.only and out.exists():  # a partial run replaces its rows, keeps the others
        res["rows"] = [r for r in json.loads(out.read_text())["rows"]
                       if r["scenario"].split()[0] not in args.only.split(",")]
    for name, (old, new) in scenarios.items():
        if args.only and name.split()[0] not in args.only.split(","):
            continue
        print(f"scenario {name} ...", flush=True)
        res["rows"].append(run_scenario(name, old, new, tmp, key, args.repeat))
        res["rows"].sort(key=lambda r: r["scenario"])
        out.write_text(json.dumps(res, indent=2))
    res["hashing"] = hash_rates(scenarios["1 head"][0])
    res["load_after"] = os.getloadavg()
    out.write_text(json.dumps(res, indent=2))
    if args.fuzz_minutes > 0:
        old, new = scenarios["1 head"]
        patch, _ = diff(old, new, version=2)
        res["fuzz"] = fuzz(old, new, patch, tmp, args.fuzz_minutes)
        out.write_text(json.dumps(res, indent=2))
    print(table(res["rows"]))
    print(f"\nhashing: {res['hashing']}\nfuzz: {res.get('fuzz')}")


def table(rows: list[dict]) -> str:
    mb = 1e6
    head = ("| scenario | new file MB | ours MB | zstd -19 --long=27 --patch-from MB | "
            "xdelta3 -9 MB | bsdiff MB | 64 KiB blocks MB | full zstd -19 MB | "
            "ours / best other | encode s: ours in-process / ours CLI / zstd | "
            "zstd / ours | apply s (API / CLI) | apply peak RSS MB: API / CLI (limit) |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [f"| {r['scenario']} | {r['new_bytes'] / mb:.2f} | {r['ours'] / mb:.4f} | "
             f"{r['zstd_patch_from'] / mb:.4f} | {r['xdelta3'] / mb:.4f} | "
             f"{r['bsdiff'] / mb:.4f} | {r['block64k'] / mb:.3f} | {r['full_zstd'] / mb:.3f} | "
             f"{r['ours_vs_best_other']:.2f} | {r['ours_encode_s']:.2f} / "
             f"{r['ours_cli_encode_s']:.2f} / {r['zstd_patch_encode_s']:.2f} | "
             f"{r['encode_speedup_vs_zstd']:.1f} | {r['ours_apply_s']:.2f} / "
             f"{r['ours_cli_apply_s']:.2f} | {r['ours_apply_peak_bytes'] / mb:.0f} / "
             f"{r['ours_cli_apply_peak_bytes'] / mb:.0f} ({r['apply_peak_limit_bytes'] / mb:.0f}) |"
             for r in rows]
    return "\n".join([head, *lines])


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
