"""Training objectives as plug-ins: `objective(net, batch) -> (loss, metrics)` for the shared loop.

    trainer = Trainer(model, cfg, run_dir, loader, objective=DPO(beta=0.1))   # loader.next_batch() -> a DPO batch
    logps = token_logprobs(net, x, y)            # (B, T) log p(y_t | x_<=t), 0 where y is -1

The loop (llmos/train/loop.py) moves the batch to the device, calls the objective, backpropagates
the loss and logs the metrics (floats) beside it. Each objective says what its batch holds:

    next_token      (x, y): mean cross-entropy over targets y, -1 ignored. Pretraining (every token)
                    and SFT (the assistant's tokens only: masked next-token) both use it unchanged.
    BradleyTerry    (x, last): 2B rows, chosen then rejected, scored at position last[b] by a
                    reward model (net(x, last) -> (2B,) scalars); loss -log sigmoid(r_chosen - r_rejected).
    DPO(beta)       (x, y, ref): 2B rows, chosen then rejected, y masked to the reply's tokens; ref (2B,)
                    the frozen reference's summed reply log-probs, computed by the loader. Loss
                    -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) (Rafailov et al. 2023).
    PolicyGradient  (x, y, advantages, old, ref): rollouts of a group-relative policy gradient
                    (GRPO, Shao et al. 2024): y masks the sampled reply; advantages (B,) are each
                    reward minus its group's mean; old (B, T) the sampling policy's log-probs (a
                    clipped ratio when the rollouts are reused; None: on-policy, ratio 1); ref (B, T)
                    the reference's log-probs for an optional KL penalty (k3 estimator), or None.
                    The loss is a mean over every reply token of the batch (long replies are not
                    down-weighted per token, as in Dr. GRPO).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

Metrics = dict[str, float]


def next_token(net, batch) -> tuple[torch.Tensor, Metrics]:
    x, y = batch
    return net(x, targets=y), {}


def token_logprobs(net, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, T) log-probabilities of targets y under net (0 where y is -1), by the model's fused
    cross-entropy: no (B, T, vocab) log-softmax is kept beside the logits."""
    return -net(x, targets=y, reduction="none")


def margin_accuracy(margin: torch.Tensor) -> float:
    """How often the chosen side scored higher, an exact tie counting half (a DPO policy that is still
    its reference ties every pair: chance, not zero)."""
    return ((margin > 0).float() + 0.5 * (margin == 0).float()).mean().item()


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
    margin = chosen - rejected
    return -F.logsigmoid(margin).mean(), {"accuracy": margin_accuracy(margin),
                                           "margin": margin.mean().item()}


def bradley_terry(net, batch) -> tuple[torch.Tensor, Metrics]:
    x, last = batch
    scores = net(x, last)
    half = scores.shape[0] // 2
    return bradley_terry_loss(scores[:half], scores[half:])


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, Metrics]:
    """The DPO loss from summed reply log-probs (B,) of policy and reference, and its diagnostics:
    the implicit rewards beta * (policy - reference) of each side, their margin and how often the
    chosen one's is higher."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    return -F.logsigmoid(margin).mean(), {"reward_chosen": chosen_reward.mean().item(),
                                           "reward_rejected": rejected_reward.mean().item(),
                                           "reward_margin": margin.mean().item(),
                                           "reward_accuracy": margin_accuracy(margin)}


@dataclass
class DPO:
    beta: float = 0.1

    def __call__(self, net, batch) -> tuple[torch.Tensor, Metrics]:
        x, y, ref = batch
        summed = token_logprobs(net, x, y).sum(-1)
        half = x.shape[0] // 2
        return dpo_loss(summed[:half], summed[half:], ref[:half], ref[half:], self.beta)


def policy_gradient_loss(logps: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
                         old: torch.Tensor | None = None, ref: torch.Tensor | None = None,
                         clip: float = 0.2, kl_coef: float = 0.0) -> tuple[torch.Tensor, Metrics]:
    """Clipped surrogate (PPO's, per token) with group-relative advantages, plus beta * KL(policy ||
    reference) by the k3 estimator exp(ref - logp) - (ref - logp) - 1; a mean over the mask's tokens."""
    mask = mask.float()
    tokens = mask.sum().clamp(min=1)
    ratio = torch.exp(logps - (old if old is not None else logps.detach()))
    adv = advantages[:, None]
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    loss = -(surrogate * mask).sum() / tokens
    metrics = {"clipped": (((ratio - 1).abs() > clip).float() * mask).sum().item() / tokens.item()}
    if ref is not None:
        delta = ref - logps
        kl = ((torch.exp(delta) - delta - 1) * mask).sum() / tokens
        metrics["kl"] = kl.item()
        if kl_coef:
            loss = loss + kl_coef * kl
    return loss, metrics


@dataclass
class PolicyGradient:
    clip: float = 0.2  # the ratio's trust region (only bites when rollouts are reused)
    kl_coef: float = 0.0  # weight of the KL penalty to the reference (0: measured, not penalised)

    def __call__(self, net, batch) -> tuple[torch.Tensor, Metrics]:
        x, y, advantages, old, ref = batch
        logps = token_logprobs(net, x, y)
        return policy_gradient_loss(logps, y >= 0, advantages, old, ref, self.clip, self.kl_coef)
