"""Run directory layout, metrics files, plots, and Weights & Biases."""

from flowerbed.tracking.layout import RunLayout
from flowerbed.tracking.metrics import MetricsLog

__all__ = ["MetricsLog", "RunLayout"]
