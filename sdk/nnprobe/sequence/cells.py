"""Recurrent cells, weight initialisations and input distributions: names and their wire codes."""

from __future__ import annotations

from nnprobe.api.sequence.v1 import sequence_pb2 as pb

CELL_CODES = {
    "rnn_tanh": pb.CELL_TYPE_RNN_TANH,
    "rnn_relu": pb.CELL_TYPE_RNN_RELU,
    "rnn_linear": pb.CELL_TYPE_RNN_LINEAR,
    "lstm": pb.CELL_TYPE_LSTM,
    "gru": pb.CELL_TYPE_GRU,
}
CELL_NAMES = {code: name for name, code in CELL_CODES.items()}
INIT_CODES = {
    "pytorch": pb.INIT_SCHEME_PYTORCH,
    "normal": pb.INIT_SCHEME_NORMAL,
    "orthogonal": pb.INIT_SCHEME_ORTHOGONAL,
}
INPUT_CODES = {
    "normal": pb.INPUT_DISTRIBUTION_NORMAL,
    "uniform": pb.INPUT_DISTRIBUTION_UNIFORM,
    "constant": pb.INPUT_DISTRIBUTION_CONSTANT,
    "zero": pb.INPUT_DISTRIBUTION_ZERO,
}


CELLS = tuple(CELL_CODES)
INIT_SCHEMES = tuple(INIT_CODES)
INPUT_DISTRIBUTIONS = tuple(INPUT_CODES)
