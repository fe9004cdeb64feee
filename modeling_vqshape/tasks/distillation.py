"""Multi-teacher knowledge distillation: the losses and the teacher weightings, as pure functions and one small agent.

Notation: a batch of `batch_size` samples, `num_teachers` teachers and `num_labels` classes; the teachers' logits are
stacked as `(batch_size, num_teachers, num_labels)`, already in the student's label order (`teachers.py` aligns them
by class name). Per-sample teacher weights `w` are `(batch_size, num_teachers)`, non-negative, summing to 1 per sample.

- `kd_divergence`, `kd_loss`: the soft-target loss of Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural
  Network" (2015): `T^2 * KL(softmax(t / T) || softmax(s / T))`; the `T^2` keeps its gradients on the scale of the
  hard-target term when `T` changes (their section 2).
- `multi_teacher_kd_loss`: per sample `alpha * CE(s, y) + (1 - alpha) * sum_k w_k * KD_k`, the batch mean.
- The weightings (`WEIGHTINGS`, `teacher_weights`):
  - `equal`: `w_k = 1 / K` (the averaged multi-teacher KD, AVER-MKD).
  - `confidence`: CA-MKD, Zhang, Chen and Wang, "Confidence-Aware Multi-Teacher Knowledge Distillation" (ICASSP
    2022), eq. (2): `w_k = (1 - softmax_k(CE(t_k, y))) / (K - 1)` per sample; for two teachers this is
    `softmax_k(-CE(t_k, y))`; one teacher gets weight 1.
  - `mtkd_rl`: Yang et al., "Multi-Teacher Knowledge Distillation with Reinforcement Learning for Visual Recognition"
    (AAAI 2025): `agent_state` builds the state, `MTKDRLAgent` maps it to weights, `reinforce_loss`/`agent_update`
    train it by policy gradient with `improvement_reward` (of the student's head, `head_cross_entropy`, or of the
    whole student, `student_cross_entropy`) or the authors' code's `loss_reward`. What the paper leaves open and what we
    chose is written at `MTKDRLAgent`.

A training step with `mtkd_rl` (the script all-gathers between the steps when it runs on several processes):

    state = agent_state(student_logits, student_features, teacher_logits, teacher_features, labels, temperature)
    actions, weights = agent.sample(state, generator)               # exploration; the student trains with `weights`
    loss = multi_teacher_kd_loss(student_logits, teacher_logits, weights, labels, alpha, temperature)
    baseline = reward_baseline("head_improvement", student, outputs, labels)  # the head alone, before the step
    ... backward, optimizer step of the student ...
    rewards = step_rewards("head_improvement", student, outputs, labels, per_sample_loss, baseline=baseline)
    # improvement_reward of the head's cross-entropy before and after the step (head_cross_entropy); or the whole
    # student's ("improvement": student_cross_entropy, one more forward pass with the same dropout masks,
    # random_state); or loss_reward of the per-sample loss ("loss")
    state, actions, rewards = gather((state, actions, rewards))     # identical on every process
    agent_update(agent, agent_optimizer, state, actions, rewards)   # deterministic given its inputs
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WEIGHTINGS = ("equal", "confidence", "mtkd_rl")
REWARDS = ("improvement", "head_improvement", "loss")  # of `mtkd_rl`: `improvement_reward` (of the whole student or
# of its head alone, `head_cross_entropy`), `loss_reward`


# ---- losses ----------------------------------------------------------------------------------------------------------


def kd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Per-sample soft-target loss of Hinton et al. (2015): `T^2 * KL(softmax(t / T) || softmax(s / T))`.

    Args:
        student_logits, teacher_logits: `(batch_size, num_labels)`; the teacher's carry no gradient.
    Returns:
        `(batch_size,)`.
    """
    if temperature <= 0:
        raise ValueError(f"the temperature must be positive, got {temperature}.")
    assert student_logits.shape == teacher_logits.shape, (student_logits.shape, teacher_logits.shape)
    # at least float32 (under autocast too): a difference of log-probabilities loses too much in bf16
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    student_log_probs = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.detach().to(dtype) / temperature, dim=-1)
    kl = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(-1)
    return kl * temperature**2


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Batch mean of `kd_divergence`: the single-teacher KD loss, a scalar."""
    return kd_divergence(student_logits, teacher_logits, temperature).mean()


def multi_teacher_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, weights: torch.Tensor,
                          labels: torch.Tensor, alpha: float = 0.5, temperature: float = 4.0,
                          reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy on the labels plus the teacher-weighted KD loss:

        loss_i = alpha * CE(s_i, y_i) + (1 - alpha) * sum_k w_ik * T^2 * KL(softmax(t_ik / T) || softmax(s_i / T))

    (Hinton et al. 2015 for the two terms and `T^2`; the per-sample weighted sum over teachers as in CA-MKD, eq. (3),
    and MTKD-RL's distillation loss). `alpha = 0` is pure distillation, `alpha = 1` ignores the teachers.

    Args:
        student_logits: `(batch_size, num_labels)`.
        teacher_logits: `(batch_size, num_teachers, num_labels)`, in the student's label order.
        weights: `(batch_size, num_teachers)` (`teacher_weights`); no gradient flows into them.
        labels: `(batch_size,)` class indices.
        reduction: "mean" (a scalar, the batch mean) or "none" (`(batch_size,)`).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}.")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}.")
    batch_size, num_teachers, num_labels = teacher_logits.shape
    assert student_logits.shape == (batch_size, num_labels), (student_logits.shape, teacher_logits.shape)
    assert weights.shape == (batch_size, num_teachers), (weights.shape, teacher_logits.shape)
    # "batch teachers labels -> (batch teachers) labels": one KD term per sample and teacher
    student_repeated = student_logits.unsqueeze(1).expand(-1, num_teachers, -1).reshape(-1, num_labels)
    divergences = kd_divergence(student_repeated, teacher_logits.reshape(-1, num_labels), temperature)
    distillation = (weights.detach() * divergences.view(batch_size, num_teachers)).sum(-1)
    per_sample = alpha * F.cross_entropy(student_logits, labels.long(), reduction="none") + (1 - alpha) * distillation
    return per_sample.mean() if reduction == "mean" else per_sample


# ---- fixed weightings ------------------------------------------------------------------------------------------------


def equal_weights(teacher_logits: torch.Tensor) -> torch.Tensor:
    """`w_k = 1 / K` for every sample: `(batch_size, num_teachers)`."""
    batch_size, num_teachers, _ = teacher_logits.shape
    return teacher_logits.new_full((batch_size, num_teachers), 1.0 / num_teachers)


def teacher_cross_entropies(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`CE(t_k, y)` per sample and teacher, `(batch_size, num_teachers)`."""
    batch_size, num_teachers, num_labels = teacher_logits.shape
    repeated_labels = labels.long().unsqueeze(1).expand(-1, num_teachers).reshape(-1)
    return F.cross_entropy(teacher_logits.reshape(-1, num_labels).float(), repeated_labels,
                           reduction="none").view(batch_size, num_teachers)


