"""Is a certificate's public key weak? Size, ROCA (CVE-2017-15361), Debian's weak keys (CVE-2008-0166).

ROCA: RSA primes made by Infineon's RSALib have the form k*M + (65537^a mod M), M a primorial,
so the modulus N, reduced modulo each small prime p, lies in the multiplicative subgroup that
65537 generates mod p. The published detector (Nemec et al., "The Return of Coppersmith's
Attack", CCS 2017; github.com/crocs-muni/roca) tests exactly that for the primes up to 167; a
random modulus passes all of them with negligible probability.

Debian weak keys: only a blocklist can tell (the keys are ordinary-looking RSA keys from a tiny
space). We read the openssl-blacklist format: one line per key, the last 20 hex digits of
SHA-1("Modulus=<UPPERCASE HEX>\\n"); comment lines start with '#'. No blocklist, no check.
"""

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import FrozenSet, List, Optional

MIN_RSA_BITS = 2048
MIN_EC_BITS = 256

_ROCA_PRIMES = (
    3,
    5,
    7,
    11,
    13,
    17,
    19,
    23,
    29,
    31,
    37,
    41,
    43,
    47,
    53,
    59,
    61,
    67,
    71,
    73,
    79,
    83,
    89,
    97,
    101,
    103,
    107,
    109,
    113,
    127,
    131,
    137,
    139,
    149,
    151,
    157,
    163,
    167,
)


@lru_cache(maxsize=None)
def _subgroup(prime: int) -> FrozenSet[int]:
    """The powers of 65537 modulo `prime`."""
    out, value = set(), 1
    while value not in out:
        out.add(value)
        value = value * 65537 % prime
    return frozenset(out)


def roca_vulnerable(modulus: int) -> bool:
    """True when `modulus` has the ROCA fingerprint."""
    return all(modulus % p in _subgroup(p) for p in _ROCA_PRIMES)


def debian_fingerprint(modulus: int) -> str:
    """The openssl-blacklist entry for an RSA modulus."""
    text = "Modulus=%X\n" % modulus
    return hashlib.sha1(text.encode()).hexdigest()[20:]


@lru_cache(maxsize=8)
def load_blocklist(path: str) -> FrozenSet[str]:
    entries = set()
    with open(path) as handle:
        for line in handle:
            line = line.strip().lower()
            if line and not line.startswith("#"):
                entries.add(line[-20:])
    return frozenset(entries)


def weaknesses(public_key, blocklist: Optional[Path] = None) -> List[str]:
    """Why `public_key` is weak (empty: it is not): RSA_KEY_TOO_SMALL, EC_KEY_TOO_SMALL,
    ROCA_VULNERABLE, DEBIAN_WEAK_KEY, UNSUPPORTED_KEY_TYPE (DSA and the like)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    found = []
    if isinstance(public_key, rsa.RSAPublicKey):
        modulus = public_key.public_numbers().n
        if public_key.key_size < MIN_RSA_BITS:
            found.append("RSA_KEY_TOO_SMALL")
        if roca_vulnerable(modulus):
            found.append("ROCA_VULNERABLE")
        if blocklist is not None and debian_fingerprint(modulus) in load_blocklist(str(blocklist)):
            found.append("DEBIAN_WEAK_KEY")
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.key_size < MIN_EC_BITS:
            found.append("EC_KEY_TOO_SMALL")
    elif not isinstance(public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        found.append("UNSUPPORTED_KEY_TYPE")
    return found
