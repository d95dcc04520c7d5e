"""The LSTM language model: embedding -> LSTM layers -> linear over the vocabulary.

Every random draw (initial weights, dropout masks) comes from an explicit ``torch.Generator`` so that a
job's result depends only on its seed, never on other work sharing the process's global RNG.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

State = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TrainingConfig:
    """Hyperparameters, every default filled in (the notebook's: 128/1024/1 layer, 5 epochs, 20 x 30, Adam
    0.002, clip 0.5)."""

    embed_size: int = 128
    hidden_size: int = 1024
    num_layers: int = 1
    epochs: int = 5
    batch_size: int = 20
    sequence_length: int = 30
    learning_rate: float = 0.002
    clip_norm: float = 0.5
    optimizer: str = "adam"
    dropout: float = 0.0
    tie_weights: bool = False
    max_steps: int = 0
    seed: int = 0
    device: str = ""
    lr_decay: float = 1.0
    lr_decay_start_epoch: int = 0
    init_range: float = 0.0
    log_interval: int = 10
    checkpoint_interval: int = 200
    eval_batch_size: int = 10
    workers: int = 1
    patience: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainingConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def learning_rate_at(self, epoch: int) -> float:
        """The learning rate of 1-based ``epoch``: lr * lr_decay^max(0, epoch - lr_decay_start_epoch)."""
        start = max(self.lr_decay_start_epoch, 1)
        return self.learning_rate * self.lr_decay ** max(0, epoch - start)


def dropout(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout with masks drawn from ``generator`` (identity when p == 0 or no generator)."""
    if p <= 0 or generator is None:
        return x
    keep = torch.empty_like(x).bernoulli_(1 - p, generator=generator)
    return x * keep / (1 - p)


class LanguageModel(nn.Module):
    """Embedding -> ``num_layers`` one-layer LSTMs (batch first; dropout between them) -> linear.

    Each layer is its own ``nn.LSTM`` so that dropout between layers can draw from the model's generator.
    """

    def __init__(self, vocab_size: int, config: TrainingConfig) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.hidden_size = config.hidden_size
        self.num_layers = config.num_layers
        self.p = config.dropout
        self.embed = nn.Embedding(vocab_size, config.embed_size)
        sizes = [config.embed_size] + [config.hidden_size] * (config.num_layers - 1)
        self.layers = nn.ModuleList(nn.LSTM(size, config.hidden_size, 1, batch_first=True) for size in sizes)
        self.linear = nn.Linear(config.hidden_size, vocab_size)
        if config.tie_weights:
            self.linear.weight = self.embed.weight

    def initialise(self, seed: int, init_range: float) -> None:
        """Draw every parameter from a generator seeded with ``seed``: U(-r, r) when ``init_range`` > 0,
        otherwise PyTorch's defaults (embedding N(0, 1); LSTM and linear U(-1/sqrt(H), 1/sqrt(H)))."""
        generator = torch.Generator().manual_seed(seed)
        bound = 1 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for name, param in self.named_parameters():
                if init_range > 0:
                    param.uniform_(-init_range, init_range, generator=generator)
                elif name.startswith("embed"):
                    param.normal_(0.0, 1.0, generator=generator)
                else:
                    param.uniform_(-bound, bound, generator=generator)

    def initial_state(self, batch: int, device: torch.device) -> State:
        zeros = torch.zeros(1, batch, self.hidden_size, device=device)
        return [(zeros.clone(), zeros.clone()) for _ in self.layers]

    def forward(
        self, tokens: torch.Tensor, state: State, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, State]:
        """Logits (B*T, V) for ``tokens`` (B, T) and the new state. ``generator`` draws dropout masks
        (training); ``None`` runs without dropout (evaluation)."""
        x = dropout(self.embed(tokens), self.p, generator)
        new_state: State = []
        for index, (layer, layer_state) in enumerate(zip(self.layers, state, strict=True)):
            x, (h, c) = layer(x, layer_state)
            new_state.append((h, c))
            if index < len(self.layers) - 1:
                x = dropout(x, self.p, generator)
        x = dropout(x, self.p, generator)
        return self.linear(x.reshape(-1, x.shape[-1])), new_state


def detach(state: State) -> State:
    """Cut the graph between chunks (truncated BPTT)."""
    return [(h.detach(), c.detach()) for h, c in state]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