def confidence_weights(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CA-MKD (Zhang et al., ICASSP 2022, eq. 2): `w_k = (1 - softmax_k(CE(t_k, y))) / (K - 1)` per sample, so the
    teachers closer to the label weigh more; with two teachers `w = softmax(-CE)`, with one `w = 1`.

    Returns:
        `(batch_size, num_teachers)`, non-negative, summing to 1 per sample.
    """
    num_teachers = teacher_logits.shape[1]
    if num_teachers == 1:
        return equal_weights(teacher_logits)
    cross_entropies = teacher_cross_entropies(teacher_logits.detach(), labels)
    return ((1.0 - cross_entropies.softmax(-1)) / (num_teachers - 1)).to(teacher_logits.dtype)


# ---- MTKD-RL: the state ----------------------------------------------------------------------------------------------


def relational_cosine(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Width-free cosine similarity of a student's and a teacher's features, per sample.

    The two feature spaces differ (widths, bases), so `cos(f_s, f_t)` itself is undefined; MTKD-RL learns a projection
    of the student's features for it, trained by a feature-distillation loss that this recipe does not have. We compare
    what both spaces can express, the batch's similarity structure (as in similarity-preserving KD, Tung and Mori,
    ICCV 2019): centre each feature over the batch, take each sample's cosine similarities to the other samples of the
    batch in either space, and return the cosine between these two profiles. It lies in [-1, 1], is 1 when the two
    spaces arrange the batch alike, and is 0 for a batch of one sample.

    Args:
        student_features: `(batch_size, student_dim)`; teacher_features: `(batch_size, teacher_dim)`.
    Returns:
        `(batch_size,)`.
    """
    batch_size = student_features.shape[0]
    assert teacher_features.shape[0] == batch_size, (student_features.shape, teacher_features.shape)
    if batch_size < 2:
        return student_features.new_zeros(batch_size)
    off_diagonal = ~torch.eye(batch_size, dtype=torch.bool, device=student_features.device)

    def profiles(features):
        unit = F.normalize(features.detach().float() - features.detach().float().mean(0), dim=-1)
        # "batch batch -> batch (batch - 1)": each sample's similarity to the others
        return (unit @ unit.T)[off_diagonal].view(batch_size, batch_size - 1)

    return F.cosine_similarity(profiles(student_features), profiles(teacher_features), dim=-1)


class AgentState(NamedTuple):
    """What the MTKD-RL agent observes, per sample and teacher (a NamedTuple of tensors, so that
    `accelerator.gather` gathers it whole):

    - `scalars` `(batch_size, num_teachers, 3)`: the teacher's cross-entropy on the label (its performance), the
      cosine similarity of student and teacher features (`relational_cosine`) and the KD divergence between their
      predictions (`kd_divergence`, the teacher-student gap).
    - `teacher_logits` `(batch_size, num_teachers, num_labels)`.
    - `teacher_features` `(batch_size, sum of the teachers' feature widths)`: the teachers' features side by side in
      teacher order (width 0 for a teacher without features; `MTKDRLAgent.feature_dims` splits them).
    """

    scalars: torch.Tensor
    teacher_logits: torch.Tensor
    teacher_features: torch.Tensor


@torch.no_grad()
def agent_state(student_logits: torch.Tensor, student_features: torch.Tensor | None, teacher_logits: torch.Tensor,
                teacher_features: Sequence, labels: torch.Tensor, temperature: float = 4.0) -> AgentState:
    """The MTKD-RL state of a batch (Yang et al. 2025, section "State": teacher performance = the teacher's feature,
    logits and cross-entropy; teacher-student gap = feature cosine similarity and prediction KL divergence).

    Args:
        student_logits: `(batch_size, num_labels)`; student_features: `(batch_size, student_dim)` or None.
        teacher_logits: `(batch_size, num_teachers, num_labels)`.
        teacher_features: one `(batch_size, teacher_dim_k)` tensor or None per teacher. Without features (the
            student's or the teacher's) the cosine similarity is 0 and the teacher's feature part is empty.
        labels: `(batch_size,)`.
    """
    batch_size, num_teachers, num_labels = teacher_logits.shape
    if len(teacher_features) != num_teachers:
        raise ValueError(f"{len(teacher_features)} teacher feature tensors for {num_teachers} teachers.")
    cross_entropies = teacher_cross_entropies(teacher_logits, labels)
    divergences = torch.stack([kd_divergence(student_logits.float(), teacher_logits[:, k].float(), temperature)
                               for k in range(num_teachers)], dim=1)
    cosines = torch.stack([
        relational_cosine(student_features, features) if student_features is not None and features is not None
        else student_logits.new_zeros(batch_size, dtype=torch.float32)
        for features in teacher_features
    ], dim=1)
    features = [(features if features is not None else teacher_logits.new_zeros(batch_size, 0)).float()
                for features in teacher_features]
    return AgentState(scalars=torch.stack([cross_entropies, cosines, divergences], dim=-1),
                      teacher_logits=teacher_logits.detach().float(), teacher_features=torch.cat(features, dim=-1))


# ---- MTKD-RL: the agent ----------------------------------------------------------------------------------------------


class MTKDRLAgent(nn.Module):
    """The MTKD-RL policy network (Yang et al., AAAI 2025): per sample and teacher, state -> a score; the teacher
    weights are the softmax of the scores over the teachers.

    Per teacher k, the input is `[log1p(CE_k), cos_k, log1p(KD_k)]` (`AgentState.scalars`; log1p tames the unbounded
    losses), the teacher's logits and its features, each layer-normalised without parameters (scale-free, so logits and
    features of any range and width enter alike). A linear layer of its own per teacher (teachers differ in feature
    width) maps them to `hidden_size`, and a shared `ReLU -> Linear(hidden_size, 1)` gives the score `mu_k`. The last
    layer starts at zero: before any update every weighting is `equal`.

    What we could read (the paper's abstract and summaries of it, and a public copy of the authors' training loop;
    not the full text's equations) fixes the state, a weight per sample and teacher as a continuous action, and a
    policy-gradient update rewarded by the student; the action distribution and the exact reward are our choices:

    The policy. We chose a logistic-normal policy: the action is a score vector `a ~ N(mu, sigma^2 I)`
    (`exploration_std` = sigma), the weights it stands for are `softmax_k(a)`, and the greedy weights `softmax_k(mu)`
    (`weights`) are what one logs and uses after training; `log pi(a | s) = -||a - mu||^2 / (2 sigma^2) + const`. The
    authors' public code instead scores each teacher with a sigmoid and uses the scores unnormalised; the softmax over
    teachers gives a distribution per sample, which `multi_teacher_kd_loss` expects.

    The reward (paper: the student's performance; the authors' code: minus the student's per-sample training loss,
    standardised over the batch and clipped to [0, 1]): by default the improvement of the student's head,
    `improvement_reward` of `head_cross_entropy`, the drop in the head's cross-entropy on each sample, on the training
    forward's features, over the step it took with the sampled weights (the head evaluated twice; the backbone's part
    of the step is left out); or the whole student's (the training forward's cross-entropy against a forward after the
    step with the same dropout masks, `student_cross_entropy`: one more forward pass); or the code's, `loss_reward`,
    which needs no extra pass either. Each is standardised over the (gathered) batch as the baseline
    (`reinforce_loss`). The update is REINFORCE (Williams 1992), one step per batch.

    Parameters are initialised from `seed` alone (not the global generator), so every process builds the same agent.
    """

    def __init__(self, num_labels: int, feature_dims: Sequence[int], hidden_size: int = 32,
                 exploration_std: float = 0.5, seed: int = 0):
        super().__init__()
        if not feature_dims:
            raise ValueError("the agent needs at least one teacher.")
        if exploration_std <= 0:
            raise ValueError(f"exploration_std must be positive, got {exploration_std}.")
        self.num_labels = num_labels
        self.feature_dims = [int(dim) for dim in feature_dims]
        self.exploration_std = exploration_std
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoders = nn.ModuleList(nn.Linear(3 + num_labels + dim, hidden_size) for dim in self.feature_dims)
            self.score = nn.Sequential(nn.ReLU(), nn.Linear(hidden_size, 1))
        nn.init.zeros_(self.score[1].weight)
        nn.init.zeros_(self.score[1].bias)

    @property
    def num_teachers(self) -> int:
        return len(self.feature_dims)

    def forward(self, state: AgentState) -> torch.Tensor:
        """The mean scores `mu`, `(batch_size, num_teachers)`."""
        batch_size, num_teachers, _ = state.scalars.shape
        assert num_teachers == self.num_teachers, (num_teachers, self.num_teachers)
        assert state.teacher_features.shape == (batch_size, sum(self.feature_dims)), state.teacher_features.shape
        cross_entropy, cosine, divergence = state.scalars.float().unbind(-1)
        scalars = torch.stack([cross_entropy.clamp_min(0).log1p(), cosine, divergence.clamp_min(0).log1p()], dim=-1)
        logits = F.layer_norm(state.teacher_logits.float(), (self.num_labels,))
        features = state.teacher_features.float().split(self.feature_dims, dim=-1)
        scores = []
        for k, encoder in enumerate(self.encoders):
            parts = [scalars[:, k], logits[:, k]]
            if self.feature_dims[k]:
                parts.append(F.layer_norm(features[k], (self.feature_dims[k],)))
            scores.append(self.score(encoder(torch.cat(parts, dim=-1))).squeeze(-1))
        return torch.stack(scores, dim=-1)

    def weights(self, state: AgentState) -> torch.Tensor:
        """The greedy teacher weights `softmax_k(mu)`, `(batch_size, num_teachers)`, without gradient."""
        with torch.no_grad():
            return self(state).softmax(-1)

    @torch.no_grad()
    def sample(self, state: AgentState, generator: torch.Generator | None = None) -> tuple:
        """Explore: `(actions, weights)`, the sampled scores `a ~ N(mu, sigma^2)` and `softmax_k(a)`, both
        `(batch_size, num_teachers)`; the student trains with these weights and `reinforce_loss` needs the actions."""
        mean = self(state)
        device = mean.device if generator is None else generator.device
        noise = torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype).to(mean.device)
        actions = mean + self.exploration_std * noise
        return actions, actions.softmax(-1)

    def log_prob(self, state: AgentState, actions: torch.Tensor) -> torch.Tensor:
        """`log pi(a | s)` of the logistic-normal policy (up to a constant), `(batch_size,)`, with gradient."""
        return -((actions.detach() - self(state)) ** 2).sum(-1) / (2 * self.exploration_std**2)


