"""The Flower ClientApp: translate Messages to tensors and back, around the local trainers.

Every Message is handled from scratch (model built, weights loaded, shard memory-mapped):
in deployment each Message runs in a fresh process, and simulation behaves the same.
What must outlive a Message (the privacy ledger, the continual state and replay buffer)
lives in the node's state directory.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flowerbed.client.job import ClientJob
from flowerbed.client.round_data import RoundData, arrived_experiences, round_data
from flowerbed.client.trainer import LocalTrainer
from flowerbed.model.factory import model_from_config
from flowerbed.model.runtime import mean_loss
from flowerbed.model.transport import from_array_record, to_array_record

app = ClientApp()


def _model_for(job: ClientJob, msg: Message) -> torch.nn.Module:
    from transformers import AutoConfig

    spec = dict(job.model_config)
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    model = model_from_config(config)
    model.load_state_dict(from_array_record(msg.content["arrays"], job.transport_dtype))
    return model


def _reply(msg: Message, metrics: dict, model: torch.nn.Module | None, job: ClientJob) -> Message:
    content = RecordDict({"metrics": MetricRecord({**metrics, "partition-id": job.partition_id})})
    if model is not None:
        content["arrays"] = to_array_record(model.state_dict(), job.transport_dtype)
    return Message(content, reply_to=msg)


def _job(msg: Message, context: Context) -> ClientJob:
    """Decode the Message and give torch this client's share of the cores."""
    job = ClientJob.from_message(msg.content["config"], context)
    if job.threads > 0:
        torch.set_num_threads(job.threads)
    return job


@app.train()
def train(msg: Message, context: Context) -> Message:
    """K local steps from the global weights; reply with the new weights and metrics."""
    job = _job(msg, context)
    data = round_data(job)
    model = _model_for(job, msg)
    rng = np.random.default_rng([job.seed, job.round, job.partition_id])
    if job.privacy.mode == "dp_sgd":
        return _train_private(msg, job, data, model, rng)
    trainer = LocalTrainer(model, job.train, job.device, data.schedule_steps)
    result = trainer.train(data.pool, data.first_step, rng)
    # Flower's user-level DP accountant needs equal client weights.
    uniform = bool(msg.content["config"].get("uniform-weights", False))
    metrics = {
        "num-examples": 1 if uniform else data.pool.num_records,
        "train_loss": result.loss,
        "tokens": result.tokens,
        "train_seconds": result.seconds,
    }
    return _reply(msg, metrics, trainer.model, job)


def _train_private(msg: Message, job: ClientJob, data: RoundData, model, rng) -> Message:
    """DP-SGD, with the round written to the ledger before the update leaves.

    The ledger records the highest rate any record (new or replayed) is drawn with.
    """
    from flowerbed.client.private_trainer import PrivateTrainer
    from flowerbed.privacy.ledger import FILENAME, PrivacyLedger
    from flowerbed.privacy.planning import life_noise_multiplier

    cfg, steps = job.privacy, job.train.local_steps
    path = job.state_dir / FILENAME
    ledger = PrivacyLedger.open(path, cfg.delta, cfg.accountant)
    q = data.pool.accounting_rate(job.train.batch_size)
    sigma = life_noise_multiplier(ledger, cfg, data.planned)
    budget = cfg.budget
    if budget is not None and ledger.epsilon_after(sigma, q, steps) > budget:
        ledger.save(path)
        return _reply(
            msg, {"num-examples": 0, "budget-exhausted": 1, "epsilon": ledger.epsilon}, None, job
        )
    trainer = PrivateTrainer(
        model,
        job.train,
        cfg,
        job.device,
        data.schedule_steps,
        sigma,
        data.pool,
        noise_seed=int(rng.integers(2**62)),
    )
    result = trainer.train(data.first_step, rng)
    spent = ledger.record(path, job.round, sigma, q, steps)
    metrics = {
        "num-examples": data.pool.num_records,
        "train_loss": result.loss,
        "tokens": result.tokens,
        "train_seconds": result.seconds,
        "epsilon": spent,
        "noise_multiplier": sigma,
    }
    return _reply(msg, metrics, trainer.model, job)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Loss of the global weights on the held-out blocks of every experience seen so far."""
    job = _job(msg, context)
    model = _model_for(job, msg).to(job.device)
    batch, batches = job.train.batch_size, job.train.eval_batches
    losses, sizes = [], []
    for experience in arrived_experiences(job):
        heldout = experience.shard().heldout
        losses.append(mean_loss(model, heldout, batch, batches, job.device))
        sizes.append(len(heldout))
    metrics = {
        "num-examples": sum(sizes),
        "heldout_loss": float(np.average(losses, weights=sizes)),
    }
    if job.continual.mode != "off":
        metrics |= {"experience_losses": losses, "experience_sizes": sizes}
    return _reply(msg, metrics, None, job)
