"""A Lightning progress bar over RL steps that shows reward, acceptance, mismatch KL and,
with asynchronous rollouts, their staleness."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from tqdm.auto import tqdm

__all__ = ["RLProgressBar"]

_SHOWN = {
    "reward/mean": "reward",
    "eval/accuracy": "eval",
    "obrs/accept_rate": "accept",
    "mismatch/kl_k3": "kl",
    "mismatch/kl_k3_after": "kl_after",
    "async/staleness": "stale",
}


class RLProgressBar(ProgressBar):
    """One bar for the whole run: an epoch of the Trainer is one RL step."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self.bar: Any = None

    def disable(self) -> None:
        """Called by Lightning on ranks other than 0."""
        self._enabled = False

    def enable(self) -> None:
        """Called by Lightning to re-enable the bar."""
        self._enabled = True

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Open the bar at the resumed step."""
        if self._enabled:
            self.bar = tqdm(
                total=trainer.max_epochs,
                initial=trainer.current_epoch,
                desc="RL steps",
                dynamic_ncols=True,
            )

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Advance one step and show the newest metrics."""
        if self.bar is None:
            return
        metrics = getattr(pl_module, "last_metrics", {})
        self.bar.set_postfix(
            {short: f"{metrics[key]:.3g}" for key, short in _SHOWN.items() if key in metrics},
            refresh=False,
        )
        self.bar.update(1)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        """Close the bar when training stops on an error (no half-drawn bar printed later)."""
        self.on_train_end(trainer, pl_module)
