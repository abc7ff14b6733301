"""LAMB: layer-wise adaptive moments (You et al. 2020, "Large Batch Optimization for Deep Learning")."""

from __future__ import annotations

import torch


class Lamb(torch.optim.Optimizer):
    """Adam's update with decoupled weight decay, rescaled per tensor by the trust ratio ||w|| / ||update||."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        # found_inf (set by the trainer, 1 = a non-finite step) leaves weights and moments as they
        # were. Everything stays on the device: no value is read back per step.
        found_inf = getattr(self, "found_inf", None)
        skip_all = None if found_inf is None else found_inf > 0
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                skip = torch.zeros((), dtype=torch.bool, device=p.device) if skip_all is None else skip_all.to(p.device)
                grad = torch.where(skip, 0.0, p.grad)
                keep = (~skip).float()
                state["step"] = step = state["step"].to(p.device) + keep
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(grad, (1 - beta1) * keep)
                v.mul_(1 - (1 - beta2) * keep).addcmul_(grad, grad, value=1 - beta2)
                # Bias-corrected Adam direction plus decoupled weight decay (step >= 1 once a step is kept).
                step = step.clamp(min=1)
                update = (m / (1 - beta1**step)) / ((v / (1 - beta2**step)).sqrt() + group["eps"])
                update.add_(p, alpha=group["weight_decay"])
                # Trust ratio; 1 where either norm is zero (e.g. zero-initialised layers).
                w_norm, u_norm = p.norm(), update.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.sub_(update * (trust * keep), alpha=group["lr"])  # update is finite: the gradient was zeroed
        return loss
