"""Unit tests for :mod:`wiremsg.auth`: nonces and HMAC proofs, checked against an independent
computation with :mod:`hmac`."""

from __future__ import annotations

import hashlib
import hmac
import random
import re

import pytest

from wiremsg import auth

WN = "a" * 64
MN = "b" * 64


def _hmac(key: bytes, label: bytes, *parts: str) -> str:
    msg = label + b"".join(b"\0" + p.encode() for p in parts)
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def test_new_nonce_is_64_lowercase_hex_from_32_random_bytes() -> None:
    nonce = auth.new_nonce(random.Random(7).randbytes)
    assert nonce == random.Random(7).randbytes(32).hex()
    assert re.fullmatch(r"[0-9a-f]{64}", nonce)
    assert auth.NONCE_BYTES == 32


def test_new_nonce_default_source_is_random() -> None:
    assert auth.new_nonce() != auth.new_nonce()
    assert re.fullmatch(r"[0-9a-f]{64}", auth.new_nonce())


def test_worker_proof_matches_an_independent_hmac() -> None:
    got = auth.worker_proof("sesame", "w1", WN, MN)
    assert got == _hmac(b"sesame", b"wiremsg/1 worker", "w1", WN, MN)
    assert re.fullmatch(r"[0-9a-f]{64}", got)


def test_master_proof_matches_an_independent_hmac() -> None:
    got = auth.master_proof(b"sesame", "w1", WN, MN)
    assert got == _hmac(b"sesame", b"wiremsg/1 master", "w1", WN, MN)


def test_str_and_bytes_secrets_agree() -> None:
    assert auth.worker_proof("sésame", "w1", WN, MN) == auth.worker_proof(
        "sésame".encode(), "w1", WN, MN
    )


@pytest.mark.parametrize(
    "change",
    [
        {"secret": "other"},
        {"worker": "w2"},
        {"worker_nonce": "c" * 64},
        {"master_nonce": "c" * 64},
    ],
)
def test_every_input_changes_the_proof(change: dict[str, str]) -> None:
    args = {"secret": "sesame", "worker": "w1", "worker_nonce": WN, "master_nonce": MN}
    assert auth.worker_proof(**args) != auth.worker_proof(**{**args, **change})


def test_labels_stop_reflection() -> None:
    assert auth.worker_proof("s", "w1", WN, MN) != auth.master_proof("s", "w1", WN, MN)


def test_nonces_are_not_interchangeable() -> None:
    assert auth.worker_proof("s", "w1", WN, MN) != auth.worker_proof("s", "w1", MN, WN)


def test_proofs_match() -> None:
    proof = auth.worker_proof("s", "w1", WN, MN)
    assert auth.proofs_match(proof, proof)
    assert not auth.proofs_match(proof, proof[:-1] + ("0" if proof[-1] != "0" else "1"))
    assert not auth.proofs_match(proof, "")
    assert not auth.proofs_match(proof, proof.upper())


@pytest.mark.parametrize("given", [None, 42, b"bytes", ["x"], {"a": 1}])
def test_proofs_match_refuses_non_strings(given: object) -> None:
    assert not auth.proofs_match("abc", given)


def test_proofs_match_survives_unencodable_text() -> None:
    assert not auth.proofs_match("abc", "\udcff")  # a lone surrogate
    assert not auth.proofs_match("abc", "ab\u00e9")