def per_sample_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`CE(logits, labels)` per sample, `(batch_size,)`, in float32 and without gradient (a reward, not a loss)."""
    return F.cross_entropy(logits.detach().float(), labels.to(logits.device).long(), reduction="none")


def random_state(device) -> tuple:
    """The global random state of the CPU and, on CUDA, of `device`: what dropout draws from. Take it before the
    training forward and give it to `student_cross_entropy`, so that the forward after the step draws the same
    dropout masks."""
    device = torch.device(device)
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


@torch.no_grad()
def student_cross_entropy(model, past_values: torch.Tensor, labels: torch.Tensor, state: tuple | None = None
                          ) -> torch.Tensor:
    """The classifier's per-sample cross-entropy on `labels`, `(batch_size,)`, without gradient; call it on the
    unwrapped model.

    With `state` (`random_state`, taken before the training forward of this batch): in the model's own mode, with
    the random state put back for this pass only (`torch.random.fork_rng`), so dropout draws the masks of the
    training forward, and with the codebooks' training-time updates off, so that measuring changes no model state (a
    step whose training forward re-seeded dead codes drew from the random state there, and the masks drawn after the
    codebook then differ). The cross-entropy of that forward's logits and this one then differ by the optimizer step
    alone: the pair measures the step's improvement under the same noise, at the cost of one forward pass, and the
    global random state (what later steps draw) is left as it was. Without `state`: in eval mode, the model's mode
    restored afterwards."""
    if state is not None:
        from ..modeling_vqshape import VQShapeCodebook

        cpu_state, device_state = state
        devices = [past_values.device] if device_state is not None else []
        # the codebook learns from training forwards (usage statistics, EMA entries, re-seeding of dead codes): this
        # pass only measures, so its codebooks run as in eval mode, which changes nothing else in their lookup
        codebooks = [module for module in model.modules() if isinstance(module, VQShapeCodebook) and module.training]
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(cpu_state)
            if device_state is not None:
                torch.cuda.set_rng_state(device_state, past_values.device)
            try:
                for codebook in codebooks:
                    codebook.train(False)
                logits = model(past_values=past_values).logits
            finally:
                for codebook in codebooks:
                    codebook.train(True)
    else:
        was_training = model.training
        model.eval()
        try:
            logits = model(past_values=past_values).logits
        finally:
            model.train(was_training)
    return per_sample_cross_entropy(logits, labels)


@torch.no_grad()
def head_cross_entropy(model, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The per-sample cross-entropy, `(batch_size,)`, of the classifier's head alone (`feature_scaler`, then
    `classifier`, without dropout) on a forward's head input `features` (`outputs.features`), without gradient; call
    it on the unwrapped model. Taken before and after the optimizer step on the same features, the pair gives the
    `head_improvement` reward: the part of the step's improvement that the head's update makes, at the cost of the
    head evaluated twice instead of a forward pass. The backbone's part of the step is left out; where the backbone is
    frozen (or the student is linear) it is the whole improvement, measured without the head's dropout."""
    return per_sample_cross_entropy(model.classifier(model.feature_scaler(features.detach())), labels)


