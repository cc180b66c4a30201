"""The Flower ClientApp: translate Messages to tensors and back, around the local trainer.

Every Message is handled from scratch (model built, weights loaded, shard memory-mapped):
in deployment each Message runs in a fresh process, and simulation behaves the same.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flowerbed.client.job import ClientJob
from flowerbed.client.trainer import LocalTrainer
from flowerbed.data.prepare import ClientShard
from flowerbed.model.factory import model_from_config
from flowerbed.model.runtime import mean_loss
from flowerbed.model.transport import from_array_record, to_array_record

app = ClientApp()


def _model_for(job: ClientJob, msg: Message):
    from transformers import AutoConfig

    spec = dict(job.model_config)
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    model = model_from_config(config)
    model.load_state_dict(from_array_record(msg.content["arrays"], job.transport_dtype))
    return model


@app.train()
def train(msg: Message, context: Context) -> Message:
    """K local steps from the global weights; reply with the new weights and metrics."""
    job = ClientJob.from_message(msg.content["config"], context)
    shard = ClientShard.load(job.data_dir)
    trainer = LocalTrainer(_model_for(job, msg), job.train, job.device, job.total_steps)
    rng = np.random.default_rng([job.seed, job.round, job.partition_id])
    result = trainer.train(shard.train, job.first_step, rng)
    metrics = MetricRecord(
        {
            "num-examples": len(shard.train),
            "train_loss": result.loss,
            "tokens": result.tokens,
            "train_seconds": result.seconds,
            "partition-id": job.partition_id,
        }
    )
    arrays = to_array_record(trainer.model.state_dict(), job.transport_dtype)
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Loss of the global weights on this client's held-out blocks."""
    job = ClientJob.from_message(msg.content["config"], context)
    shard = ClientShard.load(job.data_dir)
    model = _model_for(job, msg).to(job.device)
    loss = mean_loss(model, shard.heldout, job.train.batch_size, job.train.eval_batches, job.device)
    metrics = MetricRecord(
        {"num-examples": len(shard.heldout), "heldout_loss": loss, "partition-id": job.partition_id}
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
