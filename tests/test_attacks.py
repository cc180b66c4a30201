"""Every privacy and security promise, played by the party that would break it.

Each test runs an attack the way its attacker would, with the project's own code and
what that party can see: a curious coordinator (it sees every reply, chooses the
instructions, the sample and the SecAgg+ parameters), a hostile institution (it chooses
its own reply), a local user on a node's machine (it reads what file modes allow) and a
careless operator (two processes on one state directory, a restored backup). The threat
model these tests stand for is in docs/privacy.md ("Who can learn what").
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    generate_shared_key,
)
from flwr.supercore.primitives.asymmetric import (
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from flowerbed.client.secure import secure_aggregation_mod
from flowerbed.client.secure_masking import masked_update
from flowerbed.client.secure_state import SecAggState
from flowerbed.config import ConfigError, compose_config
from flowerbed.config.node_policy import accepting_all
from flowerbed.keystream import KeyStream
from flowerbed.model.transport import ndarray_view
from flowerbed.protocol import TrainReply
from flowerbed.secagg.contract import MASKED, WEIGHT_FACTOR, Key, RoundSetup, Stage
from flowerbed.secagg.masks import PAIRWISE_MASK, SELF_MASK, mask_key, self_mask
from flowerbed.secagg.quantization import quantize
from flowerbed.server.secure_masks import (
    SecureAggregationFailed,
    mean_update,
)
from tests.secure_round import (
    as_coordinator,
    federation,
    node_of,
    secagg,
    secure_round,
    stage,
    stage_message,
)

# --- secure aggregation (SecAgg+) ---

MOD = 2**32
BITS = 22
WEIGHT_ONE = 2**BITS
"""The weight factor of weight 1: the first masked value, known to the coordinator."""
SLICE = 2**12
"""The coordinator's search per unknown pairwise mask: seeds around the true folded seed
(the full attack searches 2^28 per mask: ~9 core-minutes, measured)."""


def folded(key: bytes) -> int:
    """What Flower's `pseudo_rand_gen` kept of a key: its 32-bit words XORed together."""
    seed = 0
    for i in range(0, len(key), 4):
        seed ^= int.from_bytes(key[i : i + 4], "little")
    return seed


def flower_mask(seed: int, words: int) -> np.ndarray:
    """The mask Flower's generator (which flowerbed used before) draws from a 32-bit seed,
    laid out as its mod laid out an update: the weight factor, then the tensor."""
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    first, rest = pseudo_rand_gen(seed.to_bytes(4, "little"), MOD, [(1,), (words - 1,)])
    return np.concatenate([first, rest]).astype(np.int64)


def meet_in_the_middle(
    masked: np.ndarray, own_mask: np.ndarray, signs: tuple[int, int], seeds: tuple[list, list]
) -> list[np.ndarray]:
    """The coordinator's attack on a survivor with two unknown pairwise masks: its masked
    update minus its self mask (rebuilt at unmask, by design) and the known weight factor
    leaves sign_b x mask_b + sign_c x mask_c in the first word. A table of mask_b's first
    word over one seed space, looked up for each seed of mask_c, finds the pair; the
    updates the candidate pairs reveal, where every value is a plausible quantized one."""
    target = int(masked[0] - WEIGHT_ONE - own_mask[0]) % MOD
    table: dict[int, list[int]] = {}
    for seed in seeds[0]:
        table.setdefault(int(flower_mask(seed, 2)[0]), []).append(seed)
    revealed = []
    for seed_c in seeds[1]:
        need = signs[0] * (target - signs[1] * int(flower_mask(seed_c, 2)[0])) % MOD
        for seed_b in table.get(need, []):
            words = len(masked)
            pairwise = signs[0] * flower_mask(seed_b, words) + signs[1] * flower_mask(seed_c, words)
            update = (masked.astype(np.int64) - own_mask - pairwise) % MOD
            if update[0] == WEIGHT_ONE and (update[1:] <= WEIGHT_ONE).all():
                revealed.append(update[1:])
    return revealed


def around(seed: int) -> list[int]:
    """A reduced seed space that holds `seed`."""
    return [seed ^ j for j in range(SLICE)]


def three_key_pairs() -> dict[int, tuple[bytes, bytes]]:
    """Nodes 1, 2 and 3's first key pairs (private, public), as the set-up makes them."""
    pairs = {}
    for node in (1, 2, 3):
        private, public = generate_key_pairs()
        pairs[node] = (private_key_to_bytes(private), public_key_to_bytes(public))
    return pairs


