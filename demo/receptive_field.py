"""Demo section: receptive-field arithmetic (the notebook's section 1.A), proven and grown to real models."""

from __future__ import annotations

from pathlib import Path

from nnprobe import VisionClient
from nnprobe.cli.output import print_table
from nnprobe.vision import Layer

# The notebook's AlexNet-style list: (kernel, stride, padding); input 227, first pixel centred on 1.
NOTEBOOK = [
    Layer("conv1", 11, 4, 0),
    Layer("pool1", 3, 2, 0, kind="pool"),
    Layer("conv2", 5, 1, 2),
    Layer("pool2", 3, 2, 0, kind="pool"),
    Layer("conv3", 3, 1, 1),
    Layer("conv4", 3, 1, 1),
    Layer("conv5", 3, 1, 1),
    Layer("pool5", 3, 2, 0, kind="pool"),
    Layer("fc6-conv", 6, 1, 0),
    Layer("fc7-conv", 1, 1, 0),
]


def run(address: str, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    print("Receptive fields: the notebook's AlexNet-style list (input 227, first pixel centre 1)")
    with VisionClient(address, timeout=300) as client:
        units = [(name, 1, 1) for name in ("conv1", "pool1", "conv2", "pool2")]
        result = client.compute_receptive_field(
            NOTEBOOK, input_size=227, first_pixel_center=1, units=units, verify=True, plot=True
        )
        print_table(
            [
                (f.name, f.height.size, f.height.jump, f.height.receptive_size, f.height.start)
                for f in result.layers
            ],
            ["layer", "n features", "jump", "receptive size", "start"],
        )
        print()
        print_table(
            [
                (
                    f"{u.layer} (1,1)",
                    u.vertical.start,
                    u.vertical.center,
                    u.vertical.end,
                    u.verification.matches,
                )
                for u in result.units
            ],
            ["unit", "start", "center", "end", "proven by back-propagation"],
        )
        path = result.save_plot(out_dir / "receptive_field_notebook.png")
        print(f"picture: {path}")

        print()
        print("ResNet-50 (torchvision, random weights), traced: the last stage's units, proven, and the")
        print("effective receptive field of its centre unit (Luo et al. 2016)")
        r50 = client.compute_receptive_field(
            model="resnet50",
            input_size=224,
            units=[("conv5", 6, 6), ("conv5", 3, 3), ("conv3", 0, 0)],
            verify=True,
            effective_field=True,
            erf_samples=8,
            plot=True,
        )
        h = r50.layer(r50.end_point).height
        print(
            f"end point {r50.end_point}: {h.size}x{h.size} units, jump {h.jump}, "
            f"receptive size {h.receptive_size}, effective padding {h.effective_padding:g}"
        )
        for u in r50.units:
            print(
                f"  {u.layer} ({u.x},{u.y}): rows {u.vertical.start:g}..{u.vertical.end:g}, pixels "
                f"{u.rows[0]}..{u.rows[1]} x {u.columns[0]}..{u.columns[1]}, proven: {u.verification.matches}"
            )
        erf = r50.effective_field
        print(
            f"  effective field sigma {erf.sigma_height:.1f} px; 95% of the gradient lies in "
            f"{100 * erf.share_for_95_percent:.1f}% of the theoretical field"
        )
        print(f"picture: {r50.save_plot(out_dir / 'receptive_field_resnet50.png')}")
