"""Value-model training for MAVIS: rollout trees, labels, regression, soft policy iteration.

Entry point: ``train_value_models(base_model, tokenizer, prompts, rewards, TrainConfig(...))``.
"""

from .config import TrainConfig
from .iterate import plan_tree_sets, train_value_models
from .prompts import load_prompts

__all__ = ["TrainConfig", "train_value_models", "load_prompts", "plan_tree_sets"]
