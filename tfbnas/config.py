"""The configuration of every run, as dataclasses whose fields are the command-line flags.

Each default is written once, here: :mod:`tfbnas.flags` takes its flag defaults from these classes, and
library callers build the same values directly. Shared groups are mixins: :class:`DataConfig` (which
data), :class:`SpaceConfig` (which search space) and :class:`RuntimeConfig` (devices and determinism);
:class:`SearchConfig` and :class:`TrainConfig` add their own fields.

    >>> from tfbnas.config import SearchConfig, TrainConfig
    >>> search = SearchConfig(strategy="darts", search_epochs=2, train_examples=2000)
    >>> train = TrainConfig(genotype="runs/s1/genotype.json", epochs=5)
    >>> TrainConfig.from_flags({"epochs": 3, "arch_lr": 1e-3}).epochs  # fields of other runs are ignored
    3

Besides :mod:`tfbnas.errors` this module imports nothing of tfbnas (a leaf: flags, search and training
all import it).
"""

import dataclasses
from typing import List, Optional

from tfbnas.errors import ConfigError

STRATEGIES = ("dcp", "bats", "darts")
DISTRIBUTE = ("default", "mirrored", "multiworker")
PHASES = ("parent", "stage1", "child")
STAGE1_MODES = ("activations", "weights")
OPTIMIZERS = ("adam", "sgd")
DEFAULT_LR = {"adam": 2e-3, "sgd": 0.05}
SCHEDULES = ("cosine", "onecycle")
# augmentation recipes of the training streams (tfbnas.data.augment)
AUGMENTATIONS = ("none", "flip", "crop_flip", "resized_crop")


