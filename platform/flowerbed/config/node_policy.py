"""An institution's privacy policy: the weakest privacy its node accepts from the server.

A deployed SuperNode states it in its `--node-config` (`max-epsilon=4 privacy-unit=document`,
see `NODE_CONFIG_KEYS`); in simulation `node_policy` states it for every simulated
client, or for the clients `node_policy.clients` lists. The ClientApp checks the
server's instructions against it before it trains (`flowerbed.privacy.policy`).

It fails closed: a deployed node requires DP-SGD at the node unless its operator writes
`require-dp=false`, keeps its losses and counts to itself (`release=minimal`), and accepts
ε up to 10 over its life and δ up to 1e-5 unless it says otherwise; anywhere, stating a
privacy demand (`max-epsilon`, `privacy-unit`, `accountant`, `release=minimal`) requires
DP-SGD, and writing `require-dp=false` beside a cap or unit is refused as a
contradiction. A simulation's
defaults stay those of a study (no demand; `release=auto`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal

from flowerbed.config.rules import SchemaError, Section, at_least, between, positive, require

Release = Literal["minimal", "exact", "auto"]
DEFAULT_MAX_DELTA = 1e-5
"""The largest δ a node accepts unless it says otherwise: the usual choice, well below
1/n for any shard under 100,000 units (the guard also refuses δ ≥ 1/units, for which
the guarantee would allow releasing a unit whole)."""
DEFAULT_MAX_EPSILON = 10.0
"""A deployed node's lifetime ε cap unless it states one (or allows training without DP):
above the platform's default target of 8 and at the upper end of what published DP
training of language models reports; more must be the institution's explicit choice."""
MIN_SECURE_CLIENTS = 3
"""The fewest clients a secure round may sample: with two, each could read the other."""


@dataclass
class NodePolicyConfig(Section):
    """What a client refuses, and what it lets leave the node besides its update."""

    key = "node_policy"
    require_dp: bool | None
    """Refuse to train (or report) unless the node itself runs DP-SGD (privacy=dp_sgd).
    null: required as soon as the policy states a demand (max_epsilon, unit, accountant,
    release=minimal); a deployed node's default is true."""
    require_secure_aggregation: bool
    """Refuse to train unless the update leaves the node masked by secure aggregation
    (the server's `federation.secure_aggregation=secaggplus`)."""
    min_secure_clients: Annotated[int, at_least(MIN_SECURE_CLIENTS)]
    """In a secure round, refuse to send anything unless the coordinator sampled at least
    this many clients; every one is the node's neighbour, and the node then refuses a
    key exchange with another number of public keys (whose owners are the coordinator's
    word; the round's other checks are in `client/secure_checks.py`)."""
    max_epsilon: Annotated[float | None, positive()]
    """The largest lifetime ε the node accepts: a server asking for more is refused, and
    the node's ledger stops the client there whatever the server's budget."""
    max_delta: Annotated[float | None, between(0, 1, open_=True)]
    """The largest δ the node accepts (null: 1e-5, the usual choice; in any case the node
    refuses δ ≥ 1/units, for which the guarantee would allow releasing a unit whole)."""
    unit: Literal["sequence", "document", "user"] | None
    """The smallest privacy unit the node accepts (a user's text holds their documents, a
    document its sequences): `document` refuses sequence-level DP (null: any)."""
    accountant: Literal["prv", "rdp"] | None
    """Refuse any other accountant than this one (null: either)."""
    release: Release
    """What leaves the node besides its update, whatever privacy the server asks for:
    `minimal` (no loss, no exact count: weight 1, planned tokens, ε to 0.01), `exact`
    (exact losses and counts; under DP-SGD marked in the ledger and the run's records as
    outside the guarantee), or `auto` (minimal under DP-SGD, exact otherwise: a study's
    convenience; a deployed node's default is minimal)."""
    clients: list[int] | None
    """Simulation: the clients whose policy this is (null: every client). The others
    accept what the server asks, and release as `release` says."""

    def check(self) -> None:
        stated = self.demands()
        require(
            self.require_dp is not False or not stated,
            f"node_policy.require_dp=false contradicts node_policy.{stated[0] if stated else ''}"
            ": a cap, a unit or an accountant needs DP-SGD at the node; drop one of them",
        )

    def demands(self) -> list[str]:
        """The DP-only demands the policy states: they need DP-SGD at the node."""
        return [k for k in ("max_epsilon", "unit", "accountant") if getattr(self, k) is not None]

    @property
    def requires_dp(self) -> bool:
        """Whether the node refuses to train or report without DP-SGD at the node."""
        if self.require_dp is not None:
            return self.require_dp
        return bool(self.demands()) or self.release == "minimal"

    @property
    def delta_cap(self) -> float:
        return DEFAULT_MAX_DELTA if self.max_delta is None else self.max_delta

    def demands_of(self, partition_id: int) -> NodePolicyConfig:
        """The policy simulated client `partition_id` holds."""
        if self.clients is None or partition_id in self.clients:
            return self
        return accepting_all(self.release)


def accepting_all(release: Release = "auto") -> NodePolicyConfig:
    """A node that accepts what the server asks (and releases as `release` says)."""
    return NodePolicyConfig(None, False, MIN_SECURE_CLIENTS, None, None, None, None, release, None)


NODE_CONFIG_KEYS = {
    "require-dp": "require_dp",
    "require-secure-aggregation": "require_secure_aggregation",
    "min-secure-clients": "min_secure_clients",
    "max-epsilon": "max_epsilon",
    "max-delta": "max_delta",
    "privacy-unit": "unit",
    "accountant": "accountant",
    "release": "release",
}
"""A SuperNode's `--node-config` keys for its policy, and the fields they set."""


def policy_from_node_config(config: Mapping[str, Any]) -> NodePolicyConfig:
    """The policy a SuperNode's node config states; it fails closed: DP-SGD required
    unless `require-dp=false`, `release` minimal, ε at most 10 and δ at most 1e-5 unless
    stated.

    Raises:
        SchemaError: a value is of the wrong kind or out of range; the message names the key.
    """
    from flowerbed.config.loader import ConfigError, build_dataclass

    values: dict[str, Any] = {f.name: None for f in fields(NodePolicyConfig)}
    values |= {"require_dp": True, "require_secure_aggregation": False, "release": "minimal"}
    values["min_secure_clients"] = MIN_SECURE_CLIENTS
    for key, name in NODE_CONFIG_KEYS.items():
        if key in config:
            values[name] = _node_value(config[key])
    if values["require_dp"] is not False and values["max_epsilon"] is None:
        values["max_epsilon"] = DEFAULT_MAX_EPSILON
    try:
        return build_dataclass(NodePolicyConfig, values, "--node-config ")
    except (ConfigError, SchemaError) as err:
        raise SchemaError(f"the SuperNode's privacy policy: {_node_keys(str(err))}") from None


def _node_value(value: Any) -> Any:
    """Node config values come typed (Flower reads them as TOML) or, quoted, as strings:
    `'true'`/`'false'` become booleans and numbers numbers."""
    if not isinstance(value, str):
        return value
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    try:
        return int(value) if value.isdigit() else float(value)
    except ValueError:
        return value


def _node_keys(message: str) -> str:
    """A schema message in the node config's spelling: `max-epsilon`, not `max_epsilon`."""
    for key, name in NODE_CONFIG_KEYS.items():
        message = message.replace(f"node_policy.{name}", key).replace(name, key)
    return message
