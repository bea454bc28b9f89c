"""The spot-check draw (双随机): mines from the list and inspectors from the pool, at random, reproducibly.

The method is published with every draw so that anyone can re-run it without greenmine (一公开):

    rank(seed, kind, id) = SHA-256 of the UTF-8 text "<seed>:<kind>:<id>", as lowercase hex
    mines drawn      = the N mine ids of the pool with the smallest rank(seed, "mine", id)
    inspectors drawn = the M inspector ids of the pool with the smallest rank(seed, "inspector", id)

e.g. `printf '%s' '3f2a9c:mine:gs-jinchang-cu01' | sha256sum`. The pool is the prefecture's listed mines
on the day of the draw (status listed or under rectification; never a removed one); the inspector pool is
the configured inspectors of that prefecture and those of no prefecture. Both pools are recorded with the
seed, so the same inputs always give the same draw, and every id is drawn at most once.
"""

from __future__ import annotations

import hashlib
import secrets

METHOD = "sha256-rank-v1: ids sorted by sha256('<seed>:<kind>:<id>') hex, the first N taken"


class DrawError(Exception):
    pass


def rank(seed: str, kind: str, ident: str) -> str:
    return hashlib.sha256(f"{seed}:{kind}:{ident}".encode()).hexdigest()


def pick(seed: str, kind: str, pool: list[str], n: int) -> list[str]:
    """The n ids of `pool` with the smallest rank, in rank order. Each id at most once."""
    unique = sorted(set(pool))
    if n < 1:
        raise DrawError(f"draw at least one {kind}")
    if n > len(unique):
        raise DrawError(f"cannot draw {n} {kind}(s) from a pool of {len(unique)}")
    return sorted(unique, key=lambda i: rank(seed, kind, i))[:n]


def new_seed() -> str:
    return secrets.token_hex(8)


def run(seed: str, mine_pool: list[str], inspector_pool: list[str], n_mines: int, n_inspectors: int) -> tuple[list[str], list[str]]:
    return pick(seed, "mine", mine_pool, n_mines), pick(seed, "inspector", inspector_pool, n_inspectors)