def improvement_reward(loss_before: torch.Tensor, loss_after: torch.Tensor) -> torch.Tensor:
    """The student's improvement on each sample, `loss_before - loss_after`, `(batch_size,)`: its cross-entropy on the
    label in the training forward and after the optimizer step it took with the sampled weights
    (`student_cross_entropy` with the training forward's `random_state`: one more forward pass without gradient;
    teachers cost nothing more), or of the head alone on the training forward's features (`head_cross_entropy` before
    and after the step: the head evaluated twice)."""
    assert loss_before.shape == loss_after.shape, (loss_before.shape, loss_after.shape)
    return (loss_before - loss_after).detach().float()


def loss_reward(per_sample_loss: torch.Tensor) -> torch.Tensor:
    """Minus the student's training loss on each sample, `(batch_size,)`: the reward of the MTKD-RL authors' code,
    `-(CE + sum_k w_k KD_k)` from the training forward itself (`multi_teacher_kd_loss(..., reduction="none")` under the
    sampled weights), so it needs no forward pass beyond training. The action enters through the KD mix: weight on a
    teacher whose predictions are far from the student's lowers it. The cross-entropy does not depend on the action;
    the batch standardisation of `reinforce_loss` removes its mean but not its spread. The authors' code also clamps
    the standardised reward to [0, 1]; we keep the signed advantage, as for `improvement_reward`."""
    return -per_sample_loss.detach().float()


