"""Demo section: the LSTM language model on Penn Treebank (the notebook's question 2), as a training job.

A short run (small sizes, max_steps) keeps it to about a minute on two CPU cores; the notebook's full
setting is ``client.start_training("ptb")`` (embed 128, hidden 1024, 5 epochs: about 21 minutes per epoch
on such a machine, minutes on a GPU).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from nnprobe import SequenceClient
from nnprobe.cli.output import ProgressBar, print_table, to_jsonable

STEPS = 300


def run(address: str, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with SequenceClient(address, timeout=600) as client:
        print(
            f"2.   LSTM language model on PTB: embed 64, hidden 128, batch 20 x 30, Adam 0.002, {STEPS} steps"
        )
        job = client.start_training(
            "ptb",
            name="demo",
            embed_size=64,
            hidden_size=128,
            max_steps=STEPS,
            log_interval=25,
            eval_batch_size=20,
            seed=0,
        )
        print(f"job {job.job_id}: {job.parameters} parameters, vocabulary {job.vocab_size}")
        bar = ProgressBar(job.total_steps, "training", force=True)
        rows = []
        for event in client.watch_job(job.job_id):
            if event.kind == "step":
                bar.update(event.step, f"loss {event.loss:.3f}")
                rows.append((event.step, event.loss, event.perplexity, event.tokens_per_second))
            elif event.kind == "evaluation":
                bar.close()
                valid, test = event.valid_perplexity, event.test_perplexity
                print(f"valid perplexity {valid:.1f}, test perplexity {test:.1f}")
        print_table(rows[::3] + rows[-1:], ["step", "loss", "perplexity", "tokens/s"])
        job = client.get_job(job.job_id, plot=True)
        assert job.state == "succeeded", job.error
        (out_dir / "lm_curves.png").write_bytes(job.plot_png or b"")

        print("\n2(b) Samples from word id 100: multinomial (seed 0), then greedy")
        drawn = client.sample(job.job_id, start_word_id=100, num_words=30, seed=0)
        greedy = client.sample(job.job_id, start_word_id=100, num_words=30, strategy="greedy")
        print(f"  multinomial: {' '.join(drawn.words)}")
        print(f"  greedy:      {' '.join(greedy.words)}")

        print("\n2(c) Euclidean distance between the embeddings of 'army' and 'taxpayer'")
        distance = client.embedding_distance(job.job_id, "army", "taxpayer")
        print(
            f"  euclidean {distance.euclidean:.4f}, cosine similarity {distance.cosine_similarity:.4f} "
            f"(the notebook's fully trained 128-d model: 17.3774)"
        )
        near = client.nearest_words(job.job_id, "army", k=5, metric="cosine")
        print(f"  nearest to 'army' by cosine: {', '.join(w for w, _, _ in near.neighbors)}")
        summary = {
            "job": dataclasses.replace(job, plot_png=None),
            "multinomial": drawn.words,
            "greedy": greedy.words,
            "army_taxpayer": distance,
        }
        (out_dir / "language_model.json").write_text(json.dumps(to_jsonable(summary), indent=2))
        print(f"saved {out_dir / 'lm_curves.png'} and {out_dir / 'language_model.json'}\n")
