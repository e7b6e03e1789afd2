"""The resolved configuration of a training run, written next to its checkpoints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import ConfigError
from ..models.factory import MODEL_DIMS

#: total down-sampling of each network's deepest level (per axis; AH-Net's z too: 2 x 2 x 2^3)
DOWNSAMPLING = {"mc-gcn": 32, "2d-unet": 16, "ahnet": 32, "3d-unet": 16}
LR_SCHEDULES = ("constant", "poly")
#: the exponent of nnU-Net's polynomial decay
POLY_EXPONENT = 0.9


def scheduled_lr(lr: float, schedule: str, step: int, steps: int) -> float:
    """The learning rate of step ``step`` (0-based) of a stage of ``steps`` steps."""
    if schedule == "constant" or steps <= 0:
        return lr
    return lr * max(0.0, 1.0 - step / steps) ** POLY_EXPONENT


@dataclass
class TrainConfig:
    """Everything that determines a training run (§4: Adam, learning rates, patches, losses).

    ``epochs`` is the number of epochs with all parameters trained; ``stage1_epochs`` the epochs
    before them with the transferred encoder frozen (§3.4; only with ``init``).
    """

    data: str
    out: str
    model: str = "ahnet"
    backbone: str = "resnet50"
    preset: str = "paper"
    patch: tuple[int, int, int] = (96, 96, 32)
    batch_size: int = 2
    epochs: int = 10
    stage1_epochs: int = 0
    iters_per_epoch: int = 100
    lr: float = 1e-3
    #: ``constant`` (§4 names no decay) or ``poly``: within each stage the rate falls as
    #: ``lr * (1 - step / steps) ** 0.9`` (nnU-Net's schedule), so the last epochs average out the
    #: noise of small batches instead of ending wherever the last steps left the weights
    lr_schedule: str = "constant"
    device: str = "auto"
    seed: int = 0
    workers: int = 2
    amp: str = "auto"
    positive_ratio: float = 0.7
    augment: bool = True
    #: also change intensities (contrast, shift, noise; :class:`ahnet.data.sampling.IntensityAugment`),
    #: for models that must work on scans of other phases and scanners than the training ones
    intensity_augment: bool = False
    val_fraction: float = 0.2
    val_patches: int = 4
    #: batches of training patches (fixed, augmented as in training) over which the batch norms'
    #: statistics are re-estimated at the end of every epoch, before validation and the checkpoint
    #: ("precise BN"); 0 keeps the running averages, which lag behind fast-changing weights (with
    #: batches of 2 they made whole validation epochs predict no liver at all; experiments/RESULTS.md)
    bn_batches: int = 8
    #: K-fold cross-validation: with ``folds`` K > 1 the seeded case order is cut into K folds and fold
    #: ``fold`` is held out for validation (``val_fraction`` is then unused)
    folds: int = 1
    fold: int = 0
    focal: bool = True
    #: segmentation: add a soft Dice term to the (focal) cross-entropy (:func:`ahnet.losses.soft_dice_loss`)
    dice_loss: bool = False
    focal_gamma: float = 2.0
    focal_d_max: float = 1.0
    switch_patience: int = 3
    switch_threshold: float = 0.01
    switch_epoch: int | None = None
    window: tuple[float, float] | None = None
    inplane_spacing: float | None = None
    sigma_scale: float = 0.25
    #: MC-GCN's encoder weights: a torchvision-format ImageNet file, or "imagenet" (torch hub's cache)
    pretrained: str | None = None
    init: str | None = None
    #: structure overrides of the preset (``AHNetSpec`` / ``MCGCNSpec`` fields), e.g. for ablations
    options: dict[str, Any] | None = None
    #: also write each epoch's scalars to RUN/tensorboard (needs the tensorboard package)
    tensorboard: bool = False
    #: a store written by ``ahnet preprocess``: cases are read from it (memory-mapped) with its settings,
    #: instead of being prepared from the raw files by ``window`` and ``inplane_spacing``
    preprocessed: str | None = None
    #: on the CPU, let the C allocator return freed memory to the system (lower peak memory, much
    #: slower steps; see :mod:`ahnet.memory`)
    lean_memory: bool = False
    #: keep only the inputs of each unit of the network (AH-Net: stem, encoder blocks, decoder levels,
    #: pyramid, head) and run it again in the backward pass: the same numbers on less memory, for about
    #: one more forward pass per step (:mod:`ahnet.models.recompute`)
    recompute: bool = False

    def __post_init__(self):
        self.patch = tuple(int(p) for p in self.patch)
        if self.model not in MODEL_DIMS:
            raise ConfigError(f"unknown model {self.model!r}; choose one of {sorted(MODEL_DIMS)}")
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ConfigError(f"patch must be three positive sizes XxYxZ, got {self.patch}")
        for name in ("batch_size", "iters_per_epoch", "val_patches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.bn_batches < 0:
            raise ConfigError(f"bn_batches must be >= 0, got {self.bn_batches}")
        if self.epochs < 0 or self.stage1_epochs < 0 or self.epochs + self.stage1_epochs < 1:
            raise ConfigError("train for at least one epoch (epochs + stage1_epochs >= 1)")
        if self.stage1_epochs and not self.init:
            raise ConfigError("stage 1 (frozen encoder) needs --init, a transferred checkpoint (ahnet transfer)")
        if self.init and self.model != "ahnet":
            raise ConfigError("--init (a transferred encoder) applies to --model ahnet only")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be within [0, 1), got {self.val_fraction}")
        if self.folds < 1 or not 0 <= self.fold < self.folds:
            raise ConfigError(f"fold must be within 0..folds-1 and folds >= 1, got fold {self.fold} of {self.folds}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        deepest = [-(-p // DOWNSAMPLING[self.model]) for p in self.patch[: self.spatial_dims]]
        if self.batch_size == 1 and all(d == 1 for d in deepest):
            raise ConfigError(
                f"batch_size 1 with patch {'x'.join(map(str, self.patch))} leaves one voxel per channel at the "
                f"{self.model}'s deepest level, where batch norm cannot train; use batch_size >= 2 or a larger patch")
        if self.preprocessed and (self.window or self.inplane_spacing):
            raise ConfigError("--preprocessed data carry their own intensity window and spacing; "
                              "drop --window / --inplane-spacing (or preprocess again with them)")
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise ConfigError(f"amp must be auto, bf16, fp16 or none, got {self.amp!r}")

    @property
    def spatial_dims(self) -> int:
        return MODEL_DIMS[self.model]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch"] = list(self.patch)
        d["window"] = list(self.window) if self.window else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if d.get("window"):
            d["window"] = tuple(d["window"])
        return cls(**d)
