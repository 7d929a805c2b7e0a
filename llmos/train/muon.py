"""Muon for the matrices, with its orthogonalisation in a dtype the hardware is fast at.

    opt = Muon(matrices, ns_dtype=torch.float32, lr=0.02, weight_decay=0.1)

Muon (Keller Jordan et al.) replaces each matrix's momentum update by the nearest semi-orthogonal
matrix, found by five Newton-Schulz iterations. torch.optim.Muon runs those iterations in bfloat16
always, which suits GPUs and CPUs with bf16 units; on a CPU without them (AVX2 only) software bf16
made training 8x slower (465 against 3,800 tokens/s on the cpu preset's model, docs/log.md). This
subclass keeps torch's Muon (its hyperparameters, state, checkpoints and learning-rate adjustment):
with `ns_dtype` bf16 it is torch's step itself, otherwise the same step with the iterations in
`ns_dtype`. The trainer passes bf16 where llmos.perf.fast_bf16 says so, else fp32.
"""
from __future__ import annotations

import torch
from torch.optim._muon import _adjust_lr


def orthogonalize(update: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """Newton-Schulz: about U V^T for update = U S V^T, computed in `dtype` (the quintic of torch's Muon)."""
    a, b, c = coefficients
    x = update.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # the spectral norm is then at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Muon):
    def __init__(self, params, ns_dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        if self.ns_dtype == torch.bfloat16:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, buffers = [], [], []
            self._init_group(group, params, grads, buffers)
            momentum, lr = group["momentum"], group["lr"]
            for param, grad, buffer in zip(params, grads, buffers):
                buffer.lerp_(grad, 1 - momentum)
                update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = orthogonalize(update, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                       self.ns_dtype)
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(update.to(param.dtype), alpha=-_adjust_lr(lr, group["adjust_lr_fn"], param.shape))
        return loss
