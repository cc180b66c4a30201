"""One client round, framework-agnostic: from the instructions and global weights to a reply.

First the node's policy judges the server's privacy settings: a refusal is the reply.
Then the round holds the node's state directory alone (`client/state_dir.py`). Train:
plan the round (continual state, pool, schedule), report the held-out losses of the
weights received when asked, ask the privacy guard for a permit (which writes the
release ahead in the ledger, with the nonce its draws are keyed by), train, mark the
release done, reply with what the node's policy lets leave (`privacy.release`; the
exact values go to the node's own log). Evaluate (the final model only): the
held-out loss of the global weights on every experience that has arrived. `client.app`
only translates Flower Messages to these calls and back.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from numpy.random import Generator

from flowerbed.client.node import Node
from flowerbed.client.randomness import round_randomness
from flowerbed.client.round_plan import RoundPlan, plan_round
from flowerbed.client.state_dir import own_state_dir
from flowerbed.client.trainer import Trainer, TrainResult, make_trainer
from flowerbed.config import PrivacyConfig
from flowerbed.continual.state import FILENAME as CONTINUAL_STATE
from flowerbed.continual.stream import arrived, scan_experiences
from flowerbed.model.adapter import add_adapter, check_base, load_shared_state, shared_state
from flowerbed.model.factory import base_from_architecture, model_from_architecture
from flowerbed.model.inner_state import restore_inner_state, save_inner_state
from flowerbed.model.runtime import mean_loss
from flowerbed.privacy.correlated_noise import CorrelatedNoise
from flowerbed.privacy.cyclic import Cycle
from flowerbed.privacy.guard import RoundPermit
from flowerbed.privacy.ledger import FILENAME as LEDGER
from flowerbed.privacy.ledger import PrivacyLedger
from flowerbed.privacy.modes import privacy_mode
from flowerbed.privacy.policy import delta_refusal, node_budget, refusal
from flowerbed.privacy.release import exact_under_dp, log_exact, released_evaluate, released_train
from flowerbed.protocol import (
    EvaluateInstructions,
    EvaluateReply,
    ModelSpec,
    TrainInstructions,
    TrainReply,
)

log = logging.getLogger("flowerbed")


def train_round(
    job: TrainInstructions, weights: dict[str, torch.Tensor], node: Node
) -> tuple[TrainReply, dict[str, torch.Tensor] | None]:
    """Local steps from the global weights, unless the node's policy refuses the server's
    privacy settings; the reply that leaves the node and the new weights (None: none)."""
    masked = job.secure_max_weight is not None
    refused = refusal(node.policy, job.privacy, node.partition_id, node.deployed, masked)
    if refused:
        log.warning("%s", refused)
        return TrainReply(node.partition_id, 0, 0, 0.0, refused=refused), None
    mirror = node.ledger_mirror()
    with own_state_dir(node.state_dir, node.data_dir, node.deployed, mirror):
        exact, trained, planned_tokens = _train(job, weights, node, mirror)
        log_exact(node.state_dir, "train", job.round, exact)
        if exact_under_dp(node.policy, job.privacy):
            _mark_exact_release(job.privacy, node, job.round, mirror)
    return released_train(exact, node.policy, job.privacy, planned_tokens), trained


def _train(
    job: TrainInstructions, weights: dict[str, torch.Tensor], node: Node, mirror: Path
) -> tuple[TrainReply, dict[str, torch.Tensor] | None, int]:
    """The round as the node sees it: its exact reply, the new weights, the planned tokens."""
    device = node.torch_device()
    plan = plan_round(job, node)
    model = global_model(job.model, weights, node.base_model)
    heldout = None
    if job.evaluate_incoming:  # the weights received are round `round - 1`'s model
        heldout = heldout_losses(job.evaluation(job.round - 1), model, node, device)
    mode = privacy_mode(job.privacy)
    records = plan.pool.num_records
    refused = delta_refusal(job.privacy, node.partition_id, records)
    if refused:
        log.warning("%s", refused)
        return TrainReply(node.partition_id, 0, 0, 0.0, refused=refused), None, 0
    budget = node_budget(node.policy, job.privacy)
    guard = mode.guard(job.privacy, node.state_dir, budget, mirror)
    train = job.train.in_round(job.round)
    steps = train.local_steps
    planned_tokens = steps * train.batch_size * plan.pool.seq_len
    request = release_request(job, weights, node) if mode.clients_private else ""
    rate = plan.pool.accounting_rate(job.train.batch_size)
    permit = guard.permit(job.round, request, rate, steps, plan.planned)
    if not permit.allowed:
        reply = TrainReply(
            node.partition_id,
            0,
            0,
            0.0,
            epsilon=guard.epsilon,
            budget_exhausted=True,
            heldout=heldout,
        )
        return reply, None, planned_tokens
    draws = round_randomness(
        job.privacy, job.seed, job.round, node.partition_id, node.state_dir, permit.nonce
    )
    cycle = Cycle(permit.bands, draws.cycle_key)
    if permit.bands > 1:  # banded noise: each step samples one class of records
        plan.pool.cycle = cycle
    if node.ranks > 1:  # the batches drawn here, trained on the node's ranks
        from flowerbed.client.ranked_round import train_on_ranks

        result, trained = train_on_ranks(job, weights, node, plan, permit, draws, device, cycle)
    else:
        correlated = kept_noise(permit, node.state_dir, job.round, cycle.fingerprint)
        trainer = make_trainer(
            model, train, job.privacy, device, permit, draws.noise, correlated=correlated
        )
        result = _train_here(trainer, job, node, plan, draws.sampler)
        if correlated is not None:
            correlated.save(node.state_dir, job.round, permit.nonce or "")
        trained = shared_state(trainer.model)
    epsilon = guard.record(permit)  # written ahead; now done
    reply = TrainReply(
        partition_id=node.partition_id,
        num_examples=1 if mode.uniform_weights else records,
        tokens=result.tokens,
        train_seconds=result.seconds,
        train_loss=result.loss,
        epsilon=epsilon,
        noise_multiplier=permit.noise_multiplier,
        heldout=heldout,
    )
    return reply, trained, planned_tokens


def kept_noise(
    permit: RoundPermit, state_dir: Path, round_: int, classes: str
) -> CorrelatedNoise | None:
    """The banded mechanism's buffers as the node left them before `round_`, if made
    under the same sampling `classes` (a fingerprint; else empty), or None (DP-SGD)."""
    if permit.coefficients is None:
        return None
    after = permit.previous_nonce
    return CorrelatedNoise.resume(permit.coefficients, state_dir, round_, after, classes)


def release_request(job: TrainInstructions, weights: dict[str, torch.Tensor], node: Node) -> str:
    """A digest of everything a release is computed from: the instructions, the weights
    received, the node's continual state (arrivals, buffer) and its data files (path,
    size, modification time, inode). A round re-run after a crash may reuse its
    release's nonce (and so its noise) only for the very same one."""
    digest = hashlib.sha256(json.dumps(job.to_record(), sort_keys=True, default=str).encode())
    for name, tensor in weights.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)
    state = node.state_dir / CONTINUAL_STATE
    digest.update(state.read_bytes() if state.is_file() else b"")
    for experience in arrived(scan_experiences(node.data_dir), job.round, job.arrival_every):
        for file in sorted(experience.folder.iterdir()):  # changed content: another file
            facts = file.stat()
            digest.update(f"{file}:{facts.st_size}:{facts.st_mtime_ns}:{facts.st_ino}".encode())
    return digest.hexdigest()


