"""The training state saved at the end of every epoch, so that an interrupted run
continues from its last finished epoch instead of starting the fold again."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import paddle
import paddle.nn as nn

from utils.engine.ema import WeightAverage
from utils.runtime.errors import UserError
from utils.runtime.weights_file import load_weights_file, save_weights_file


class EpochCheckpoint:
    """One file, replaced atomically at the end of every epoch: the model's weights,
    the optimizer's moments and learning-rate schedule position, the weight average
    (when there is one), and the training loop's own progress (a plain dict).

    Paddle keys the optimizer's state by parameter names it generates per process.
    Build the model and the optimizer inside `paddle.utils.unique_name.guard()`, so
    that a resumed process generates the same names.
    """

    def __init__(self, path: Path, model: nn.Layer, optimizer: paddle.optimizer.Optimizer,
                 average: Optional[WeightAverage] = None, companions: Optional[dict[str, nn.Layer]] = None) -> None:
        self.path = path
        self.model = model
        self.optimizer = optimizer
        self.average = average
        self.companions = companions or {}  # layers that train with the model, by name

    def save(self, progress: dict[str, Any]) -> None:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "progress": progress}
        if self.average is not None:
            state["average"] = self.average.state_dict()
        for name, layer in self.companions.items():
            state[name] = layer.state_dict()
        save_weights_file(self.path, state)  # a process killed while saving leaves the previous epoch's state

    def load(self) -> Optional[dict[str, Any]]:
        """The saved progress, with the model and optimizer restored; None when nothing is saved."""
        if not self.path.is_file():
            return None
        try:
            state = load_weights_file(self.path)
            self.model.set_state_dict(state["model"])
            self.optimizer.set_state_dict(state["optimizer"])
            if self.average is not None:
                self.average.set_state_dict(state["average"])
            for name, layer in self.companions.items():
                layer.set_state_dict(state[name])
        except Exception as error:  # any unreadable file means the same to the user
            raise UserError(f"the saved training state {self.path} cannot be read ({type(error).__name__}); "
                            "delete it to train this model again from the start") from None
        return state["progress"]
