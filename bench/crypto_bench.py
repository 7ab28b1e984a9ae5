"""Envelope-crypto throughput: seal/open of 1 KiB values and one scrypt derivation.

Uses only the public recipes (``rotator.crypto.seal`` / ``open_`` with a ``DataKey``), one
process, one thread. A raw ``AESGCM`` loop with a reused key object is printed as a
baseline so the per-call overhead of the recipes is visible.

    python -m bench.crypto_bench [--seconds 2] [--size 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.common import Result, peak_rss_mib, print_machine_info, print_results, rss_note, timed
from rotator import crypto
from rotator.crypto import DataKey, KdfParams, derive_master_key
from rotator.crypto.keys import DEFAULT_SCRYPT_N
from rotator.domain.secret import Secret

BATCH = 1000


def _rate(name: str, fn_batch: object, seconds: float, note: str = "") -> Result:
    """Call ``fn_batch()`` (BATCH ops per call) until ``seconds`` have passed."""
    assert callable(fn_batch)
    fn_batch()  # warm up
    n = 0
    start = time.perf_counter()
    cpu_start = time.process_time()
    deadline = start + seconds
    while True:
        fn_batch()
        n += BATCH
        now = time.perf_counter()
        if now >= deadline:
            break
    cpu = time.process_time() - cpu_start
    return Result(name, count=n, seconds=now - start, unit="ops", note=note, cpu_seconds=cpu)


def run(seconds: float, size: int) -> list[Result]:
    results: list[Result] = []
    material = crypto.new_data_key_material()
    dk = DataKey(id=1, tenant_id=1, key=material)
    value = Secret(os.urandom(size))
    blob = crypto.seal(dk, value, 42, 1)
    assert crypto.open_(dk, blob, 42, 1) == value

    def seal_open() -> None:
        for i in range(BATCH):
            b = crypto.seal(dk, value, i, 1)
            crypto.open_(dk, b, i, 1)

    def seal_only() -> None:
        for i in range(BATCH):
            crypto.seal(dk, value, i, 1)

    def open_only() -> None:
        for _ in range(BATCH):
            crypto.open_(dk, blob, 42, 1)

    kib = f"{size:,} B values"
    results.append(_rate("seal+open (1 pair = 1 op)", seal_open, seconds, kib))
    results.append(_rate("seal only", seal_only, seconds, kib))
    results.append(_rate("open only", open_only, seconds, kib))

    # Baseline: what AES-GCM itself costs when the key object is reused.
    aes = AESGCM(material)
    raw = value.reveal()
    aad = b"rotator/value|t=1|c=42|v=1"

    def raw_seal() -> None:
        for _ in range(BATCH):
            aes.encrypt(os.urandom(12), raw, aad)

    def new_key_object() -> None:
        for _ in range(BATCH):
            AESGCM(material)

    results.append(_rate("baseline: AESGCM.encrypt, key object reused", raw_seal, seconds, kib))
    results.append(_rate("baseline: AESGCM(key) construction alone", new_key_object, seconds))

    # scrypt: the first derivation is paid once per process, then lru-cached.
    params = KdfParams(salt=os.urandom(16), n=DEFAULT_SCRYPT_N, r=8, p=1)
    log_n = DEFAULT_SCRYPT_N.bit_length() - 1
    with timed() as t1:
        k1 = derive_master_key("correct horse battery staple", params)
    again = 1000
    with timed() as t2:
        for _ in range(again):
            k2 = derive_master_key("correct horse battery staple", params)
    assert k1.id == k2.id
    results.append(
        Result(
            f"derive_master_key scrypt n=2^{log_n} r=8 p=1 (first)",
            value=t1.seconds * 1000,
            unit="ms",
            note=f"{128 * DEFAULT_SCRYPT_N * 8 >> 20} MiB scrypt memory; "
            f"process CPU {t1.cpu_seconds * 1000:.0f} ms",
        )
    )
    results.append(
        Result(
            "derive_master_key, same inputs again (cached)",
            value=t2.seconds / again * 1e6,
            unit="µs",
            note=f"mean of {again:,} calls: lru_cache hit + MasterKey() HMAC id",
        )
    )
    results.append(
        Result("peak RSS (crypto bench process)", value=peak_rss_mib(), unit="MiB", note=rss_note())
    )
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="time per throughput loop")
    ap.add_argument("--size", type=int, default=1024, help="value size in bytes")
    ap.add_argument("--json", type=Path, help="also write results as JSON here")
    ap.add_argument("--no-machine", action="store_true", help="do not print machine info")
    args = ap.parse_args(argv)
    if not args.no_machine:
        print_machine_info()
    results = run(args.seconds, args.size)
    print_results("crypto (one process, one thread)", results)
    if args.json:
        args.json.write_text(json.dumps([r.to_json() for r in results], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
