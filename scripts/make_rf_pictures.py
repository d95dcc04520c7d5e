"""Draw the receptive-field pictures of docs/receptive-fields.md with the service itself.

    .venv/bin/python scripts/make_rf_pictures.py

Starts an in-process vision server on the CPU and asks ``ComputeReceptiveField`` for two plots through
the SDK:

* ``docs/images/rf-unet-unit.png``: a 2 x 2 block of output pixels of a small U-Net whose decoder
  upsamples with a transposed convolution (kernel 3, stride 2, padding 1, output padding 1), sent as ONNX:
  the even and odd outputs read one or two inputs of the coarse map, so neighbouring pixels have fields of
  two sizes (phases).
* ``docs/images/rf-vit-token.png``: a token of the last block of timm's ``vit_tiny_patch16_224`` (random
  weights): its local field is its own 16 x 16 patch; attention is reported as global context.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import torch
from nnprobe import VisionClient
from nnprobe_services.server import ServerConfig, create_server

IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
UNET_SIDE = 64


class TransposedUNet(torch.nn.Module):
    """One 2 x 2 pooling down, a transposed convolution back up, a skip concatenation, 1 x 1 logits."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        nn = torch.nn
        self.enc = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.mid = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(2 * width, width, 3, stride=2, padding=1, output_padding=1)
        self.head = nn.Conv2d(2 * width, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.enc(x)
        return self.head(torch.cat([self.up(self.mid(self.pool(a))), a], dim=1))


def unet_onnx() -> bytes:
    """The U-Net above with random weights, exported to ONNX at ``UNET_SIDE`` x ``UNET_SIDE``."""
    torch.manual_seed(0)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        example = (torch.zeros(1, 3, UNET_SIDE, UNET_SIDE),)
        torch.onnx.export(TransposedUNet().eval(), example, buffer, dynamo=False, opset_version=17)  # type: ignore[arg-type]
    return buffer.getvalue()


def draw_unet(client: VisionClient) -> Path:
    """Plot the fields of output pixels (31..32, 31..32) of the U-Net: two phases along each axis."""
    data = unet_onnx()
    end = client.compute_receptive_field(onnx=data).end_point
    units = [(end, x, y) for y in (31, 32) for x in (31, 32)]
    result = client.compute_receptive_field(onnx=data, units=units, verify=True, plot=True)
    for unit in result.units:
        print(f"U-Net {unit.layer} ({unit.x},{unit.y}): rows {unit.rows} cols {unit.columns}")
    print(f"U-Net verified: {result.verified}")
    return result.save_plot(IMAGES / "rf-unet-unit.png")


def draw_vit(client: VisionClient) -> Path:
    """Plot the local field of token (7, 7) of the last block of ``vit_tiny_patch16_224``."""
    name = "vit_tiny_patch16_224"
    end = client.compute_receptive_field(model=name).end_point
    result = client.compute_receptive_field(model=name, units=[(end, 7, 7)], verify=True, plot=True)
    unit = result.units[0]
    print(f"ViT {end} (7,7): rows {unit.rows} cols {unit.columns}, verified {result.verified}")
    return result.save_plot(IMAGES / "rf-vit-token.png")


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as root:
        config = ServerConfig(
            service="vision", host="127.0.0.1", port=0, device="cpu", data_dir=Path(root) / "d",
            cache_dir=Path(root) / "c",
        ).validate()  # fmt: skip
        server, port = create_server(config)
        server.start()
        try:
            with VisionClient(f"127.0.0.1:{port}", timeout=600) as client:
                for path in (draw_unet(client), draw_vit(client)):
                    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
        finally:
            server.stop(0)


if __name__ == "__main__":
    main()