def _train_here(
    trainer: Trainer, job: TrainInstructions, node: Node, plan: RoundPlan, sampler: Generator
) -> TrainResult:
    """The round's local steps in this process, between the kept inner state's load and save."""
    if job.keep_inner_state:
        restore_inner_state(trainer.optimizer, trainer.model, node.state_dir, job.round)
    result = trainer.train(plan.pool, plan.schedule, sampler)
    if job.keep_inner_state:
        save_inner_state(trainer.optimizer, trainer.model, node.state_dir, job.round)
    return result


def evaluate_round(
    job: EvaluateInstructions, weights: dict[str, torch.Tensor], node: Node
) -> EvaluateReply:
    """Loss of the global weights on the held-out blocks of every experience seen so far,
    as the node's policy lets it leave."""
    refused = refusal(node.policy, job.privacy, node.partition_id, node.deployed)
    if refused:
        log.warning("%s", refused)
        return EvaluateReply(node.partition_id, 0, refused=refused)
    device = node.torch_device()
    model = global_model(job.model, weights, node.base_model)
    mirror = node.ledger_mirror()
    with own_state_dir(node.state_dir, node.data_dir, node.deployed, mirror):
        exact = heldout_losses(job, model, node, device)
        log_exact(node.state_dir, "evaluate", job.round, exact)
        if exact_under_dp(node.policy, job.privacy):
            _mark_exact_release(job.privacy, node, job.round, mirror)
    return released_evaluate(exact, node.policy, job.privacy)


def _mark_exact_release(privacy: PrivacyConfig, node: Node, round_: int, mirror: Path) -> None:
    """The ledger's note that this round's exact metrics left the node."""
    path = node.state_dir / LEDGER
    ledger = PrivacyLedger.open(path, privacy.delta, privacy.accountant, privacy.unit, mirror)
    ledger.note_exact_release(path, round_, mirror)


def heldout_losses(
    job: EvaluateInstructions, model: torch.nn.Module, node: Node, device: torch.device
) -> EvaluateReply:
    """The mean held-out loss over the experiences arrived by `job.round`, and each one's."""
    model.to(device)
    losses, sizes = [], []
    for experience in arrived(scan_experiences(node.data_dir), job.round, job.arrival_every):
        heldout = experience.shard().heldout
        losses.append(mean_loss(model, heldout, job.batch_size, job.eval_batches, device))
        sizes.append(len(heldout))
    return EvaluateReply(
        partition_id=node.partition_id,
        num_examples=sum(sizes),
        heldout_loss=float(np.average(losses, weights=sizes)),
        experience_losses=losses if job.per_experience else None,
        experience_sizes=sizes if job.per_experience else None,
    )


def global_model(
    spec: ModelSpec, weights: dict[str, torch.Tensor], own_base: str | None = None
) -> torch.nn.Module:
    """The model the server sent: its weights, or the client's own base (`own_base`, else
    where the server loaded it) plus the adapters it sent."""
    if not spec.adapter.enabled:
        return model_from_architecture(spec.architecture, weights)
    pretrained = (own_base or spec.base_source) if spec.base_source else None
    base = base_from_architecture(spec.architecture, pretrained, spec.base_seed)
    source = pretrained or f"the preset's initialisation with seed {spec.base_seed}"
    check_base(base, spec.base_hash or "", source)
    model = add_adapter(base, spec.adapter)
    load_shared_state(model, weights)
    return model