def ecdh(private_pem: bytes, public_pem: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key(private_pem, password=None)
    public = serialization.load_pem_public_key(public_pem)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return private.exchange(ec.ECDH(), public)


def test_the_coordinator_cannot_find_a_three_client_rounds_masks_by_searching_folded_seeds():
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

    pairs, words = three_key_pairs(), 9
    signs = (1, -1)  # node 2 adds its mask with node 1 and subtracts its mask with node 3
    # before: node 2's update masked as Flower's mod masked it (keys are base64 text)
    keys = [
        generate_shared_key(bytes_to_private_key(pairs[2][0]), bytes_to_public_key(pairs[n][1]))
        for n in (1, 3)
    ]
    quantized = np.random.default_rng(0).integers(0, WEIGHT_ONE, words - 1)
    own = flower_mask(folded(os.urandom(32)), words)
    pairwise = signs[0] * flower_mask(folded(keys[0]), words)
    pairwise += signs[1] * flower_mask(folded(keys[1]), words)
    masked = (np.concatenate([[WEIGHT_ONE], quantized]) + own + pairwise) % MOD
    seeds = (around(folded(keys[0])), around(folded(keys[1])))
    revealed = meet_in_the_middle(masked, own, signs, seeds)
    assert any(np.array_equal(r, quantized) for r in revealed)  # the attack works on it
    # now: node 2's update masked by flowerbed's mod, the same search around the folded
    # seeds of the keys its masks really come from
    seed = os.urandom(32)
    state = SecAggState(
        stage=Stage.COLLECT,
        node_id=2,
        setup=RoundSetup(3, 3, 2, 1.0, BITS, 1.0),
        sk1=pairs[2][0],
        mask_seed=seed,
        neighbours={n: (pairs[n][1], b"") for n in (1, 2, 3)},
        seed_shares={1: b"", 2: b"", 3: b""},
    )
    update = np.random.default_rng(1).uniform(-0.5, 0.5, words - 1).astype(np.float32)
    record = masked_update(state, ArrayRecord({"w": Array(update)}), 1.0)
    masked = np.concatenate([ndarray_view(record[n]) for n in (WEIGHT_FACTOR, "w")])
    own = self_mask(seed).words(words).astype(np.int64)  # what unmasking gives the coordinator
    keys = [mask_key(ecdh(pairs[2][0], pairs[n][1]), PAIRWISE_MASK) for n in (1, 3)]
    seeds = (around(folded(keys[0])), around(folded(keys[1])))
    assert meet_in_the_middle(masked.astype(np.int64), own, signs, seeds) == []


def flipped(secret: bytes, bit: int) -> bytes:
    out = bytearray(secret)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_a_mask_depends_on_every_bit_of_its_key():
    secret = os.urandom(32)
    secrets = [secret, *(flipped(secret, bit) for bit in range(256))]
    for purpose in (SELF_MASK, PAIRWISE_MASK):
        masks = {KeyStream(mask_key(s, purpose)).words(4).tobytes() for s in secrets}
        assert len(masks) == 257, purpose  # every flip its own mask
    # Flower's generator gave the same mask for the same bit flipped in any of the 8 words
    before = {flower_mask(folded(s), 4).tobytes() for s in secrets}
    assert len(before) == 33


FEWER = "fewer than the 3 its policy requires (min-secure-clients)"
LYING = "so a coordinator telling neighbours different stories could rebuild both of its secrets"
ALONE = "fewer than the 2 without which the sum gives its update away"


def never_trains(msg: Message, context: Context) -> Message:
    raise AssertionError("the node trained in a round it should have refused")


@pytest.mark.parametrize(
    ("sample", "neighbours", "threshold", "refusal"),
    [
        (1, 1, 1, f"the coordinator sampled 1 client(s), {FEWER}"),
        (2, 2, 1, f"the coordinator sampled 2 client(s), {FEWER}"),
        (3, 3, 1, f"the threshold 1 is not above half of its 3 neighbours, {LYING}"),
        (5, 2, 2, f"it would share masks with 1 other client(s), {ALONE}"),
    ],
)
def test_a_node_refuses_a_secure_round_it_cannot_hide_in_before_it_sends_a_key(
    monkeypatch, sample, neighbours, threshold, refusal
):
    as_coordinator(monkeypatch)
    masked_only = dataclasses.replace(accepting_all(), require_secure_aggregation=True)
    mod = secure_aggregation_mod(node_of(masked_only))
    context = Context(1, 101, {"partition-id": 0}, RecordDict(), {})
    setup = RoundSetup(sample, neighbours, threshold, 1.0, BITS, 1.0)
    reply = mod(stage_message(Stage.SETUP, setup.to_config()), context, never_trains)
    assert stage(reply) is None  # no public key left the node: only its refusal
    refused = TrainReply.from_content(reply.content).refused
    assert refused == f"client 0 refuses the secure round: {refusal}"
    # the coordinator carries on as if the node had set up: it gets nothing more
    own = public_key_to_bytes(generate_key_pairs()[1])
    later = {
        Stage.SHARE_KEYS: {Key.NODE_IDS: [101], Key.PUBLIC_KEYS_1: [own], Key.PUBLIC_KEYS_2: [own]},
        Stage.COLLECT: {Key.SOURCES: [], Key.CIPHERTEXTS: []},
        Stage.UNMASK: {Key.ACTIVE: [101], Key.DEAD: []},
    }
    for name, config in later.items():
        with pytest.raises(ValueError, match="expected the setup stage"):
            mod(stage_message(name, config), context, never_trains)


def test_a_node_holds_the_coordinator_to_the_neighbours_it_announced(monkeypatch):
    as_coordinator(monkeypatch)
    mod = secure_aggregation_mod(node_of(accepting_all()))
    context = Context(1, 101, {"partition-id": 0}, RecordDict(), {})
    setup = RoundSetup(3, 3, 2, 1.0, BITS, 1.0)
    keys = mod(stage_message(Stage.SETUP, setup.to_config()), context, never_trains)
    config = keys.content.config_records["secagg"]
    alone = {Key.NODE_IDS: [101], Key.PUBLIC_KEYS_1: [config[Key.PUBLIC_KEY_1]]}
    alone[Key.PUBLIC_KEYS_2] = [config[Key.PUBLIC_KEY_2]]
    reply = mod(stage_message(Stage.SHARE_KEYS, alone), context, never_trains)
    assert stage(reply) is None  # no share of its secrets left the node
    assert TrainReply.from_content(reply.content).refused == (
        "client 0 refuses the secure round: the coordinator sent the keys of 1 neighbour(s), "
        "not the 3 the set-up announced"
    )


def test_a_node_asked_for_both_secrets_of_a_neighbour_refuses_and_the_round_says_why(
    monkeypatch,
):
    as_coordinator(monkeypatch)
    updates = [{"w": np.full(4, 0.1 * i, np.float32)} for i in range(3)]
    grid = federation(updates)

    def both_lists(message: Message) -> Message:  # the coordinator's lie at unmask
        if stage(message) == Stage.UNMASK:
            config = message.content.config_records["secagg"]
            config[Key.DEAD] = list(config[Key.ACTIVE])
        return message

    grid.lie = both_lists
    with pytest.raises(SecureAggregationFailed, match="as both active and dropped out"):
        secure_round(grid, secagg(), {"w": (4,)})
    unmask_replies = [r for r in grid.received if stage(r) == Stage.UNMASK]
    assert unmask_replies == []  # no node sent a share


@pytest.mark.parametrize("claimed", [WEIGHT_ONE * 1000, 0])
def test_a_client_writing_a_weight_it_does_not_have_gets_the_rounds_sum_rejected(
    monkeypatch, claimed
):
    as_coordinator(monkeypatch)
    updates = [{"w": np.full(4, 0.1 * i, np.float32)} for i in range(3)]
    grid = federation(updates)

    def hostile(reply: Message) -> Message:  # client 1 adds to its own masked weight
        if reply.metadata.src_node_id == 102 and stage(reply) == Stage.COLLECT:
            record = reply.content.array_records[MASKED]
            factor = ndarray_view(record[WEIGHT_FACTOR]).astype(np.int64)
            record[WEIGHT_FACTOR] = Array(((factor + claimed - WEIGHT_ONE) % MOD).astype(np.uint32))
        return reply

    grid.tamper = hostile
    secure = secure_round(grid, secagg(), {"w": (4,)})
    assert secure.mean_update is None
    assert secure.rejected is not None and secure.rejected.endswith("the round's sum is rejected")
    reason = "more than 3 client(s) x 2^22" if claimed else "but 3 of the 3 survivors trained"
    assert reason in secure.rejected


def test_the_largest_allowed_round_sums_every_client_at_the_clipping_range_without_wrapping():
    with pytest.raises(ConfigError, match=r"1024 clients of secagg\.quantization_bits=22 overflow"):
        compose_config("federation.secure_aggregation=secaggplus", "federation.num_clients=1024")
    cfg = compose_config("federation.secure_aggregation=secaggplus", "federation.num_clients=1023")
    clients, rng = 1023, np.random.default_rng(0)
    edge = np.array([5.0, -5.0, 1.0, -1.0], np.float32)  # clipped to +-1, or exactly at it
    total = np.zeros(4, np.uint32)
    for _ in range(clients):
        np.add(total, quantize(edge, WEIGHT_ONE, 1.0, BITS, rng), out=total)
    sums = {WEIGHT_FACTOR: np.array([clients * WEIGHT_ONE], np.uint32), "w": total}
    mean, rejected = mean_update(sums, clients, clients, cfg.secagg)
    assert rejected is None and mean is not None
    assert np.array_equal(mean["w"], [1.0, -1.0, 1.0, -1.0])
    # one client more and the weights alone wrap to 0 (what 1,024 clients did before)
    assert (clients + 1) * WEIGHT_ONE % MOD == 0
