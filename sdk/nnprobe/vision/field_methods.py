"""``VisionClient``'s receptive-field method and the request it sends, shared with ``nnprobe.aio``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nnprobe._client import USE_CLIENT_DEFAULT, BaseClient, UseClientDefault
from nnprobe._requests import request_arguments
from nnprobe.api.vision.v1 import vision_pb2 as pb
from nnprobe.vision import field_tiling as dense
from nnprobe.vision.model_spec import hint as size_hint
from nnprobe.vision.model_spec import model_spec
from nnprobe.vision.receptive_field import (
    Layer,
    Pair,
    ReceptiveFieldResult,
    _effective_field_options,
    _layer_message,
    _result,
    _size_and_plot,
    _unit_query,
)


def receptive_field_request(
    *,
    layers: Iterable[Layer | pb.LayerSpec] | None,
    model: str | None,
    end_point: str | None,
    input_size: Pair | None,
    first_pixel_center: float | None,
    units: Iterable[tuple[str, int, int] | pb.UnitQuery],
    verify: bool,
    effective_field: bool,
    erf_samples: int,
    erf_seed: int,
    erf_unit: tuple[str, int, int] | None,
    model_seed: int,
    plot: bool,
    image: bytes | str | Path | np.ndarray | None,
    strict: bool,
    onnx: bytes | str | Path | None,
    model_version: int,
    model_options: Mapping[str, Any] | None,
    send_weights: bool | None,
    tiling: Pair | None,
    prove_tiling: bool,
    erf_weights: str | None,
    erf_images: Iterable[Any],
) -> pb.ComputeReceptiveFieldRequest:
    """The request of ``compute_receptive_field`` (sync and asyncio clients)."""
    request = pb.ComputeReceptiveFieldRequest(end_point=end_point or "", verify=verify, strict=strict)
    request.units.extend(_unit_query(u) for u in units)
    if layers is not None:
        request.layers.extend(
            layer if isinstance(layer, pb.LayerSpec) else _layer_message(layer) for layer in layers
        )
    if model is not None or onnx is not None:
        needs_weights = effective_field or prove_tiling
        spec = (model, onnx, model_seed, model_version, model_options, send_weights, needs_weights)
        request.model.CopyFrom(model_spec(*spec))
    _size_and_plot(request, input_size, first_pixel_center, plot, image)
    if effective_field:
        options = _effective_field_options(erf_samples, erf_seed, erf_unit, erf_weights, erf_images)
        request.effective_field.CopyFrom(options)
    if tiling is not None:
        request.tiling.CopyFrom(dense.tiling_options(tiling, prove_tiling))
    return request


class ReceptiveFieldMethods(BaseClient):
    """The receptive-field method of ``VisionClient``."""

    _stub: Any

    def compute_receptive_field(
        self,
        layers: Iterable[Layer | pb.LayerSpec] | None = None,
        *,
        model: str | None = None,
        end_point: str | None = None,
        input_size: Pair | None = None,
        first_pixel_center: float | None = None,
        units: Iterable[tuple[str, int, int] | pb.UnitQuery] = (),
        verify: bool = False,
        effective_field: bool = False,
        erf_samples: int = 0,
        erf_seed: int = 0,
        erf_unit: tuple[str, int, int] | None = None,
        model_seed: int = 0,
        plot: bool = False,
        image: bytes | str | Path | np.ndarray | None = None,
        strict: bool = False,
        onnx: bytes | str | Path | None = None,
        model_version: int = 0,
        model_options: Mapping[str, Any] | None = None,
        send_weights: bool | None = None,
        tiling: Pair | None = None,
        prove_tiling: bool = False,
        erf_weights: str | None = None,
        erf_images: Iterable[Any] = (),
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> ReceptiveFieldResult:
        """Receptive field of every layer, and of chosen units, for a layer list or a model.

        Give ``layers`` (``Layer`` objects) or ``model`` (``resnet50``, ``inception_v3``, a timm name, or
        a model of the server's model repository, of version ``model_version`` (0: its default)).
        ``units``: (layer, x, y) triples, x the column and y the row of the layer's output, 0-based.
        ``first_pixel_center``: coordinate of the first pixel's centre (default 0.5; the classic guide
        uses 1). ``verify``: prove each box by back-propagation. ``effective_field``: estimate the
        effective receptive field over ``erf_samples`` random inputs. ``plot``: return a PNG, drawn on
        ``image`` (file path, encoded bytes or an (H, W, C) array) or a blank canvas. ``strict``: refuse
        misaligned merges and global context instead of answering with union and local fields. ``onnx``:
        an ONNX model (bytes or a file path) to analyse instead of a named one, its weights' values sent
        only with ``send_weights``; ``model_options``: constructor options (``nnprobe.vision.model_spec``).
        ``tiling`` (h, w), ``prove_tiling``: overlap tiles, proven; ``erf_weights``, ``erf_images``: see docs.
        """
        request = receptive_field_request(**request_arguments(locals()))
        response = self._unary(self._stub.ComputeReceptiveField, request, timeout, hint=size_hint(request))
        return _result(response)
