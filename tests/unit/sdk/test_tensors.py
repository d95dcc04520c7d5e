import numpy as np
import pytest
from nnprobe import tensors
from nnprobe.api.common.v1 import common_pb2


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "int32", "uint8", "bool"])
def test_round_trip_every_dtype(dtype):
    array = (np.arange(24).reshape(2, 3, 4) % 2).astype(dtype)
    back = tensors.to_numpy(tensors.to_tensor(array))
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_wire_is_little_endian_row_major_without_strides():
    array = np.arange(6, dtype=">i4").reshape(2, 3).T  # big-endian and transposed (strided)
    message = tensors.to_tensor(array)
    assert list(message.shape) == [3, 2]
    assert message.data == np.ascontiguousarray(array, dtype="<i4").tobytes()
    assert message.data[:4] == (0).to_bytes(4, "little") and message.data[4:8] == (3).to_bytes(4, "little")


def test_scalar_and_empty():
    assert tensors.to_numpy(tensors.to_tensor(np.float64(2.5))).item() == 2.5
    assert tensors.to_numpy(tensors.to_tensor(np.zeros((0, 3), np.float32))).shape == (0, 3)


def test_byte_length_must_match_shape():
    message = common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[2, 3], data=b"\0" * 20)
    with pytest.raises(ValueError, match="20 bytes but shape \\[2, 3\\] of float32 needs 24"):
        tensors.to_numpy(message)


def test_unknown_dtype_and_negative_shape_and_size_limit():
    with pytest.raises(ValueError, match="not supported"):
        tensors.to_numpy(common_pb2.Tensor(dtype=common_pb2.DTYPE_UNSPECIFIED, shape=[1], data=b"\0"))
    with pytest.raises(ValueError, match="negative"):
        tensors.to_numpy(common_pb2.Tensor(dtype=common_pb2.DTYPE_UINT8, shape=[-1], data=b""))
    huge = common_pb2.Tensor(dtype=common_pb2.DTYPE_UINT8, shape=[1 << 40, 1 << 40], data=b"")
    with pytest.raises(OverflowError, match="limit is 1000"):
        tensors.to_numpy(huge, max_elements=1000)


def test_unsupported_numpy_dtype():
    with pytest.raises(TypeError, match="complex128 cannot be sent"):
        tensors.to_tensor(np.zeros(2, complex))
