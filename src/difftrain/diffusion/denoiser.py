"""The preconditioned denoiser D(x, sigma, cond) -> x0_hat that losses and samplers see."""

from __future__ import annotations

import torch
from torch import Tensor

from difftrain.diffusion.formulations import Formulation


class Denoiser(torch.nn.Module):
    """Preconditioning wrapper: D(x, sigma, cond) = c_skip*x + c_out*F(c_in*x, c_noise, cond)."""

    def __init__(self, net: torch.nn.Module, formulation: Formulation):
        super().__init__()
        self.net = net  # net(x_in, c_noise, cond) -> F, same shape as x_in; cond a mapping of tensors or None
        self.formulation = formulation

    def forward(self, x: Tensor, sigma: Tensor | float, cond: dict[str, Tensor] | None = None) -> Tensor:
        """Karras 2022 eq. 7; sigma is a float, a 0-d tensor or one noise level per sample (B,)."""
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = self.formulation.scalings(sigma)
        shape = (-1,) + (1,) * (x.ndim - 1)  # (B,) -> broadcastable against x
        F_x = self.net(c_in.view(shape) * x, c_noise, cond)
        # The skip combination stays in float32 even when the net runs in bf16/fp16.
        return c_skip.view(shape) * x + c_out.view(shape) * F_x.float()
