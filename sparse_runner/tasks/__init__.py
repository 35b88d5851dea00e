"""Task registry: the dataset names its task (``DataSpec.task``), the loop uses it blindly."""
from __future__ import annotations

from ..utils.registry import Registry
from .base import Accumulator, Shown, Task
from .classification import Classification, topk_correct
from .language_model import LanguageModel

TASKS: Registry[type[Task]] = Registry("task")
TASKS.register(Classification.name)(Classification)
TASKS.register(LanguageModel.name)(LanguageModel)


def build_task(name: str) -> Task:
    return TASKS.get(name)()


__all__ = ["Accumulator", "Classification", "LanguageModel", "Shown", "TASKS", "Task",
           "build_task", "topk_correct"]
