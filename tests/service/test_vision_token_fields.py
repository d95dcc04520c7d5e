"""Vision transformers through the SDK: a ViT's token layers answer with the first attention named as global
context and each patch token's box proved by back-propagation; Swin is refused cleanly, by name."""

import grpc
import pytest
from nnprobe import NnprobeError


def test_a_vit_answers_with_its_attention_named_and_patch_boxes_verified(vision):
    result = vision.compute_receptive_field(
        model="vit_tiny_patch16_224", units=[("norm", 0, 0), ("norm", 13, 6)], verify=True
    )
    assert result.verified and result.global_context_module == "blocks.0.attn"
    end = result.layer(result.end_point)
    assert (end.height.receptive_size, end.height.jump, end.height.size) == (16, 16, 14)
    boxes = [(u.rows, u.columns) for u in result.units]
    assert boxes == [((0, 15), (0, 15)), ((96, 111), (208, 223))]


def test_swin_is_refused_as_a_failed_precondition_naming_the_last_end_point(vision):
    with pytest.raises(NnprobeError) as caught:
        vision.compute_receptive_field(model="swin_tiny_patch4_window7_224")
    error = caught.value
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "windowed attention (Swin) at node 'view' in module 'layers.0.blocks.0'" in error.message
    assert "the last end point that can be answered is 'pad' (module 'layers.0.blocks.0')" in error.message
    assert "b'" not in error.message and "<" not in error.message
    patch = vision.compute_receptive_field(model="swin_tiny_patch4_window7_224", end_point="patch_embed")
    assert patch.layer(patch.end_point).height.receptive_size == 4
