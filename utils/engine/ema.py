"""An exponential moving average of a model's weights (as timm's ModelEmaV2): after
every optimizer step, average = d * average + (1 - d) * weights, for every float
entry of the state dict, BatchNorm statistics included. The decay ramps up as
d_t = min(decay, (1 + t) / (10 + t)), so that the average does not stay anchored
to the random initialisation on the few hundred steps a small dataset gives."""
from __future__ import annotations

import contextlib
from typing import Iterator

import paddle
import paddle.nn as nn

from utils.runtime.distributed import world_size


class WeightAverage:
    def __init__(self, model: nn.Layer, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.average = {name: value.detach().clone() for name, value in model.state_dict().items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @paddle.no_grad()
    def update(self, model: nn.Layer) -> None:
        self.updates += 1
        d = self.current_decay()
        for name, value in model.state_dict().items():
            average = self.average[name]
            if paddle.is_floating_point(value):
                average.set_value(d * average + (1.0 - d) * value)
            else:
                average.set_value(value)

    def synchronize(self) -> None:
        """The same average on every data-parallel rank (their BatchNorm statistics differ)."""
        if world_size() == 1:
            return
        import paddle.distributed as dist

        for value in self.average.values():
            if paddle.is_floating_point(value):
                total = value.clone()
                dist.all_reduce(total)
                value.set_value(total / world_size())

    @contextlib.contextmanager
    def applied(self, model: nn.Layer) -> Iterator[None]:
        """The model carries the averaged weights inside the block, its own ones again after."""
        own = {name: value.detach().clone() for name, value in model.state_dict().items()}
        model.set_state_dict(self.average)
        try:
            yield
        finally:
            model.set_state_dict(own)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "average": {name: value.numpy() for name, value in self.average.items()}}

    def set_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for name, value in state["average"].items():
            self.average[name].set_value(value)
