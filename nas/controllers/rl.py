"""NAS-FPN's controller: an LSTM policy that emits the decisions of a trial one after another,
trained with PPO on the trials' rewards, as an Optuna sampler.

Sampling. A trial's decisions arrive define-by-run (``sample_independent``). For the decision
``name`` the LSTM takes one step whose input is the embedding of the trial's previous decision
(a learned start vector for the first) and a head of its own for ``name`` turns the output into
one logit per choice; the value is sampled from their softmax. Embeddings and heads are created
the first time a name is seen, so any space works. Decisions the policy did not emit (enqueued
values, single-choice decisions) are still fed to the LSTM, so later ones are conditioned on them.

Learning. The policy learns from every finished trial of the study that has a reward (see
``nas.controllers.common``; FAIL trials are ignored), whoever proposed it: enqueued or seeded
trials, trials from before a resume, trials of another controller in the same study. Whenever
``batch`` such trials have not been learned from yet (checked as each new trial starts, in
completion order), they form one PPO update: the log-probabilities of their decisions are
recomputed by replaying their values through the policy (teacher forcing) -- the "old" policy of
the PPO ratio is thus the policy just before the update, which needs no per-decision bookkeeping
in the storage and treats seeded trials like the policy's own -- and ``epochs`` full-batch Adam
steps maximise the clipped objective (per decision, ``clip`` = 0.2) plus ``entropy`` times the mean
entropy. The advantage of a trial is its reward minus a moving-average baseline (``baseline_decay``),
divided by the moving-average deviation so that the step size does not depend on the reward's scale.

State. With ``state_path`` the policy, optimiser, baseline, counters, the set of trials learned
from and the sampling RNG are written to that file (atomically) after updating and read from it
at construction when it exists: a resumed search continues where it stopped and catches up on the
trials that finished after the last save. Concurrent trials (asked before earlier ones are told)
each keep their own LSTM state, keyed by trial number.

Multi-objective studies: pass ``reward`` to scalarise them (e.g. MnasNet's AP * (ms / target)^w).
"""

from __future__ import annotations

import math
import os
import secrets
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState
from torch import Tensor, nn

from nas.controllers.common import DecisionSampler, Reward, categorical, rewarded_trials, study_reward

STATE_VERSION = 1
_LSTMState = tuple[Tensor, Tensor]


@contextmanager
def _one_thread() -> Iterator[None]:
    """Runs the policy's tiny tensor ops on one thread: more only add sync, or worse on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Policy(nn.Module):
    """The LSTM, its start input, and one embedding and one head per decision name (by index)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.lstm = nn.LSTM(hidden, hidden)
        self.start = nn.Parameter(torch.empty(hidden).uniform_(-0.1, 0.1))
        # ModuleDict keys are indices into the sampler's vocabulary: decision names may hold dots.
        self.embeddings = nn.ModuleDict()
        self.heads = nn.ModuleDict()

    def add_decision(self, num_choices: int) -> list[nn.Parameter]:
        key = str(len(self.heads))
        self.embeddings[key] = nn.Embedding(num_choices, self.hidden)
        head = nn.Linear(self.hidden, num_choices)
        # Near-zero logits: the untrained policy samples (almost) uniformly, like random search.
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
        self.heads[key] = head
        return [*self.embeddings[key].parameters(), *head.parameters()]


@dataclass
class _Rollout:
    """One running trial's LSTM state after ``steps`` of its decisions."""

    state: _LSTMState | None = None
    steps: int = 0


@dataclass(frozen=True)
class _Replay:
    """Per-decision log-probabilities and entropies of a batch of trials, and each one's trial."""

    log_probs: Tensor
    entropies: Tensor
    trial_index: Tensor


