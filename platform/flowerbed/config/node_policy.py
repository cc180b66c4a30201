"""An institution's privacy policy: the weakest privacy its node accepts from the server.

A deployed SuperNode states it in its `--node-config` (`require-dp=true max-epsilon=4`,
see `NODE_CONFIG_KEYS`); in simulation `node_policy` states it for every simulated
client, or for the clients `node_policy.clients` lists. The ClientApp checks the
server's instructions against it before it trains (`flowerbed.privacy.policy`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal

from flowerbed.config.rules import SchemaError, Section, at_least, between, positive

Release = Literal["minimal", "exact"]
MIN_SECURE_CLIENTS = 3
"""The fewest clients a secure round may sample: with two, each could read the other."""


@dataclass
class NodePolicyConfig(Section):
    """What a client refuses, and what it lets leave the node besides its update."""

    key = "node_policy"
    require_dp: bool
    """Refuse to train unless the node itself runs DP-SGD (privacy=dp_sgd)."""
    require_secure_aggregation: bool
    """Refuse to train unless the update leaves the node masked by secure aggregation
    (the server's `federation.secure_aggregation=secaggplus`)."""
    min_secure_clients: Annotated[int, at_least(MIN_SECURE_CLIENTS)]
    """In a secure round, refuse to send anything unless the coordinator sampled at least
    this many clients (its word: the node sees only its neighbours; the round's other
    checks are in `client/secure_checks.py`)."""
    max_epsilon: Annotated[float | None, positive()]
    """The largest lifetime ε the node accepts: a server asking for more is refused, and
    the node's ledger stops the client there whatever the server's budget."""
    max_delta: Annotated[float | None, between(0, 1, open_=True)]
    """The largest δ the node accepts."""
    unit: Literal["sequence", "document", "user"] | None
    """The smallest privacy unit the node accepts (a user's text holds their documents, a
    document its sequences): `document` refuses sequence-level DP (null: any)."""
    accountant: Literal["prv", "rdp"] | None
    """Refuse any other accountant than this one (null: either)."""
    release: Release
    """Under DP-SGD, what leaves the node besides the noised update: `minimal` (no loss,
    no exact count: weight 1, planned tokens, ε to 0.01) or `exact` (exact losses and
    counts, marked in the ledger and the run's records as outside the guarantee)."""
    clients: list[int] | None
    """Simulation: the clients whose policy this is (null: every client). The others
    accept what the server asks, and release as `release` says."""

    def demands_of(self, partition_id: int) -> NodePolicyConfig:
        """The policy simulated client `partition_id` holds."""
        if self.clients is None or partition_id in self.clients:
            return self
        return accepting_all(self.release)


def accepting_all(release: Release = "minimal") -> NodePolicyConfig:
    """A node that accepts what the server asks (and releases as `release` says)."""
    return NodePolicyConfig(False, False, MIN_SECURE_CLIENTS, None, None, None, None, release, None)


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
    """The policy a SuperNode's node config states; absent keys accept what the server asks
    (and `release` defaults to `minimal`).

    Raises:
        SchemaError: a value is of the wrong kind or out of range; the message names the key.
    """
    from flowerbed.config.loader import ConfigError, build_dataclass

    values: dict[str, Any] = {f.name: None for f in fields(NodePolicyConfig)}
    values |= {"require_dp": False, "require_secure_aggregation": False, "release": "minimal"}
    values["min_secure_clients"] = MIN_SECURE_CLIENTS
    for key, name in NODE_CONFIG_KEYS.items():
        if key in config:
            values[name] = _node_value(config[key])
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
