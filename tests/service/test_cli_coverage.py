"""Every RPC of every service is reachable from the command line."""

import contextlib
import io

import pytest
from nnprobe.api.attention.v1 import attention_pb2
from nnprobe.api.sequence.v1 import sequence_pb2
from nnprobe.api.vision.v1 import vision_pb2
from nnprobe.cli import build_parser

#: RPC -> the CLI command that calls it.
COMMANDS = {
    "nnprobe.attention.v1.AttentionService.CheckPermutationEquivariance": "attention equivariance",
    "nnprobe.attention.v1.AttentionService.CheckPoolingInvariance": "attention pooling",
    "nnprobe.attention.v1.AttentionService.CheckFeedForwardEquivalence": "attention ffn",
    "nnprobe.attention.v1.AttentionService.UploadModel": "attention models upload",
    "nnprobe.attention.v1.AttentionService.ListModels": "attention models list",
    "nnprobe.attention.v1.AttentionService.DeleteModel": "attention models delete",
    "nnprobe.vision.v1.VisionService.ComputeReceptiveField": "rf",
    "nnprobe.vision.v1.VisionService.ListModels": "models list",
    "nnprobe.vision.v1.VisionService.UploadModel": "models upload",
    "nnprobe.vision.v1.VisionService.DeleteModel": "models delete",
    "nnprobe.vision.v1.VisionService.Classify": "classify",
    "nnprobe.vision.v1.VisionService.GenerateAdversarial": "attack",
    "nnprobe.vision.v1.VisionService.UploadDataset": "dataset upload",
    "nnprobe.vision.v1.VisionService.EvaluateRobustness": "robustness",
    "nnprobe.vision.v1.VisionService.GetRobustnessJob": "robustness-job show",
    "nnprobe.vision.v1.VisionService.ListRobustnessJobs": "robustness-jobs",
    "nnprobe.vision.v1.VisionService.WatchRobustnessJob": "robustness-job watch",
    "nnprobe.vision.v1.VisionService.CancelRobustnessJob": "robustness-job cancel",
    "nnprobe.vision.v1.VisionService.ResumeRobustnessJob": "robustness-job resume",
    "nnprobe.sequence.v1.SequenceService.RunRecurrent": "rnn forward",
    "nnprobe.sequence.v1.SequenceService.AnalyzeGradients": "rnn gradients",
    "nnprobe.sequence.v1.SequenceService.CompareTruncation": "rnn truncation",
    "nnprobe.sequence.v1.SequenceService.UploadModel": "rnn models upload",
    "nnprobe.sequence.v1.SequenceService.ListModels": "rnn models list",
    "nnprobe.sequence.v1.SequenceService.DeleteModel": "rnn models delete",
    "nnprobe.sequence.v1.SequenceService.UploadCorpus": "lm upload",
    "nnprobe.sequence.v1.SequenceService.StartTraining": "lm train",
    "nnprobe.sequence.v1.SequenceService.WatchJob": "lm watch",
    "nnprobe.sequence.v1.SequenceService.ListJobs": "lm jobs",
    "nnprobe.sequence.v1.SequenceService.GetJob": "lm job",
    "nnprobe.sequence.v1.SequenceService.CancelJob": "lm cancel",
    "nnprobe.sequence.v1.SequenceService.ResumeJob": "lm resume",
    "nnprobe.sequence.v1.SequenceService.GetTrainingLogs": "lm tensorboard",
    "nnprobe.sequence.v1.SequenceService.EvaluatePerplexity": "lm perplexity",
    "nnprobe.sequence.v1.SequenceService.Sample": "lm sample",
    "nnprobe.sequence.v1.SequenceService.EmbeddingDistance": "lm distance",
    "nnprobe.sequence.v1.SequenceService.NearestWords": "lm nearest",
}

RPCS = [
    method.full_name
    for module, service in [
        (attention_pb2, "AttentionService"),
        (vision_pb2, "VisionService"),
        (sequence_pb2, "SequenceService"),
    ]
    for method in module.DESCRIPTOR.services_by_name[service].methods
]


@pytest.mark.parametrize("rpc", RPCS)
def test_every_rpc_has_a_cli_command(rpc):
    assert rpc in COMMANDS, f"no CLI command is known to call {rpc}"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*COMMANDS[rpc].split(), "--help"])
    assert exit_info.value.code == 0
    assert "--json" in out.getvalue()  # every calling command offers machine-readable output
