"""How fast task output is masked: MB/s through one masking stream holding many secrets.

This is the delegate's cost per byte of log, the part of log shipping that grows with the
number of secrets a task sees. The text is synthetic log lines; every thousandth one
carries a secret in one of the encodings the masker expands (raw, base64, URL, JSON), and
as many again carry a credential of a well-known shape that was never registered (an AWS
key id, a GitHub token, a JWT, a PEM private key), which the masker finds by its shape.
"""

from __future__ import annotations

import base64
import json
import random
import string
import time
from typing import Any
from urllib.parse import quote

from manager.bench.common import load_average
from manager.bench.options import MaskerOptions
from shared.masking import DFA_MAX_PATTERN_BYTES, MASK, Masker, expand_value

__all__ = ["make_log_text", "make_secrets", "run_masker_bench"]

SECRET_EVERY = 1000
_VOCABULARY = (
    "GET POST deploy build step cache hit miss restored uploaded artifact compiled linking "
    "module test passed failed retry connection pool worker queue job done status ok error "
    "warning timeout latency bytes request response service health check container image "
    "layer pulled pushed digest sha256 release tag branch commit merged rollout replica"
)
_WORDS = _VOCABULARY.split()


def make_secrets(count: int, rng: random.Random) -> list[str]:
    """Secrets of the shapes tasks see: API keys, passwords, tokens; 12 to 48 characters."""
    alphabet = string.ascii_letters + string.digits
    punct = alphabet + "!#%+/=@_-"
    out = []
    for i in range(count):
        size = rng.randint(12, 48)
        pool = punct if i % 3 == 0 else alphabet
        out.append("".join(rng.choice(pool) for _ in range(size)))
    return out


def _encoded(secret: str, rng: random.Random) -> str:
    form = rng.randrange(4)
    if form == 0:
        return secret
    if form == 1:
        return base64.b64encode(secret.encode()).decode()
    if form == 2:
        return quote(secret, safe="")
    return json.dumps(secret)[1:-1]


def _credential(n: int, rng: random.Random) -> str:
    """An unregistered credential of one of the shapes, in turn."""
    alnum = string.ascii_letters + string.digits
    kind = n % 4
    if kind == 0:
        return "AKIA" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=16))
    if kind == 1:
        return "ghp_" + "".join(rng.choices(alnum, k=36))
    if kind == 2:
        claims = base64.urlsafe_b64encode(json.dumps({"sub": n}).encode()).rstrip(b"=")
        return f"eyJhbGciOiJIUzI1NiJ9.{claims.decode()}." + "".join(rng.choices(alnum, k=43))
    body = "\n".join("".join(rng.choices(alnum, k=64)) for _ in range(5))
    return f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----"


def make_log_text(size: int, secrets: list[str], rng: random.Random) -> tuple[bytes, int]:
    """About ``size`` bytes of log lines, and how many of them carry a secret (as many again
    carry an unregistered credential)."""
    templates = []
    for n in range(5000):
        words = " ".join(rng.choices(_WORDS, k=rng.randint(4, 14)))
        templates.append(
            f"2025-01-{1 + n % 28:02d}T12:{n % 60:02d}:{(7 * n) % 60:02d}.{n % 1000:03d}Z "
            f"INFO step[{n % 97}]: {words} id={rng.getrandbits(48):x} took={rng.randint(1, 999)}ms"
        )
    lines: list[str] = []
    total = 0
    inserted = 0
    while total < size:
        batch = rng.choices(templates, k=SECRET_EVERY)
        batch[-1] = f"{batch[-1]} token={_encoded(rng.choice(secrets), rng)} end"
        batch[len(batch) // 2] += f" credential: {_credential(inserted, rng)}"
        inserted += 1
        lines += batch
        total += sum(len(line) + 1 for line in batch)
    return ("\n".join(lines) + "\n").encode(), inserted


def run_masker_bench(opts: MaskerOptions) -> dict[str, Any]:
    rng = random.Random(opts.seed)
    secrets = make_secrets(opts.secrets, rng)
    text, inserted = make_log_text(int(opts.megabytes * 2**20), secrets, rng)
    load_start = load_average()

    t0 = time.perf_counter()
    masker = Masker(secrets)
    stream = masker.stream()
    stream.feed(b"")  # builds the automaton
    build_s = time.perf_counter() - t0

    chunk = opts.chunk
    out: list[bytes] = []
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(text), chunk):
        out.append(stream.feed(text[i : i + chunk]))
    out.append(stream.flush())
    elapsed = time.perf_counter() - t0
    # CPU time as well: on a shared machine the wall clock mostly measures the neighbours.
    cpu = time.process_time() - c0
    masked = b"".join(out)
    pattern_bytes = sum(len(p) for p in set().union(*(expand_value(s) for s in secrets)))
    return {
        "bench": "masker",
        "secrets": opts.secrets,
        "patterns": masker.patterns,
        "automaton": "dfa" if pattern_bytes <= DFA_MAX_PATTERN_BYTES else "nfa",
        "input_mib": round(len(text) / 2**20, 1),
        "chunk_bytes": chunk,
        "build_ms": round(build_s * 1000, 1),
        "elapsed_s": round(elapsed, 3),
        "mb_per_s": round(len(text) / 1e6 / elapsed, 1),
        "cpu_mb_per_s": round(len(text) / 1e6 / cpu, 1),
        "secrets_in_text": inserted,
        "shapes_in_text": inserted,
        "masks_written": masked.count(MASK),
        "loadavg_1m": {"start": load_start, "end": load_average()},
    }
