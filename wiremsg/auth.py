"""Mutual authentication by HMAC-SHA256 proofs over both nonces; no secret on the wire.

The worker proves it knows the shared secret by sending
``HMAC-SHA256(secret, "wiremsg/1 worker\\0" + name + "\\0" + worker_nonce + "\\0" + master_nonce)``
and the master proves the same with the label ``"wiremsg/1 master"``. Distinct labels stop a
proof from being reflected back; both nonces (64 hex digits each, 32 random bytes) stop
replays. Proofs are compared in constant time. docs/PROTOCOL.md carries test vectors.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable

NONCE_BYTES = 32
"""Random bytes in a nonce (it travels as 64 lowercase hex digits)."""

_WORKER_LABEL = b"wiremsg/1 worker"
_MASTER_LABEL = b"wiremsg/1 master"

RandomSource = Callable[[int], bytes]
"""A source of random bytes: ``os.urandom`` in production, seeded in tests."""


def new_nonce(random: RandomSource = os.urandom) -> str:
    """Return a fresh nonce as 64 lowercase hex digits."""
    return random(NONCE_BYTES).hex()


def _proof(
    label: bytes, secret: str | bytes, worker: str, worker_nonce: str, master_nonce: str
) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    msg = b"\0".join((label, worker.encode(), worker_nonce.encode(), master_nonce.encode()))
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def worker_proof(secret: str | bytes, worker: str, worker_nonce: str, master_nonce: str) -> str:
    """The proof a worker sends in ``auth``: 64 hex digits."""
    return _proof(_WORKER_LABEL, secret, worker, worker_nonce, master_nonce)


def master_proof(secret: str | bytes, worker: str, worker_nonce: str, master_nonce: str) -> str:
    """The proof a master sends in ``welcome``: 64 hex digits."""
    return _proof(_MASTER_LABEL, secret, worker, worker_nonce, master_nonce)


def proofs_match(expected: str, given: object) -> bool:
    """Constant-time comparison of a proof (or token) with what the peer sent."""
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))
