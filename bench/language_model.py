"""SequenceService benchmark: training throughput of a language-model job vs the notebook's plain loop.

    .venv/bin/python bench/language_model.py [--steps 20]
    .venv/bin/python bench/language_model.py --quality   # Zaremba et al. (2014) "small": ~45 min, 2 cores

Default mode: the notebook's model and setting on Penn Treebank (embed 128, hidden 1024, 1 layer, batch 20 x
30, Adam 0.002, clip 0.5), the same number of steps, run (1) as a training job of an in-process server
through the SDK and (2) as the notebook's plain PyTorch loop in this process. Each is run twice,
alternating, and the faster run of each is reported (the machine may be shared). Tokens/s of the job is
measured from its RUNNING event to its last step event (setup, event writes and interval checkpoints
included); the job is then cancelled before its final evaluation.

Quality mode: the "small" non-regularised model of Zaremba et al. (2-layer LSTM, 200 units, embed 200,
batch 20, 20 steps, uniform init 0.1, SGD lr 20 with a gradient-norm clip of 0.25 on a mean loss, lr
halved each epoch after the 4th, 13 epochs) trained as a job; prints validation and test perplexity at
every epoch beside the paper's final 120.7 / 114.5.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from nnprobe import SequenceClient
from nnprobe.cli.output import print_table
from nnprobe_services.sequence.lm.corpus import CorpusStore, batchify
from nnprobe_services.server import ServerConfig, create_server
from torch import nn

EMBED, HIDDEN, BATCH, LENGTH, LR, CLIP = 128, 1024, 20, 30, 0.002, 0.5


class RNNLM(nn.Module):
    """The notebook's model."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, EMBED)
        self.lstm = nn.LSTM(EMBED, HIDDEN, 1, batch_first=True)
        self.linear = nn.Linear(HIDDEN, vocab_size)

    def forward(self, x, h):
        out, (h, c) = self.lstm(self.embed(x), h)
        return self.linear(out.reshape(out.size(0) * out.size(1), out.size(2))), (h, c)


def notebook_loop(ids: torch.Tensor, vocab_size: int, steps: int, device: torch.device) -> float:
    """The notebook's training loop for ``steps`` steps; returns seconds from the first to the last step."""
    torch.manual_seed(0)
    model = RNNLM(vocab_size).to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    data = batchify(ids, BATCH).to(device)
    states = (torch.zeros(1, BATCH, HIDDEN, device=device), torch.zeros(1, BATCH, HIDDEN, device=device))
    start = time.perf_counter()
    for step, i in enumerate(range(0, data.size(1) - LENGTH, LENGTH)):
        if step == steps:
            break
        inputs = data[:, i : i + LENGTH]
        targets = data[:, (i + 1) : (i + 1) + LENGTH]
        states = (states[0].detach(), states[1].detach())
        outputs, states = model(inputs, states)
        loss = criterion(outputs, targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def service_run(client: SequenceClient, steps: int) -> tuple[float, float]:
    """(wall seconds RUNNING -> last step, summed step seconds reported by the job)."""
    job = client.start_training("ptb", max_steps=steps, log_interval=1, checkpoint_interval=10_000)
    running_at = last_at = 0.0
    elapsed = 0.0
    for event in client.watch_job(job.job_id):
        if event.kind == "state" and event.state == "running":
            running_at = event.time
        if event.kind == "step":
            last_at, elapsed = event.time, event.elapsed_seconds
            if event.step == steps:
                break
    client.cancel_job(job.job_id)
    return last_at - running_at, elapsed


def throughput(steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = ServerConfig(
            service="sequence",
            host="127.0.0.1",
            port=0,
            data_dir=Path(tmp) / "data",
            cache_dir=Path(tmp) / "c",
        ).validate()
        server, port = create_server(config)
        server.start()
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        corpus = CorpusStore(config.common.data_dir, config.common.cache_dir, None, 0).get("ptb")
        tokens = steps * BATCH * LENGTH
        plain, walls, sums = [], [], []
        try:
            with SequenceClient(f"127.0.0.1:{port}", timeout=None) as client:
                for _ in range(2):
                    plain.append(notebook_loop(corpus.splits["train"].ids, corpus.vocab_size, steps, device))
                    wall, summed = service_run(client, steps)
                    walls.append(wall)
                    sums.append(summed)
        finally:
            server.shutdown(0).wait()
    best_plain, best_wall, best_sum = min(plain), min(walls), min(sums)
    print(
        f"PTB, notebook model (embed {EMBED}, hidden {HIDDEN}), batch {BATCH} x {LENGTH}, "
        f"{steps} steps, {device}"
    )
    print_table(
        [
            ("notebook loop (in-process)", best_plain, tokens / best_plain, 1.0),
            ("service job, wall", best_wall, tokens / best_wall, best_plain / best_wall),
            ("service job, step time", best_sum, tokens / best_sum, best_plain / best_sum),
        ],
        ["run", "seconds", "tokens/s", "x notebook"],
    )


def quality() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = ServerConfig(
            service="sequence",
            host="127.0.0.1",
            port=0,
            data_dir=Path(tmp) / "data",
            cache_dir=Path(tmp) / "c",
        ).validate()
        server, port = create_server(config)
        server.start()
        started = time.perf_counter()
        try:
            with SequenceClient(f"127.0.0.1:{port}", timeout=None) as client:
                job = client.start_training(
                    "ptb",
                    embed_size=200,
                    hidden_size=200,
                    num_layers=2,
                    epochs=13,
                    batch_size=20,
                    sequence_length=20,
                    optimizer="sgd",
                    learning_rate=20.0,
                    clip_norm=0.25,
                    lr_decay=0.5,
                    lr_decay_start_epoch=4,
                    init_range=0.1,
                    log_interval=200,
                )
                rows = []
                for event in client.watch_job(job.job_id):
                    if event.kind == "evaluation":
                        rows.append(
                            (event.epoch, event.learning_rate, event.valid_perplexity, event.test_perplexity)
                        )
                        print(
                            f"epoch {event.epoch}: valid {event.valid_perplexity:.1f} "
                            f"test {event.test_perplexity:.1f}"
                        )
                final = client.get_job(job.job_id)
        finally:
            server.shutdown(0).wait()
    minutes = (time.perf_counter() - started) / 60
    print_table(rows, ["epoch", "lr", "valid ppl", "test ppl"])
    print_table(
        [
            ("nnprobe job", final.valid_perplexity, final.test_perplexity, minutes),
            ("Zaremba et al. (2014), small", 120.7, 114.5, float("nan")),
        ],
        ["run", "valid ppl", "test ppl", "minutes"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20, help="training steps per run (default 20)")
    parser.add_argument("--quality", action="store_true", help="train Zaremba's small model for 13 epochs")
    args = parser.parse_args()
    quality() if args.quality else throughput(args.steps)


if __name__ == "__main__":
    main()
