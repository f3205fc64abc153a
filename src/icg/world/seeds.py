"""Disjoint seed ranges, so that no model trains on what evaluates it.

The oracle motif classifier trains on ORACLE renders only; coverworld-tiny recipes train on
ZOO renders only; worlds made by `icg world generate` use the seed the user gives, offset into
the WORLD range. A fresh world for a gate or a test uses a seed no recipe used.
"""

ORACLE = 10_000_000
ZOO = 20_000_000
WORLD = 30_000_000


def oracle_seed(i: int) -> int:
    return ORACLE + i


def zoo_seed(i: int) -> int:
    return ZOO + i


def world_seed(seed: int) -> int:
    return WORLD + seed