class _FromFlags:
    @classmethod
    def from_flags(cls, values: dict):
        """The configuration of the flag values ``values`` (names of other runs' flags are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclasses.dataclass
class DataConfig(_FromFlags):
    """Which data a run reads: ``--dataset``, ``--data_dir``, ``--download``, the fixed subsets, the
    global batch and the seed (data order, augmentation and initialisation)."""

    dataset: str = "fashion_mnist"
    data_dir: Optional[str] = None
    download: bool = False
    train_examples: Optional[int] = None
    test_examples: Optional[int] = None
    batch_size: int = 64
    seed: int = 0


@dataclasses.dataclass
class SpaceConfig(_FromFlags):
    """The search space: op-table preset, channels of the first cell (C), cells and nodes per cell."""

    preset: str = "dcp"
    init_channels: int = 16
    num_cells: int = 8
    nodes: int = 4


SPACE_FIELDS = tuple(f.name for f in dataclasses.fields(SpaceConfig))


@dataclasses.dataclass
class RuntimeConfig(_FromFlags):
    """Devices and determinism: ``--distribute`` (see docs/distributed.md), ``--cpu_devices`` logical
    CPUs and deterministic ops (exact resume)."""

    deterministic: bool = True
    distribute: str = "default"
    cpu_devices: Optional[int] = None


@dataclasses.dataclass
class SearchConfig(DataConfig, SpaceConfig, RuntimeConfig):
    """Everything a search run depends on (the flags of ``python -m tfbnas.search``)."""

    strategy: str = "dcp"
    search_epochs: int = 10
    search_examples: Optional[int] = None
    search_steps_per_epoch: Optional[int] = None
    arch_frozen_epochs: int = 0
    arch_t_start: float = 1.0
    arch_t_end: float = 1.0
    arch_lr: float = 3e-4
    arch_beta1: float = 0.5
    arch_weight_decay: float = 1e-3
    weight_lr: float = 0.025
    weight_lr_min: float = 0.001
    weight_momentum: float = 0.9
    search_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    partial_channels: int = 1
    graph_optimizations: bool = True
    dcp_kl: bool = True
    dcp_kl_weight: float = 1.0
    dcp_kl_arch: bool = False
    dcp_tangent: bool = True
    dcp_tangent_weight: float = 0.5
    dcp_tangent_normalize: bool = True
    dcp_ggn: bool = False
    dcp_ggn_samples: int = 4
    dcp_decoupled: bool = True
    dcp_decoupled_weight: float = 0.5
    dcp_decoupled_normalize: bool = True
    dcp_tau: float = 0.5
    dcp_psi_lr: float = 0.01
    dcp_inherit: bool = True
    dcp_arch_from_parent: bool = True
    dcp_inherit_weights: bool = False
    bats_t_start: float = 1.0
    bats_t_end: float = 0.2
    bats_real_epochs: int = 0
    bats_teacher: bool = True
    bats_kl_weight: float = 1.0

    def strategy_kwargs(self):
        """Keyword arguments of :func:`~tfbnas.search.strategies.make_strategy`: the ``dcp_*``/``bats_*``
        fields of the chosen strategy without prefix, the warm-up, and the temperature schedule
        (``bats_t_*`` for bats, ``arch_t_*`` for the others)."""
        prefix = self.strategy + "_"
        mapping = {"bats": {"t_start", "t_end", "real_epochs", "teacher", "kl_weight"},
                   "dcp": {"kl", "kl_weight", "kl_arch", "tangent", "tangent_weight", "tangent_normalize", "ggn",
                           "ggn_samples", "decoupled", "decoupled_weight", "decoupled_normalize", "tau", "psi_lr",
                           "inherit", "arch_from_parent", "inherit_weights"}}.get(self.strategy, set())
        kwargs = {"t_start": self.arch_t_start, "t_end": self.arch_t_end, "warmup_epochs": self.arch_frozen_epochs}
        kwargs.update({k[len(prefix):]: v for k, v in dataclasses.asdict(self).items()
                       if k.startswith(prefix) and k[len(prefix):] in mapping})
        return kwargs


@dataclasses.dataclass
class TrainConfig(DataConfig, SpaceConfig, RuntimeConfig):
    """Everything a training run depends on (the flags of ``python -m tfbnas.train``).

    Space fields left ``None`` are taken from the search run's ``flags.json`` beside the genotype,
    then (``preset``, ``nodes``) from the genotype itself, then from :class:`SpaceConfig`'s defaults
    (:func:`tfbnas.train.recipe.resolve_space`). ``child_init_channels`` and ``child_num_cells`` win over
    all of them: the main job reads one ``--init_channels`` / ``--num_cells`` for the searched supernet, and
    these size the trained Child apart from it (DARTS trains its searched cells wider and deeper).
    """

    preset: Optional[str] = None
    init_channels: Optional[int] = None
    num_cells: Optional[int] = None
    nodes: Optional[int] = None
    child_init_channels: Optional[int] = None
    child_num_cells: Optional[int] = None
    genotype: Optional[str] = None
    widths: Optional[List[float]] = None
    epochs: int = 10
    parent_epochs: Optional[int] = None
    parent: Optional[str] = None
    init_from_parent: bool = False
    init_from_search: bool = False
    distill_alpha: float = 0.9
    distill_temperature: float = 4.0
    two_stage: bool = False
    stage1_epochs: Optional[int] = None
    stage1_binary: str = "activations"
    optimizer: str = "adam"
    lr: Optional[float] = None
    lr_schedule: str = "cosine"
    warmup_epochs: int = 0
    weight_decay: float = 5e-5
    momentum: float = 0.9
    val_fraction: float = 0.1
    steps_per_epoch: Optional[int] = None
    augment: Optional[str] = None

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr else DEFAULT_LR[self.optimizer]

    def phase_epochs(self, phase: str) -> int:
        if phase == "parent":
            return self.epochs if self.parent_epochs is None else self.parent_epochs
        if phase == "stage1":
            return self.stage1_epochs or self.epochs
        return self.epochs

    def child_sizes(self) -> dict:
        """The trained Child's sizes set apart from the space flags: ``{"init_channels": .., "num_cells": ..}``
        for each of ``child_init_channels`` / ``child_num_cells`` that is set (they win over the space fields)."""
        return {name: getattr(self, f"child_{name}") for name in ("init_channels", "num_cells")
                if getattr(self, f"child_{name}") is not None}

    def learns_from_parent(self) -> bool:
        """Whether the recipe uses a Parent at all: the Child is distilled from it or initialised from it."""
        return self.distill_alpha > 0 or self.init_from_parent

    def parent_teacher(self) -> bool:
        """Whether the main job's Child trains under a Parent: :meth:`learns_from_parent`, with a Parent that is
        given (``--parent``) or trained first (a Parent phase of at least one epoch)."""
        return self.learns_from_parent() and bool(self.parent or self.phase_epochs("parent"))

    def check(self):
        """Raise :class:`ConfigError` for values no run can use."""
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"--optimizer={self.optimizer} is unknown; use one of {list(OPTIMIZERS)}")
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(f"--lr_schedule={self.lr_schedule} is unknown; use one of {list(SCHEDULES)}")
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            raise ConfigError(f"--augment={self.augment} is unknown; use one of {list(AUGMENTATIONS)}")
        if self.stage1_binary not in STAGE1_MODES:
            raise ConfigError(f"--stage1_binary={self.stage1_binary} is unknown; use one of {list(STAGE1_MODES)}")
        if not 0.0 <= self.val_fraction <= 0.5:
            raise ConfigError(f"--val_fraction={self.val_fraction} must be in [0, 0.5]")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise ConfigError(f"--distill_alpha={self.distill_alpha} must be in [0, 1]")
        if self.distill_temperature <= 0:
            raise ConfigError(f"--distill_temperature={self.distill_temperature} must be > 0")
        for phase in PHASES:
            if self.warmup_epochs and self.lr_schedule == "cosine" and self.phase_epochs(phase) and \
                    self.warmup_epochs >= self.phase_epochs(phase):
                raise ConfigError(f"--warmup_epochs={self.warmup_epochs} must be fewer than the {phase} epochs "
                                  f"({self.phase_epochs(phase)})")


__all__ = ["DataConfig", "SpaceConfig", "RuntimeConfig", "SearchConfig", "TrainConfig", "SPACE_FIELDS", "STRATEGIES",
           "DISTRIBUTE", "PHASES", "STAGE1_MODES", "OPTIMIZERS", "DEFAULT_LR", "SCHEDULES",
           "AUGMENTATIONS"]
