"""Write the example notebooks of examples/ (outputs stripped): the course assignment through the SDK.

Each notebook reads its server's address from ``NNPROBE_VISION_ADDR``, ``NNPROBE_SEQUENCE_ADDR`` or
``NNPROBE_ATTENTION_ADDR`` (defaults ``localhost:50051``, ``:50052``, ``:50053``; start them with
``nnprobe serve all``) and the seed photos from ``NNPROBE_SHARED_DIR`` (default ``../shared``). Workloads are
small: every notebook runs in seconds to a minute on a CPU. Run ``python scripts/make_notebooks.py`` after
editing a notebook here; ``--check`` fails when examples/ differs from what this script writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

SEED_PHOTOS = """import os
from pathlib import Path

shared = Path(os.environ.get("NNPROBE_SHARED_DIR", "../../shared"))
photos = sorted((shared / "data" / "seed-images").glob("*.jpg"))
[p.name for p in photos]"""

NOTEBOOKS: dict[str, list[tuple[str, str]]] = {
    "1a_receptive_fields.ipynb": [
        (
            "md",
            "# 1.A Receptive-field arithmetic\n\nThe course notebook's AlexNet-style layer list, computed "
            "by VisionService in exact arithmetic; the boxes of unit (1, 1) of the first layers, proved by "
            "back-propagation (`verify=True`), and drawn (`plot=True`).",
        ),
        (
            "code",
            "from nnprobe import VisionClient\nfrom nnprobe.vision import Layer\n\n"
            "vision = VisionClient()  # NNPROBE_VISION_ADDR or localhost:50051\nvision",
        ),
        (
            "code",
            "alexnet = [\n"
            '    Layer("conv1", 11, 4, 0), Layer("pool1", 3, 2, 0, kind="pool"),\n'
            '    Layer("conv2", 5, 1, 2), Layer("pool2", 3, 2, 0, kind="pool"),\n'
            '    Layer("conv3", 3, 1, 1), Layer("conv4", 3, 1, 1), Layer("conv5", 3, 1, 1),\n'
            '    Layer("pool5", 3, 2, 0, kind="pool"),\n'
            '    Layer("fc6-conv", 6, 1, 0), Layer("fc7-conv", 1, 1, 0),\n'
            "]\n"
            'units = [(name, 1, 1) for name in ("conv1", "pool1", "conv2")]\n'
            "field = vision.compute_receptive_field(\n"
            "    alexnet, input_size=227, first_pixel_center=1, units=units, verify=True, plot=True\n"
            ")\nfield",
        ),
        ("md", "The layer table as a DataFrame (`pip install 'nnprobe[pandas]'`), then the unit boxes."),
        (
            "code",
            'field.to_pandas()[["name", "height.size", "height.jump", "height.receptive_size", '
            '"height.start"]]',
        ),
        (
            "code",
            'field.to_pandas("units")[["layer", "x", "y", "vertical.start", "vertical.end", '
            '"verification.matches"]]',
        ),
        ("code", 'field.save("receptive_field.png")'),
    ],
    "1b_classification.ipynb": [
        (
            "md",
            "# 1.B ImageNet classification\n\nThe seed photos through the default model, with the "
            "correct preprocessing (RGB, /255, shorter side 256, centre crop 224).",
        ),
        ("code", "from nnprobe import VisionClient\n\nvision = VisionClient()"),
        ("code", SEED_PHOTOS),
        ("code", "default = next(m for m in vision.list_models() if m.is_default)\ndefault"),
        (
            "code",
            'result = vision.classify(photos, top_k=3, names=[p.stem.split("_")[-1] for p in photos])\n'
            "result",
        ),
        ("code", 'result.to_pandas().query("rank == 1")'),
    ],
    "1c_adversarial.ipynb": [
        (
            "md",
            "# 1.C Adversarial examples\n\nA targeted PGD attack on the tiger photo (a few steps, for "
            "speed): the original, the adversarial image and the perturbation are shown with the result.",
        ),
        ("code", "from nnprobe import VisionClient\n\nvision = VisionClient(timeout=600)"),
        ("code", SEED_PHOTOS + '\ntiger = next(p for p in photos if "tiger" in p.name)\ntiger.name'),
        (
            "code",
            '[attack] = vision.attack(\n    tiger, target=15, method="pgd", eps="4/255", '
            'step_size="2/255", steps=3, names=["tiger"]\n)\nattack',
        ),
        ("code", "attack.to_pandas()"),
        ("code", 'attack.save("adversarial.png"), attack.save("perturbation.png", "perturbation_png")'),
    ],
    "2_language_model.ipynb": [
        (
            "md",
            "# 2 The LSTM language model\n\nThe course trains on Penn Treebank "
            '(`sequence.start_training("ptb")`, about 20 minutes an epoch on a CPU). '
            "Here a tiny corpus and a tiny model show the same calls in seconds: training as a job that a "
            "notebook can reattach to after a kernel restart (`sequence.job(job_id)`), sampling and "
            "embedding distances.",
        ),
        ("code", "from nnprobe import SequenceClient\n\nsequence = SequenceClient(timeout=120)"),
        (
            "code",
            'words = ["the", "army", "marched", "taxpayer", "paid", "tax", "soldier", '
            '"money"]\n'
            'lines = [" ".join(words[(i + j) % len(words)] for j in range(6)) for i in range(200)]\n'
            'corpus = sequence.upload_corpus("\\n".join(lines), "\\n".join(lines[:20]), '
            '"\\n".join(lines[20:40]))\ncorpus',
        ),
        (
            "code",
            'job = sequence.start_training(\n    corpus.corpus_id, name="tiny", embed_size=16, '
            "hidden_size=32, batch_size=4,\n    sequence_length=8, epochs=2, learning_rate=0.01, "
            "log_interval=5, seed=0,\n)\n"
            "job_id = job.job_id  # keep it: sequence.job(job_id) finds the job after a restart",
        ),
        ("code", "trained = sequence.job(job_id).watch()  # a progress bar, then the curves\ntrained"),
        ("code", 'trained.to_pandas().query("kind == \'evaluation\'")[["step", "valid_perplexity"]]'),
        ("code", 'sequence.sample(job_id, prompt="the army", num_words=12, seed=0)'),
        ("code", 'sequence.embedding_distance(job_id, "army", "taxpayer")'),
        ("code", 'sequence.nearest_words(job_id, "army", k=3, metric="cosine").to_pandas()'),
    ],
    "3_recurrent.ipynb": [
        (
            "md",
            "# 3 Recurrent networks: forward passes and gradient flow\n\n3.B a tanh RNN settles under "
            "constant input; 3.C |dh_T/dh_k| vanishes or explodes with the spectral radius of W_hh; "
            "truncated BPTT keeps memory flat in the number of chunks.",
        ),
        (
            "code",
            "import numpy as np\nfrom nnprobe import SequenceClient\n\n"
            "sequence = SequenceClient(timeout=300)",
        ),
        (
            "code",
            'forward = sequence.run_recurrent(\n    np.ones((25, 1, 3)), cell="rnn_tanh", hidden_size=3, '
            "seed=0, output_size=3, settle_tolerance=1e-9\n)\nforward",
        ),
        (
            "code",
            'gradients = sequence.analyze_gradients(\n    cells=["rnn_tanh", "lstm"], '
            "spectral_radii=[0.5, 1.5], hidden_size=16, sequence_length=30, plot=True\n)\ngradients",
        ),
        ("code", 'gradients.to_pandas("runs")'),
        (
            "code",
            "sequence.compare_truncation(chunk_counts=[1, 2, 4], vocab_size=50, embed_size=8, "
            "hidden_size=16, batch_size=2, chunk_length=5, plot=True)",
        ),
    ],
    "4_attention.ipynb": [
        (
            "md",
            "# 4 Self-attention\n\n4.B self-attention is permutation equivariant (and a causal mask "
            "breaks it); 4.C pooling makes it invariant; 4.D a position-wise Linear equals Conv1d(kernel 1).",
        ),
        ("code", "from nnprobe import AttentionClient\n\nattention = AttentionClient()"),
        ("code", "attention.check_permutation_equivariance(sequence_length=5, model_dim=8, seed=0)"),
        (
            "code",
            "attention.check_permutation_equivariance(sequence_length=5, model_dim=8, causal_mask=True)",
        ),
        (
            "code",
            "[attention.check_pooling_invariance(pooling=p, sequence_length=5, model_dim=8, seed=0).holds\n"
            ' for p in ("mean", "max", "first_token")]',
        ),
        ("code", "attention.check_feed_forward_equivalence(widths=[16, 64, 16], seed=0)"),
    ],
    "5_your_own_model.ipynb": [
        (
            "md",
            "# Your own model\n\nA network of yours, saved with `torch.export` (or as ONNX), uploaded to "
            "the model repository, then classified, analysed and attacked like the built-in ones.",
        ),
        (
            "code",
            "import tempfile\nfrom pathlib import Path\n\nimport torch\nfrom torch import nn\n\n"
            "torch.manual_seed(0)\nnet = nn.Sequential(\n    nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), "
            "nn.MaxPool2d(2), nn.Conv2d(8, 5, 3),\n    nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n).eval()\n"
            'batch = torch.export.Dim("batch", min=1, max=64)\nprogram = torch.export.export(net, '
            "(torch.rand(2, 3, 16, 16),), dynamic_shapes=({0: batch},))\n"
            'path = Path(tempfile.mkdtemp()) / "model.pt2"\ntorch.export.save(program, path)',
        ),
        (
            "code",
            "from nnprobe import VisionClient\n\nvision = VisionClient(timeout=300)\n"
            'config = {"task": "image_classification", "input": {"height": 16, "width": 16},\n'
            '          "preprocessing": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}\n'
            'upload = vision.upload_model(path, name="tiny-cnn", config=config, '
            'labels=["ant", "bee", "cat", "dog", "eel"])\nupload',
        ),
        (
            "code",
            "import numpy as np\n\nimage = (np.random.default_rng(0).random((16, 16, 3)) * 255)"
            '.astype(np.uint8)\nvision.classify(image, model="tiny-cnn", top_k=3)',
        ),
        ("code", 'vision.compute_receptive_field(model="tiny-cnn", plot=True)'),
        (
            "code",
            '[attack] = vision.attack(image, untargeted=True, model="tiny-cnn", eps="8/255", steps=5)'
            "\nattack",
        ),
    ],
    "6_robustness.ipynb": [
        (
            "md",
            "# 6 Robustness evaluation\n\nRobust accuracy of the default classifier on the seed photos at "
            "two budgets ε, under the standard AutoAttack ensemble (APGD-CE, APGD-T, FAB-T, Square; tiny "
            "budgets here, for speed). The evaluation is a durable job: `vision.robustness_job(job_id)` "
            "finds it after a kernel restart, and a server replica killed mid-run (`kill -9`) leaves it to "
            "another replica, which finishes it with the same per-image results.",
        ),
        ("code", "from nnprobe import VisionClient\n\nvision = VisionClient(timeout=600)"),
        ("code", SEED_PHOTOS),
        (
            "md",
            "Each photo is labelled with the model's own top-1 class, so every photo starts correctly "
            "classified; the labelled photos are uploaded as a data set.",
        ),
        (
            "code",
            "model = next(m for m in vision.list_models() if m.is_default).name\n"
            "clean = vision.classify(photos, model=model, top_k=1)\n"
            "labels = [c.top[0].label for c in clean.results]\n"
            'dataset = vision.upload_dataset("seed", photos, labels)\ndataset',
        ),
        (
            "code",
            'job = vision.evaluate_robustness(\n    model, "seed", eps=["1/255", "4/255"], '
            'attacks="standard", steps=2, max_queries=20, seed=0\n)\n'
            "job_id = job.job_id  # keep it: vision.robustness_job(job_id) finds the job after a restart\n"
            "finished = job.watch()  # a progress bar of units of work (one per ε and batch of images)",
        ),
        ("code", "result = job.result()\nresult  # the accuracy table and the curve of robust accuracy"),
        ("md", "Robust accuracy per ε with its 95% Wilson interval, then each photo's verdicts."),
        ("code", "result.to_pandas()"),
        ("code", 'result.to_pandas("images")[["label", "prediction", "status", "broken_by"]]'),
        (
            "code",
            "from IPython.display import Image\n\n"
            'result.save("robustness.png")\nImage(result.plot)  # the curve alone',
        ),
    ],
}


def notebook(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """A notebook of ``cells`` ((``md`` or ``code``, source)), outputs empty, with the python3 kernel."""
    made = new_notebook(
        cells=[new_markdown_cell(s) if kind == "md" else new_code_cell(s) for kind, s in cells],
        metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
    )
    for index, cell in enumerate(made.cells):
        cell["id"] = f"cell-{index}"
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail when examples/ is stale (default: write)")
    args = parser.parse_args(argv)
    stale = []
    EXAMPLES.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        text = nbformat.writes(notebook(cells)) + "\n"
        target = EXAMPLES / name
        if args.check:
            if not target.exists() or target.read_text() != text:
                stale.append(name)
        else:
            target.write_text(text)
    if stale:
        print(f"stale notebooks (run python scripts/make_notebooks.py): {stale}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
