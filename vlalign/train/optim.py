"""AdamW with per-component learning rates and a cosine schedule with linear warmup."""

from __future__ import annotations

import math

import torch

from vlalign.config import TrainConfig


def build_optimizer(module, tc: TrainConfig) -> torch.optim.Optimizer:
    groups: dict[tuple[float, float], list] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        is_tower = ".vision_tower." in f".{name}"
        lr = tc.vision_lr if (is_tower and tc.vision_lr is not None) else tc.lr
        # No decay on biases, norms and scalars (temperatures), as is usual for transformers.
        decay = tc.weight_decay if param.dim() >= 2 else 0.0
        groups.setdefault((lr, decay), []).append(param)
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen (check train.tune)")
    return torch.optim.AdamW([{"params": params, "lr": lr, "weight_decay": decay}
                              for (lr, decay), params in groups.items()], betas=(0.9, 0.999))


def build_scheduler(optimizer, warmup_ratio: float, total_steps: int):
    """Linear warmup over `warmup_ratio` of the steps, then cosine decay to 0 (warmup_ratio 0: cosine only)."""
    warmup = math.ceil(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def hyperparameters(optimizer) -> list[dict]:
    """Each parameter group's configured lr and weight decay, as built (before any state is restored)."""
    return [{"lr": group["lr"], "weight_decay": group["weight_decay"]} for group in optimizer.param_groups]


def reapply_hyperparameters(optimizer, scheduler, configured: list[dict]) -> None:
    """After a restore: the configured lr and weight decay replace the restored ones (which `load_state_dict`
    brings back from the checkpoint), and the schedule continues from its restored position with them. With an
    unchanged config this recomputes exactly the restored values."""
    groups = optimizer.param_groups
    if len(configured) != len(groups):
        raise ValueError(f"the optimizer has {len(groups)} parameter groups, the config builds {len(configured)}")
    scheduler.base_lrs = [values["lr"] for values in configured]
    for group, values, factor in zip(groups, configured, scheduler.lr_lambdas):
        group["initial_lr"], group["weight_decay"] = values["lr"], values["weight_decay"]
        group["lr"] = values["lr"] * factor(scheduler.last_epoch)
