"""Split blocks across clients: IID, one domain per client, or Dirichlet skew over domains.

Blocks packed by document are split by their unit (the user where known, else the
document), so a person's or a document's text sits at one client only: a unit spread
over two clients would spend both clients' ε against whoever sees both updates.
"""

from __future__ import annotations

import numpy as np

from flowerbed.data.documents import DataError


def partition(
    domains: np.ndarray,
    num_clients: int,
    scheme: str,
    alpha: float,
    rng: np.random.Generator,
    groups: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Indices of the blocks each client gets; every block goes to exactly one client, and
    all blocks of one group (when `groups` is given) to the same client."""
    if groups is None:
        return _split(domains, num_clients, scheme, alpha, rng, np.ones(len(domains), int))
    keys, first, members = np.unique(groups, return_index=True, return_inverse=True)
    sizes = np.bincount(members, minlength=len(keys))
    parts = _split(domains[first], num_clients, scheme, alpha, rng, sizes)
    return [np.sort(np.flatnonzero(np.isin(members, part))) for part in parts]


def _split(
    domains: np.ndarray,
    num_clients: int,
    scheme: str,
    alpha: float,
    rng: np.random.Generator,
    sizes: np.ndarray,
) -> list[np.ndarray]:
    """Items (blocks, or groups of `sizes` blocks) of the given domains, per client."""
    if scheme == "iid":
        order = rng.permutation(len(domains))
        if (sizes == 1).all():
            return [np.sort(part) for part in np.array_split(order, num_clients)]
        return [np.sort(part) for part in _balanced(order, sizes, num_clients)]
    if scheme == "domain":
        return _by_domain(domains, num_clients, rng)
    if scheme == "dirichlet":
        return _dirichlet(domains, num_clients, alpha, rng)
    raise ValueError(f"unknown partition scheme {scheme!r}")


def _balanced(order: np.ndarray, sizes: np.ndarray, parts: int) -> list[np.ndarray]:
    """`order` cut into `parts` runs of about equal total size."""
    ends = np.cumsum(sizes[order])
    cuts = np.searchsorted(ends, ends[-1] * np.arange(1, parts) / parts)
    return np.split(order, cuts)


def _by_domain(domains: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Client i takes domains i, i+N, ...; clients that share a domain split it evenly."""
    present = np.unique(domains)
    owners: dict[int, list[int]] = {int(d): [] for d in present}
    for client in range(num_clients):
        owners[int(present[client % len(present)])].append(client)
    for i, d in enumerate(present[num_clients:], start=num_clients):
        owners[int(d)].append(i % num_clients)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for d, clients in owners.items():
        members = rng.permutation(np.flatnonzero(domains == d))
        for client, chunk in zip(clients, np.array_split(members, len(clients)), strict=True):
            parts[client].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def _dirichlet(
    domains: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator, tries: int = 50
) -> list[np.ndarray]:
    """Each domain's blocks are shared out in proportions drawn from Dir(alpha).

    Small alphas can leave a client empty; the draw is repeated (as Flower Datasets'
    DirichletPartitioner does) until every client has at least 2 blocks.
    """
    for _ in range(tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for d in np.unique(domains):
            members = rng.permutation(np.flatnonzero(domains == d))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].append(chunk)
        result = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in result) >= 2:
            return result
    raise DataError(
        f"{tries} Dirichlet draws (alpha={alpha}) each left a client with fewer than 2 "
        "blocks; raise data.dirichlet_alpha, give more data or use fewer clients"
    )
