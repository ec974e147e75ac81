"""Benchmark memory/crypto.py: per-request unwrap cost, and text encryption throughput.

Prints one JSON line. The peer is scrypt (n=2**14, r=8, p=1, the usual interactive setting):
``unwrap_vs_scrypt_ratio`` is how many times cheaper HKDF unwrapping is than a scrypt derivation
alone, which is the latency every authenticated request would pay had we picked scrypt.

Run: ``python bench/memory_crypto.py``
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from memory.crypto import (
    decrypt_text,
    encrypt_text,
    new_data_key,
    rotate_data_key,
    unwrap_data_key,
    wrap_data_key,
)


def per_second(fn: Callable[[], object], seconds: float = 0.5) -> float:
    """Call ``fn`` repeatedly for about ``seconds`` and return calls per second."""
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        calls += 1
    return calls / elapsed


def main() -> None:
    """Run every measurement and print one JSON line."""
    token = f"iam_{secrets.token_hex(5)}_{secrets.token_urlsafe(32)}"
    key = rotate_data_key(rotate_data_key(new_data_key()))
    wrap = wrap_data_key(key, token)
    small, large = "x" * 1024, "x" * 65536
    small_ct, large_ct = encrypt_text(key, small), encrypt_text(key, large)

    def scrypt_derive() -> bytes:
        return Scrypt(salt=os.urandom(16), length=32, n=2**14, r=8, p=1).derive(token.encode())

    results: dict[str, float] = {
        "wrap_per_s": per_second(lambda: wrap_data_key(key, token)),
        "unwrap_per_s": per_second(lambda: unwrap_data_key(wrap, token)),
        "scrypt_derive_per_s": per_second(scrypt_derive),
        "encrypt_1k_per_s": per_second(lambda: encrypt_text(key, small)),
        "decrypt_1k_per_s": per_second(lambda: decrypt_text(key, small_ct)),
        "encrypt_64k_per_s": per_second(lambda: encrypt_text(key, large)),
        "decrypt_64k_per_s": per_second(lambda: decrypt_text(key, large_ct)),
        "ciphertext_overhead_1k": len(small_ct) / len(small),
    }
    results["unwrap_vs_scrypt_ratio"] = results["unwrap_per_s"] / results["scrypt_derive_per_s"]
    print(json.dumps({"bench": "memory_crypto"} | {k: round(v, 2) for k, v in results.items()}))


if __name__ == "__main__":
    main()
