"""Descriptions of the options a command declares without one, and every option's default in ``--help``.

``describe_options(parser)`` walks a parser and its sub-commands once they are built: an option without help
takes its description from ``DESCRIPTIONS`` (by ``"command:dest"`` first, then by ``dest``), and every
option's help ends with its default unless it already says it. A test walks every parser.
"""

from __future__ import annotations

import argparse

#: 0 in a training option means "the server's default" (the course notebook's value).
_SERVER_DEFAULT = "0: the server's default, the course notebook's value"

DESCRIPTIONS: dict[str, str] = {
    "service": "which service to ask (all: every one)",
    "seed": "random seed of the weights and inputs the server draws",
    "heads": "attention heads",
    "softmax": "softmax over each row of the scores (row) or over the whole matrix (matrix, the notebook's)",
    "positional_encoding": "add sinusoidal positional encodings before attention (breaks equivariance)",
    "dtype": "floating-point type of the computation",
    "strategy": "how permutations are chosen (auto: all of them when few, else sampled)",
    "lm sample:strategy": "draw each word from the distribution (multinomial) or take the likeliest (greedy)",
    "pooling": "how the sequence is pooled into one vector",
    "batch_size": "sequences per batch",
    "lm train:batch_size": f"sequences per training batch ({_SERVER_DEFAULT})",
    "lm perplexity:batch_size": f"sequences per evaluation batch ({_SERVER_DEFAULT})",
    "sequence_length": "time steps T",
    "lm train:sequence_length": f"time steps of truncated back-propagation ({_SERVER_DEFAULT})",
    "model_dim": "model width D",
    "activation": "where the ReLU goes: between the two layers, or after every layer",
    "cell": "recurrent cell",
    "cells": "recurrent cells to compare",
    "init": "initialisation of the weights",
    "hidden_size": "hidden units H",
    "lm train:hidden_size": f"LSTM hidden units ({_SERVER_DEFAULT})",
    "random_initial_state": "start from a random hidden state instead of zeros",
    "chunk_counts": "numbers of chunks K to compare",
    "vocab_size": "vocabulary size of the synthetic language model",
    "embed_size": "embedding width",
    "lm train:embed_size": f"embedding width ({_SERVER_DEFAULT})",
    "chunk_length": "time steps per chunk",
    "unit": "a unit whose box to compute, LAYER:ROW,COLUMN (repeatable)",
    "method": "attack method",
    "norm": "norm of the perturbation budget (none: the method's own)",
    "train": "training text file (whitespace-separated words, one sentence per line)",
    "valid": "validation text file",
    "test": "test text file",
    "name": "a name to show in listings",
    "num_layers": f"LSTM layers ({_SERVER_DEFAULT})",
    "epochs": f"passes over the training split ({_SERVER_DEFAULT})",
    "max_steps": "stop after this many steps (0: no limit)",
    "log_interval": f"steps between two step events ({_SERVER_DEFAULT})",
    "checkpoint_interval": f"steps between two checkpoints ({_SERVER_DEFAULT})",
    "eval_batch_size": f"sequences per evaluation batch ({_SERVER_DEFAULT})",
    "workers": "data-loading workers (0: in the training process)",
    "patience": "stop after this many evaluations without a better validation perplexity (0: never)",
    "lr_decay_start_epoch": "first epoch whose learning rate decays (0: from the start)",
    "dropout": "dropout probability between layers",
    "lr_decay": "learning-rate factor per epoch once decay starts (0: no decay)",
    "init_range": f"uniform initialisation range of the weights ({_SERVER_DEFAULT})",
    "learning_rate": "learning rate (none: the optimizer's default, Adam 0.002, SGD 20)",
    "clip_norm": "gradient-norm clipping (none: 0.5)",
    "optimizer": "optimizer",
    "tie_weights": "share the embedding and output weights",
    "job_id": "the training job's id (as `lm jobs` lists it)",
    "state": "only jobs in these states",
    "limit": "at most this many jobs (0: all)",
    "watch": "then follow the job until it stops",
    "split": "split of the job's corpus",
    "prompt": "words to start from",
    "num_words": "words to generate",
    "word_a": "first word",
    "word_b": "second word",
    "word": "the word whose neighbours to list",
    "job": "the training job's id",
    "k": "neighbours to list",
    "metric": "distance between embeddings",
}


def _description(command: str, action: argparse.Action) -> str | None:
    return DESCRIPTIONS.get(f"{command}:{action.dest}") or DESCRIPTIONS.get(action.dest)


def describe_options(parser: argparse.ArgumentParser, command: str = "") -> None:
    """Give every option of ``parser`` and its sub-commands a description and its default."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                describe_options(sub, f"{command} {name}".strip())
            continue
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        if not action.help:
            action.help = _description(command, action) or ""
        if action.option_strings and "default" not in action.help and "%(default)" not in action.help:
            action.help = f"{action.help} (default: %(default)s)".strip()
