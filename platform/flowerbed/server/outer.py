"""The server's outer step: from the global weights and the clients' average to new weights.

Every strategy treats `pseudo-gradient = global - average` as a gradient (the clients'
mean update, negated) and takes one optimizer step on the global weights with it:

- `fedavg`: the average itself (an outer SGD step of lr 1, no momentum);
- `fedavgm`: SGD with heavy-ball momentum (Hsu et al. 2019; Flower's FedAvgM rule);
- `diloco`: SGD with Nesterov momentum (Douillard et al. 2023: lr 0.7, momentum 0.9);
- `fedadam`: Adam (Reddi et al. 2021; Flower's FedAdam rule, with Kingma & Ba's bias
  correction at outer step t where Flower uses server_round + 1).

The state (momentum, Adam moments, step) is fp32 on the CPU, keyed by parameter name, and
saved with each checkpoint so a resumed run takes the same steps. Under DP the outer step
is post-processing of the privatised average: it changes no client's ledger.
"""

from __future__ import annotations

import torch

from flowerbed.config import StrategyConfig

Weights = dict[str, torch.Tensor]


class FedAvgOuter:
    """The clients' weighted average becomes the global model; no state."""

    def __init__(self, cfg: StrategyConfig) -> None:
        self.cfg = cfg
        self.state: Weights = {}
        self.steps = 0

    def step(self, current: Weights, average: Weights) -> Weights:
        self.steps += 1
        return average

    def state_dict(self) -> Weights:
        return {**self.state, "steps": torch.tensor(self.steps)}

    def load_state_dict(self, state: Weights) -> None:
        self.steps = int(state.pop("steps"))
        self.state = {k: v.float() for k, v in state.items()}


class MomentumOuter(FedAvgOuter):
    """SGD with heavy-ball momentum on the pseudo-gradient (`fedavgm`).

    Written around the average, `new = average + (g - lr * buffer)`, which is
    `current - lr * buffer` rearranged, so that lr 1 and momentum 0 give FedAvg bit for bit.
    """

    def step(self, current: Weights, average: Weights) -> Weights:
        self.steps += 1
        new: Weights = {}
        for name, avg in average.items():
            gradient = current[name].float() - avg
            buffer = self.state.get(name)
            momentum = self.cfg.outer_momentum
            buffer = gradient.clone() if buffer is None else buffer.mul_(momentum).add_(gradient)
            self.state[name] = buffer
            new[name] = self.move(avg, gradient, buffer)
        return new

    def move(self, avg: torch.Tensor, gradient: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
        return avg + (gradient - self.cfg.outer_lr * buffer)


class NesterovOuter(MomentumOuter):
    """SGD with Nesterov momentum (`diloco`): `new = average + ((1 - lr) g - lr m buffer)`."""

    def move(self, avg: torch.Tensor, gradient: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
        lr, momentum = self.cfg.outer_lr, self.cfg.outer_momentum
        return avg + ((1 - lr) * gradient - (lr * momentum) * buffer)


class AdamOuter(FedAvgOuter):
    """Adam on the clients' mean update `delta = average - current` (FedAdam)."""

    def step(self, current: Weights, average: Weights) -> Weights:
        self.steps += 1
        cfg, t = self.cfg, self.steps
        beta1, beta2 = cfg.outer_momentum, cfg.outer_beta2
        rate = cfg.outer_lr * (1 - beta2**t) ** 0.5 / (1 - beta1**t)
        new: Weights = {}
        for name, avg in average.items():
            x = current[name].float()
            delta = avg - x
            m = self.state.setdefault(f"m/{name}", torch.zeros_like(delta))
            v = self.state.setdefault(f"v/{name}", torch.zeros_like(delta))
            m.mul_(beta1).add_(delta, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(delta, delta, value=1 - beta2)
            new[name] = x + rate * m / (v.sqrt() + cfg.outer_tau)
        return new


OUTER_RULES: dict[str, type[FedAvgOuter]] = {
    "fedavg": FedAvgOuter,
    "fedavgm": MomentumOuter,
    "diloco": NesterovOuter,
    "fedadam": AdamOuter,
}
"""The registry `strategy.name` is looked up in: a new rule is a class and a file in
`conf/strategy/`."""


def outer_optimizer(cfg: StrategyConfig) -> FedAvgOuter:
    """The outer step `strategy.name` asks for: the one place it is looked up."""
    return OUTER_RULES[cfg.name](cfg)
