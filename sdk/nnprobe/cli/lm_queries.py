"""``nnprobe lm perplexity|sample|distance|nearest``: questions put to a training job's model
(SequenceService's LSTM language model; the parsers are in :mod:`nnprobe.cli.lm`)."""

from __future__ import annotations

import argparse

from nnprobe.cli.output import client_kwargs, print_fields, print_json, print_table
from nnprobe.sequence import SequenceClient


def _client(args: argparse.Namespace) -> SequenceClient:
    return SequenceClient(args.address, **client_kwargs(args))


def run_perplexity(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.evaluate_perplexity(
            args.job_id, split=args.split, batch_size=args.batch_size, checkpoint=args.checkpoint
        )
    if args.json:
        print_json(result)
    else:
        print_fields(
            [
                ("split", result.split),
                ("perplexity", result.perplexity),
                ("loss (nats)", result.loss),
                ("tokens", result.tokens),
                ("model step", result.step),
                ("seconds", result.seconds),
            ]
        )
    return 0


def run_sample(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.sample(
            args.job_id,
            prompt=args.prompt,
            start_word_id=args.start_id,
            num_words=args.num_words,
            strategy="greedy" if args.greedy else args.strategy,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            checkpoint=args.checkpoint,
        )
    if args.json:
        print_json(result)
    else:
        print(result.text.rstrip())
        print(f"\n(log-probability {result.log_probability:.2f}, model step {result.step})")
    return 0


def run_distance(args: argparse.Namespace) -> int:
    with _client(args) as client:
        d = client.embedding_distance(args.job, args.word_a, args.word_b, checkpoint=args.checkpoint)
    if args.json:
        print_json(d)
    else:
        print_fields(
            [
                ("words", f"{d.word_a} (id {d.id_a}), {d.word_b} (id {d.id_b})"),
                ("euclidean", d.euclidean),
                ("cosine similarity", d.cosine_similarity),
                ("cosine distance", d.cosine_distance),
                ("norms", f"{d.norm_a:.4f}, {d.norm_b:.4f}"),
                ("model step", d.step),
            ]
        )
    return 0


def run_nearest(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.nearest_words(
            args.job, args.word, k=args.k, metric=args.metric, checkpoint=args.checkpoint
        )
    if args.json:
        print_json(result)
    else:
        print(f"nearest to {result.word} (id {result.word_id}) by {result.metric} distance:")
        print_table([[w, i, d] for w, i, d in result.neighbors], ["word", "id", "distance"])
    return 0