def reward_baseline(reward: str, student, outputs, labels: torch.Tensor) -> torch.Tensor | None:
    """What `step_rewards` compares with, taken after the training forward and before the optimizer step: the head's
    per-sample cross-entropy on the forward's features for "head_improvement" (`head_cross_entropy`), else None."""
    return head_cross_entropy(student, outputs.features, labels) if reward == "head_improvement" else None


def step_rewards(reward: str, student, outputs, labels: torch.Tensor, per_sample_loss: torch.Tensor,
                 past_values: torch.Tensor | None = None, draws: tuple | None = None,
                 baseline: torch.Tensor | None = None) -> torch.Tensor:
    """MTKD-RL's per-sample rewards of one training step, `(batch_size,)`, by `reward` (one of `REWARDS`), after the
    optimizer step: "head_improvement", the head's improvement on the training forward's features (`baseline` from
    `reward_baseline`); "improvement", the whole student's (`student_cross_entropy` on `past_values` with `draws`, the
    `random_state` taken before the training forward); "loss", `loss_reward(per_sample_loss)`. `student` is the
    unwrapped model, `outputs` its training forward's."""
    if reward == "head_improvement":
        return improvement_reward(baseline, head_cross_entropy(student, outputs.features, labels))
    if reward == "improvement":
        return improvement_reward(per_sample_cross_entropy(outputs.logits, labels),
                                  student_cross_entropy(student, past_values, labels, draws))
    if reward == "loss":
        return loss_reward(per_sample_loss)
    raise ValueError(f"unknown reward {reward!r}; choose one of {', '.join(REWARDS)}.")