class RLSampler(DecisionSampler):
    """PPO-trained LSTM controller (NAS-FPN, Ghiasi et al. 2019) over categorical decisions.

    Args:
        seed: seeds the policy's initial weights (per decision name, so independent of the order
            names appear in) and the sampling; random when None.
        state_path: file to save the controller's state to after each update and to resume from
            when it exists; None keeps the state in memory only.
        reward: maps a finished trial to the reward to maximise (default: its objective value;
            required for multi-objective studies).
        batch: trials per PPO update.
        hidden: LSTM width, also the embedding width.
        lr: Adam learning rate.
        epochs: Adam steps per update, each over the whole batch.
        clip: PPO's epsilon: the probability ratio is clipped to [1 - clip, 1 + clip].
        entropy: weight of the entropy bonus (advantages are normalised, so it is scale-free).
        baseline_decay: decay of the moving averages of the reward and its squared deviation.
    """

    def __init__(
        self,
        seed: int | None = None,
        state_path: str | os.PathLike[str] | None = None,
        reward: Reward | None = None,
        *,
        batch: int = 4,
        hidden: int = 64,
        lr: float = 0.005,
        epochs: int = 4,
        clip: float = 0.2,
        entropy: float = 0.01,
        baseline_decay: float = 0.95,
    ) -> None:
        self._seed = seed if seed is not None else secrets.randbits(31)
        self._state_path = Path(state_path) if state_path is not None else None
        self._reward = reward
        self.batch, self.epochs, self.clip = batch, epochs, clip
        self.entropy, self.baseline_decay = entropy, baseline_decay
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed)
            self.policy = _Policy(hidden)
        self.lr = lr
        self._optimizer = torch.optim.Adam(self.policy.parameters(), lr=lr)
        self._generator = torch.Generator().manual_seed(self._seed)
        self._vocab: list[tuple[str, tuple[Any, ...]]] = []  # (name, choices) in order of creation
        self._index: dict[str, int] = {}
        self.baseline: float | None = None  # moving average of the reward; None before any update
        self.deviation = 0.0  # moving average of (reward - baseline)^2
        self.updates = 0
        self._learned: set[int] = set()  # trial numbers already used by an update
        self._rollouts: dict[int, _Rollout] = {}  # by trial number; several trials may run at once
        if self._state_path is not None and self._state_path.exists():
            self._load(self._state_path)

    # -- Optuna sampler interface ---------------------------------------------------------------

    def reseed_rng(self) -> None:
        self._generator.seed()

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.learn(study)

    def finish(self, study: optuna.Study) -> None:
        """Learns from the last batch too, so the saved state is up to date when a search stops."""
        self.learn(study)

    def learn(self, study: optuna.Study) -> None:
        """Learns from the finished trials not learned from yet, ``batch`` at a time, and saves
        the state. Runs before each trial; a search calls it once more at its end."""
        pending = [
            (t, r)
            for t, r in rewarded_trials(study, study_reward(study, self._reward))
            if t.number not in self._learned
        ]
        updates = range(0, len(pending) - self.batch + 1, self.batch)
        for start in updates:
            with _one_thread():
                self._update(pending[start : start + self.batch])
        if updates and self._state_path is not None:
            self._save(self._state_path)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        distribution = categorical(param_name, param_distribution, "rl")
        head = self.policy.heads[str(self._register(param_name, distribution))]
        made = self._tokens(trial)
        rollout = self._rollouts.setdefault(trial.number, _Rollout())
        with torch.no_grad(), _one_thread():
            # Catch up on decisions made without the policy, then take this decision's step.
            for step in range(rollout.steps, len(made) + 1):
                output, rollout.state = self.policy.lstm(
                    self._input(made, step).view(1, 1, -1), rollout.state
                )
            rollout.steps = len(made) + 1
            probs = torch.softmax(head(output.view(-1)), dim=-1)
            choice = int(torch.multinomial(probs, 1, generator=self._generator))
        return distribution.choices[choice]

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._rollouts.pop(trial.number, None)

    # -- policy -----------------------------------------------------------------------------------

    def _register(self, name: str, distribution: CategoricalDistribution) -> int:
        """The vocabulary index of ``name``, creating its embedding and head the first time."""
        choices = tuple(distribution.choices)
        if name in self._index:
            known = self._vocab[self._index[name]][1]
            if known != choices:
                raise ValueError(
                    f"rl controller: decision {name!r} changed its choices from {known} to {choices}"
                )
            return self._index[name]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed ^ zlib.crc32(name.encode()))
            self._optimizer.add_param_group({"params": self.policy.add_decision(len(choices))})
        self._index[name] = len(self._vocab)
        self._vocab.append((name, choices))
        return self._index[name]

    def _tokens(self, trial: FrozenTrial) -> list[tuple[int, int]]:
        """The trial's decisions so far as (vocabulary index, choice index), in the order made."""
        tokens = []
        for name, value in trial.params.items():  # storages keep params in the order they were set
            distribution = categorical(name, trial.distributions[name], "rl")
            tokens.append((self._register(name, distribution), int(distribution.to_internal_repr(value))))
        return tokens

    def _embed(self, token: tuple[int, int]) -> Tensor:
        return self.policy.embeddings[str(token[0])](torch.tensor(token[1]))

    def _input(self, tokens: list[tuple[int, int]], step: int) -> Tensor:
        """The LSTM input that precedes decision ``step``: the previous decision's embedding."""
        return self.policy.start if step == 0 else self._embed(tokens[step - 1])

    def _replay(self, sequences: list[list[tuple[int, int]]]) -> _Replay:
        """Teacher-forced log-probabilities and entropies of the decisions that had a choice."""
        steps = max(len(tokens) for tokens in sequences)
        inputs = torch.zeros(steps, len(sequences), self.policy.hidden)
        for b, tokens in enumerate(sequences):
            inputs[: len(tokens), b] = torch.stack([self._input(tokens, step) for step in range(len(tokens))])
        outputs, _ = self.policy.lstm(inputs)  # padding sits after each sequence: it cannot leak back
        log_probs, entropies, trial_index = [], [], []
        for b, tokens in enumerate(sequences):
            for step, (index, choice) in enumerate(tokens):
                if len(self._vocab[index][1]) < 2:
                    continue  # nothing was chosen
                log_softmax = torch.log_softmax(self.policy.heads[str(index)](outputs[step, b]), dim=-1)
                log_probs.append(log_softmax[choice])
                entropies.append(-(log_softmax.exp() * log_softmax).sum())
                trial_index.append(b)
        return _Replay(torch.stack(log_probs), torch.stack(entropies), torch.tensor(trial_index))

    def _update(self, batch: list[tuple[FrozenTrial, float]]) -> None:
        """One PPO update on ``batch`` (trial, reward) pairs; then moves the baseline."""
        rewards = [reward for _, reward in batch]
        if self.baseline is None:
            self.baseline = sum(rewards) / len(rewards)
            self.deviation = sum((r - self.baseline) ** 2 for r in rewards) / len(rewards)
        scale = math.sqrt(self.deviation) if self.deviation > 0 else 1.0
        advantages = torch.tensor([(r - self.baseline) / scale for r in rewards])
        sequences = [self._tokens(trial) for trial, _ in batch]
        self._learned.update(trial.number for trial, _ in batch)
        if any(len(self._vocab[i][1]) > 1 for tokens in sequences for i, _ in tokens):
            with torch.no_grad():
                old = self._replay(sequences).log_probs
            for _ in range(self.epochs):
                replay = self._replay(sequences)
                ratio = torch.exp(replay.log_probs - old)
                advantage = advantages[replay.trial_index]
                clipped = torch.clamp(ratio, 1 - self.clip, 1 + self.clip)
                objective = torch.minimum(ratio * advantage, clipped * advantage).mean()
                loss = -objective - self.entropy * replay.entropies.mean()
                self._optimizer.zero_grad()
                loss.backward()
                self._optimizer.step()
        for r in rewards:
            delta = r - self.baseline
            self.baseline += (1 - self.baseline_decay) * delta
            self.deviation = self.baseline_decay * (self.deviation + (1 - self.baseline_decay) * delta**2)
        self.updates += 1

    # -- state ------------------------------------------------------------------------------------

    def _save(self, path: Path) -> None:
        state = {
            "version": STATE_VERSION,
            "seed": self._seed,
            "vocab": [[name, list(choices)] for name, choices in self._vocab],
            "policy": self.policy.state_dict(),
            "optimizer": self._optimizer.state_dict(),
            "baseline": self.baseline,
            "deviation": self.deviation,
            "updates": self.updates,
            "learned": sorted(self._learned),
            "generator": self._generator.get_state(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)  # a crash mid-write leaves the previous state intact

    def _load(self, path: Path) -> None:
        state = torch.load(path, weights_only=True)
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"{path}: rl controller state version {state.get('version')}, expected {STATE_VERSION}"
            )
        self._seed = state["seed"]
        for name, choices in state["vocab"]:
            self._register(name, CategoricalDistribution(choices))
        try:
            self.policy.load_state_dict(state["policy"])
        except RuntimeError as error:
            raise ValueError(
                f"{path}: saved rl policy does not fit this sampler's settings: {error}"
            ) from None
        self._optimizer.load_state_dict(state["optimizer"])
        for group in self._optimizer.param_groups:  # settings come from the constructor, not the file
            group["lr"] = self.lr
        self.baseline, self.deviation = state["baseline"], state["deviation"]
        self.updates, self._learned = state["updates"], set(state["learned"])
        self._generator.set_state(state["generator"])
