"""The preconditioned denoiser D(x, sigma, cond) -> x0_hat that losses and samplers see."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from difftrain.diffusion.formulations import Formulation


class Denoiser(torch.nn.Module):
    """Preconditioning wrapper: D(x, sigma, cond) = c_skip*x + c_out*F(c_in*x, c_noise, cond).

    `simplex`: slices of the last axis that hold a one-hot category in {-1, 1}. There the network's output is read as
    logits and D is the expected one-hot, 2*softmax(F) - 1 (CDCD's score interpolation, Dieleman et al. 2022): the
    denoised value always lies on the categories' simplex, whatever the noise level.
    """

    def __init__(self, net: torch.nn.Module, formulation: Formulation, simplex: Sequence[slice] = ()):
        super().__init__()
        self.net = net  # net(x_in, c_noise, cond) -> F, same shape as x_in; cond a mapping of tensors or None
        self.formulation = formulation
        self.simplex = tuple(sorted(simplex, key=lambda s: s.start))

    def with_net(self, net: torch.nn.Module) -> Denoiser:
        """The same denoiser around other weights (the EMA's)."""
        return Denoiser(net, self.formulation, self.simplex)

    def loss(self, x0: Tensor, cond: dict[str, Tensor] | None = None, **options) -> Tensor:
        """Per-sample training loss (B,): denoising score matching (diffusion/loss.py)."""
        from difftrain.diffusion.loss import denoising_loss

        return denoising_loss(self, x0, cond, **options)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: dict[str, Tensor] | None = None) -> Tensor:
        """Karras 2022 eq. 7; sigma is a float, a 0-d tensor or one noise level per sample (B,)."""
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = self.formulation.scalings(sigma)
        shape = (-1,) + (1,) * (x.ndim - 1)  # (B,) -> broadcastable against x
        F_x = self.net(c_in.view(shape) * x, c_noise, cond).float()
        # The skip combination stays in float32 even when the net runs in bf16/fp16.
        out = c_skip.view(shape) * x + c_out.view(shape) * F_x
        if not self.simplex:
            return out
        pieces, at = [], 0
        for part in self.simplex:
            pieces += [out[..., at:part.start], 2 * torch.softmax(F_x[..., part], dim=-1) - 1]
            at = part.stop
        return torch.cat(pieces + [out[..., at:]], dim=-1)
