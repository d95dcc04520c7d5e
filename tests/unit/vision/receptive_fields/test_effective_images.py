"""The effective field over the user's images: through a linear network the input gradient does not depend on
the input, so the map over any images is |kernel| around the unit (a closed form written here from the
seeded kernel); the protocol names the images, their number and the weights; weights a layer list has not
are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nnprobe_services.errors import FailedPrecondition
from nnprobe_services.vision.images.decode import ImageInput
from nnprobe_services.vision.receptive_fields import arithmetic as rf
from nnprobe_services.vision.receptive_fields import workflow

CPU = torch.device("cpu")


def test_the_map_over_images_is_the_absolute_kernel_around_the_unit():
    seed, size, (x, y) = 5, (9, 11), (4, 3)
    rng = np.random.default_rng(0)
    images = tuple(
        ImageInput(
            b"", rng.integers(0, 256, (*size, 3), dtype=np.uint8), f"effective_field.images[{i}].pixels"
        )
        for i in range(3)
    )
    options = workflow.EffectiveOptions(seed=1, weight_seed=seed, unit=("c", x, y), images=images)
    request = workflow.FieldRequest(
        layers=[rf.LayerSpec("c", "conv", (3, 3), padding=(1, 1, 1, 1))], input_size=size, effective=options
    )
    result = workflow.compute(request, CPU, lambda: False).effective
    assert result is not None
    # The layer list's kernel: N(0, 1) from a generator seeded with the weight seed, over sqrt(k_h * k_w).
    kernel = torch.randn((1, 1, 3, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) / 3
    expected = np.zeros(size)
    expected[y - 1 : y + 2, x - 1 : x + 2] = kernel.abs().numpy()[0, 0]
    np.testing.assert_allclose(result.summary.gradient_map, expected, rtol=1e-6, atol=1e-12)  # float32 inputs
    protocol = result.protocol
    assert protocol is not None
    assert (protocol.inputs, protocol.num_samples, protocol.seed) == ("images", 3, 0)
    assert (protocol.weights, protocol.weight_seed, protocol.resolution) == ("random", seed, size)
    assert protocol.dtype == "float32"


def test_trained_weights_for_a_layer_list_are_refused():
    options = workflow.EffectiveOptions(weights="trained")
    request = workflow.FieldRequest(
        layers=[rf.LayerSpec("c", "conv", (3, 3))], input_size=(8, 8), effective=options
    )
    with pytest.raises(FailedPrecondition) as refused:
        workflow.compute(request, CPU, lambda: False)
    assert refused.value.field == "effective_field.weights"
