"""What every benchmark here shares: its command line, GPU sync, and the setting it prints."""

from __future__ import annotations

import argparse

import torch

from flowerbed.model import num_parameters


def bench_parser(doc: str, steps: int, repeats: int) -> argparse.ArgumentParser:
    """Model size, batch shape, measurement length and device, same flags in every benchmark."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=steps, help="training steps per measurement")
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--device", default="auto")
    return parser


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def describe(args: argparse.Namespace, model: torch.nn.Module, device: torch.device) -> str:
    """One line naming the machine and the setting a table was measured in."""
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    return (
        f"device: {where}; model {args.preset} ({num_parameters(model):,} parameters, "
        f"vocab {args.vocab}); batch {args.batch_size} x seq {args.seq_len}; "
        f"{args.steps} steps x {args.repeats} repeats; "
        f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}"
    )
