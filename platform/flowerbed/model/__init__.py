"""The shared causal LM: presets, construction, transport over Flower, and where it runs."""

from flowerbed.model.factory import build_model, model_from_config, num_parameters
from flowerbed.model.runtime import autocast, mean_loss, resolve_device
from flowerbed.model.transport import from_array_record, record_nbytes, to_array_record

__all__ = [
    "autocast",
    "build_model",
    "from_array_record",
    "mean_loss",
    "model_from_config",
    "num_parameters",
    "record_nbytes",
    "resolve_device",
    "to_array_record",
]
