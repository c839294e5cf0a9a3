#!/usr/bin/env python3
"""Signs N distinct valid bench tokens for the "a new token on every request" run.

    fresh_tokens.py COUNT OUT_FILE

Run with the anchor harness's venv from its folder (it needs keys/private.pem, which
the harness's setup.sh wrote, and PyJWT). The tokens carry the same claims as the
harness's tokens/valid_many.txt (iss, aud, scope chat:write, exp in 2100, kid
bench-rsa-1), each with its own sub and jti, so every one is a distinct string that
a verified-token cache has never seen. Signing is spread over all cores.
"""
import multiprocessing
import os
import sys
import time
import uuid

import jwt
from cryptography.hazmat.primitives import serialization

ISS = "https://auth.bench.local/"
AUD = "bench-gateway"
KID = "bench-rsa-1"
SCOPE = "chat:write models:read"
FAR_FUTURE = 4102444800  # 2100-01-01T00:00:00Z

_key = None


def _load_key():
    global _key
    with open("keys/private.pem", "rb") as f:
        _key = serialization.load_pem_private_key(f.read(), password=None)


def _sign(i):
    claims = {"iss": ISS, "aud": AUD, "sub": f"fresh-{i}", "iat": int(time.time()),
              "exp": FAR_FUTURE, "scope": SCOPE, "jti": str(uuid.uuid4())}
    return jwt.encode(claims, _key, algorithm="RS256", headers={"kid": KID})


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: fresh_tokens.py COUNT OUT_FILE")
    count, out = int(sys.argv[1]), sys.argv[2]
    with multiprocessing.Pool(os.cpu_count(), initializer=_load_key) as pool:
        tokens = pool.map(_sign, range(count), chunksize=500)
    if len(set(tokens)) != count:
        sys.exit("duplicate tokens generated")
    with open(out + ".tmp", "w") as f:
        f.write("\n".join(tokens) + "\n")
    os.replace(out + ".tmp", out)
    print(f"[fresh_tokens] {count} distinct tokens in {out}")


if __name__ == "__main__":
    main()
