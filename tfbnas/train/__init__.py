"""Training of derived 1-bit networks: distillation from a real-valued Parent, two-stage schedules.

* :class:`Distiller`: a Keras model that trains a student from labels and a frozen teacher.
* :func:`train_child`: one Child-training run (``python -m tfbnas.train``); :func:`train_model`
  is the same recipe for any 1-bit Keras model.
* :func:`real_twin`, :func:`stage1_model` (:mod:`tfbnas.train.twins`): the models a 1-bit network trains
  beside; :mod:`tfbnas.train.records`: what a run writes per epoch.
* :class:`CosineSchedule`, :class:`OneCycleSchedule`: learning-rate schedules.

The configuration is :class:`tfbnas.config.TrainConfig`; the flags are :func:`tfbnas.flags.define_train_flags`.
"""

from tfbnas.train.distiller import Distiller, DistillerError, distillation_kl
from tfbnas.train.recipe import (TrainConfig, TrainResult, decayed_variables, real_twin,
                                 resolve_space, stage1_model, train_child, train_model)
from tfbnas.train.schedules import CosineSchedule, OneCycleSchedule, ScheduleError, make_schedule

__all__ = ["Distiller", "DistillerError", "distillation_kl", "TrainConfig", "TrainResult", "train_child",
           "train_model", "resolve_space", "stage1_model", "real_twin", "decayed_variables",
           "CosineSchedule", "OneCycleSchedule", "ScheduleError", "make_schedule"]