def standardised(rewards: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """`(r - mean(r)) / std(r)` over the batch: the advantage with the batch mean as baseline (0 when all equal)."""
    rewards = rewards.detach().float()
    if rewards.numel() < 2:
        return torch.zeros_like(rewards)
    std = rewards.std()
    return torch.zeros_like(rewards) if std < eps else (rewards - rewards.mean()) / std


def reinforce_loss(agent: MTKDRLAgent, state: AgentState, actions: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """The REINFORCE loss (Williams 1992; MTKD-RL's policy-gradient update): `-mean_i A_i * log pi(a_i | s_i)` with
    the advantage `A = standardised(rewards)`. A pure function of its inputs: on several processes gather `state`,
    `actions` and `rewards` first, and every process computes the same loss."""
    assert actions.shape == state.scalars.shape[:2], (actions.shape, state.scalars.shape)
    assert rewards.shape == actions.shape[:1], (rewards.shape, actions.shape)
    return -(standardised(rewards) * agent.log_prob(state, actions)).mean()


def agent_update(agent: MTKDRLAgent, optimizer: torch.optim.Optimizer, state: AgentState, actions: torch.Tensor,
                 rewards: torch.Tensor) -> float:
    """One policy-gradient step of the agent; returns the loss. Deterministic given the agent's parameters, the
    optimizer's state and the inputs (no sampling, no dropout), so processes that feed it the same all-gathered
    inputs stay identical. The agent is not wrapped in DistributedDataParallel: each process steps its own copy."""
    optimizer.zero_grad(set_to_none=True)
    loss = reinforce_loss(agent, state, actions, rewards)
    loss.backward()
    optimizer.step()
    return loss.item()


def save_agent(agent: MTKDRLAgent, path):
    """The agent's weights as a safetensors file, written all at once (`atomic_write`)."""
    from safetensors.torch import save_file

    from ..saving_vqshape import atomic_write

    weights = {key: value.detach().cpu().contiguous() for key, value in agent.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as temporary:
        save_file(weights, str(temporary))


# ---- one entry point -------------------------------------------------------------------------------------------------


def teacher_weights(weighting: str, teacher_logits: torch.Tensor, labels: torch.Tensor,
                    agent: MTKDRLAgent | None = None, state: AgentState | None = None) -> torch.Tensor:
    """The greedy weights of `weighting` (one of `WEIGHTINGS`), `(batch_size, num_teachers)`: `equal_weights`,
    `confidence_weights`, or the agent's `weights(state)` for "mtkd_rl" (training samples them with `agent.sample`)."""
    if weighting == "equal":
        return equal_weights(teacher_logits)
    if weighting == "confidence":
        return confidence_weights(teacher_logits, labels)
    if weighting == "mtkd_rl":
        if agent is None or state is None:
            raise ValueError("the 'mtkd_rl' weighting needs the agent and its state.")
        return agent.weights(state).to(teacher_logits.dtype)
    raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}.")


def mean_teacher_weights(weights: torch.Tensor) -> list:
    """The mean weight of each teacher over a batch, a list of floats (for the log)."""
    return [round(value, 6) for value in weights.float().mean(0).tolist()]


# ---- the first stage: a linear probe taught by the teachers ----------------------------------------------------------


@dataclass
class ProbeDistillation:
    """The teachers of the first stage: their logits and per-sample weights on TRAIN's rows, the cross-entropy's share
    `alpha` and the temperature. `classification.train_linear_probes` trains every setting of its grid on `loss`,
    `multi_teacher_kd_loss` of the stacked logits.

    Cross-fitted teachers (`teachers.teacher_folds`) add `folds` `(num_series,)`, the fold of each row, and
    `fold_teacher_logits` `(F, num_series, num_teachers, num_labels)`: `for_fold(f)` teaches with the logits of
    teachers fitted without fold `f`, for the heads that fold judges (`finetuning.select_linear_head`)."""

    teacher_logits: torch.Tensor  # (num_series, num_teachers, num_labels)
    weights: torch.Tensor  # (num_series, num_teachers)
    alpha: float = 0.5
    temperature: float = 4.0
    folds: np.ndarray | None = None  # (num_series,): the teachers' fold of each row
    fold_teacher_logits: torch.Tensor | None = None  # (num_folds, num_series, num_teachers, num_labels)
    weighting: str = "equal"  # the fixed weighting of `weights`, applied to `fold_teacher_logits` too

    @classmethod
    def from_teachers(cls, teacher_logits: torch.Tensor, labels: torch.Tensor, weighting: str, alpha: float = 0.5,
                      temperature: float = 4.0, folds=None, fold_teacher_logits=None) -> "ProbeDistillation":
        """The fixed weighting of `weighting` over every row; `mtkd_rl`'s agent learns from the student's training
        steps, which come after the probe, so its probe is taught with `equal` weights, where its agent starts."""
        fixed = "equal" if weighting == "mtkd_rl" else weighting
        return cls(teacher_logits, teacher_weights(fixed, teacher_logits, labels), alpha, temperature,
                   None if folds is None else np.asarray(folds), fold_teacher_logits, fixed)

    def for_fold(self, fold: int, labels: torch.Tensor) -> "ProbeDistillation":
        """The teaching of the heads judged on fold `fold` (`labels` of every row, for the weights): the logits of
        the teachers fitted without it."""
        logits = self.fold_teacher_logits[fold]
        return ProbeDistillation(logits, teacher_weights(self.weighting, logits, labels), self.alpha,
                                 self.temperature, weighting=self.weighting)

    def subset(self, rows) -> "ProbeDistillation":
        rows = torch.as_tensor(rows).long()
        return ProbeDistillation(self.teacher_logits[rows], self.weights[rows], self.alpha, self.temperature,
                                 weighting=self.weighting)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """`(num_settings, batch_size)`: the per-sample loss of stacked `logits` `(num_settings, batch_size,
        num_labels)` on the probe's `rows` with their `labels`."""
        num_settings, batch_size, num_labels = logits.shape
        per_sample = multi_teacher_kd_loss(
            logits.reshape(-1, num_labels), self.teacher_logits[rows].repeat(num_settings, 1, 1),
            self.weights[rows].repeat(num_settings, 1), labels.repeat(num_settings), self.alpha, self.temperature,
            reduction="none")
        return per_sample.view(num_settings, batch_size)


__all__ = [
    "REWARDS",
    "WEIGHTINGS",
    "AgentState",
    "MTKDRLAgent",
    "ProbeDistillation",
    "agent_state",
    "agent_update",
    "confidence_weights",
    "equal_weights",
    "head_cross_entropy",
    "improvement_reward",
    "kd_divergence",
    "kd_loss",
    "loss_reward",
    "mean_teacher_weights",
    "multi_teacher_kd_loss",
    "reinforce_loss",
    "per_sample_cross_entropy",
    "random_state",
    "relational_cosine",
    "save_agent",
    "standardised",
    "student_cross_entropy",
    "teacher_cross_entropies",
    "teacher_weights",
]
