"""Training: configuration, the trainer (two stages, focal switch, DDP), checkpoints, transfer."""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .trainer import Trainer
from .transfer import transfer_checkpoint

__all__ = ["TrainConfig", "Trainer", "load_checkpoint", "save_checkpoint", "transfer_checkpoint"]
