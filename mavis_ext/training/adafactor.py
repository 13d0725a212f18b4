"""Adafactor as the authors ran it: Hugging Face Trainer's ``optim="adafactor"``, i.e.
``scale_parameter=False, relative_step=False, warmup_init=False``, with an external learning rate
(paper default 2e-5).

``torch.optim.Adafactor`` exists but always scales the step by the parameter's RMS (a *relative*
step), so the paper's learning rates would mean something else there (and zero-initialised biases
would barely move). This is the small absolute-step variant: factored second moments for >= 2-D
tensors, ``beta2_t = 1 - t^-0.8``, update clipping at RMS 1, no first moment, decoupled weight decay.
"""

from __future__ import annotations

import torch

__all__ = ["Adafactor"]


class Adafactor(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 2e-5, eps: float = 1e-30, clip_threshold: float = 1.0,
                 decay_rate: float = -0.8, weight_decay: float = 0.0):
        if not lr > 0:
            raise ValueError(f"lr: must be > 0, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay: must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, eps=eps, clip_threshold=clip_threshold, decay_rate=decay_rate,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.float()
                st = self.state[p]
                factored = g.dim() >= 2
                if not st:
                    st["step"] = torch.zeros((), dtype=torch.float32)
                    if factored:
                        st["row"] = torch.zeros(g.shape[:-1], dtype=torch.float32, device=g.device)
                        st["col"] = torch.zeros(g.shape[:-2] + g.shape[-1:], dtype=torch.float32, device=g.device)
                    else:
                        st["sq"] = torch.zeros_like(g)
                st["step"] += 1
                beta2 = 1.0 - float(st["step"]) ** group["decay_rate"]
                g2 = g.square() + eps
                if factored:
                    st["row"].mul_(beta2).add_(g2.mean(-1), alpha=1 - beta2)
                    st["col"].mul_(beta2).add_(g2.mean(-2), alpha=1 - beta2)
                    r = (st["row"] / st["row"].mean(-1, keepdim=True)).rsqrt().unsqueeze(-1)
                    c = st["col"].unsqueeze(-2).rsqrt()
                    upd = r * c * g
                else:
                    st["sq"].mul_(beta2).add_(g2, alpha=1 - beta2)
                    upd = st["sq"].rsqrt() * g
                rms = upd.square().mean().sqrt()
                upd.div_((rms / group["clip_threshold"]).clamp_min(1.0))
                if group["weight_decay"]:
                    p.mul_(1 - group["weight_decay"] * lr)
                p.add_(upd.to(p.dtype), alpha=-lr)
        return loss
