"""VisionService servicer: validate, convert protobuf to plain types, call the cores, convert back."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from fractions import Fraction

import grpc
import torch
from nnprobe import tensors
from nnprobe.api.common.v1 import common_pb2
from nnprobe.api.vision.v1 import vision_pb2 as pb
from nnprobe.api.vision.v1 import vision_pb2_grpc

from nnprobe_services.errors import (
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
)
from nnprobe_services.server import validation as valid
from nnprobe_services.server.config import ServerConfig
from nnprobe_services.server.metrics import metrics_for
from nnprobe_services.vision import (
    adversarial,
    attacks,
    classify,
    models,
    preprocess,
    rf_empirical,
    rf_graph,
    rf_onnx,
    rf_plot,
    transfer,
)
from nnprobe_services.vision import receptive_field as rf
from nnprobe_services.vision.batcher import QueueFull, batcher_metrics

KINDS = {
    pb.LAYER_KIND_UNSPECIFIED: "conv",
    pb.LAYER_KIND_CONV: "conv",
    pb.LAYER_KIND_POOL: "pool",
    pb.LAYER_KIND_OTHER: "other",
}
KIND_CODES = {
    "input": pb.LAYER_KIND_INPUT,
    "conv": pb.LAYER_KIND_CONV,
    "pool": pb.LAYER_KIND_POOL,
    "other": pb.LAYER_KIND_OTHER,
    "merge": pb.LAYER_KIND_MERGE,
}
ERRORS: dict[type[rf.FieldError], type[ServiceError]] = {
    rf.InvalidSpec: InvalidArgument,
    rf.UnknownName: NotFound,
    rf.Unsupported: FailedPrecondition,
}
log = logging.getLogger("nnprobe.vision")
METHODS = {
    pb.ATTACK_METHOD_UNSPECIFIED: "pgd",
    pb.ATTACK_METHOD_ADAM: "adam",
    pb.ATTACK_METHOD_FGSM: "fgsm",
    pb.ATTACK_METHOD_BIM: "bim",
    pb.ATTACK_METHOD_PGD: "pgd",
    pb.ATTACK_METHOD_MI_FGSM: "mi_fgsm",
    pb.ATTACK_METHOD_CW_L2: "cw_l2",
}
NORMS: dict[int, str] = {pb.ATTACK_NORM_LINF: "linf", pb.ATTACK_NORM_L2: "l2"}
LINF_ONLY = ("fgsm", "bim", "mi_fgsm")
#: Largest input (height * width) the back-propagation checks run on.
MAX_EMPIRICAL_PIXELS = 1024 * 1024
#: Most random inputs one effective-field estimate may average.
MAX_ERF_SAMPLES = 256
DEFAULT_ERF_SAMPLES = 16


def _service_error(error: rf.FieldError) -> ServiceError:
    return ERRORS.get(type(error), FailedPrecondition)(error.message, field=error.field)


class VisionServicer(vision_pb2_grpc.VisionServiceServicer):
    """Thin layer: validate, convert, call the core, convert back."""

    def __init__(self, config: ServerConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.models = models.ModelStore(
            device,
            explicit=config.weights_files(),
            weights_dir=config.weights_dir,
            download_timeout=config.weights_download_timeout,
        )
        gpu = device.type == "cuda"
        self.classifier = classify.Classifier(
            self.models,
            classify.BatchingSettings(
                enabled=config.dynamic_batching,
                max_size=config.batch_max_size or (64 if gpu else 16),
                max_delay=(
                    config.batch_max_delay_ms
                    if config.batch_max_delay_ms is not None
                    else 2.0
                    if gpu
                    else 5.0
                )
                / 1000.0,
                queue_size=config.batch_queue_size,
            ),
            batcher_metrics(metrics_for("vision").registry),
        )

    # -- RPCs ----------------------------------------------------------------------------------------
    def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        default = self._model_name("")
        response = pb.ListModelsResponse(default_model=default)
        names = sorted(models.records(), key=lambda n: n != default)
        for name in names:
            record = models.records()[name]
            where = self.models.location(name)
            prep = record.preprocessing
            response.models.append(
                pb.ModelInfo(
                    name=name,
                    architecture=record.architecture,
                    source=record.source,
                    weights_present=where.path is not None,
                    weights_path=str(where.path or ""),
                    weights_file_name=record.file_name,
                    searched=list(where.searched),
                    version=models.sha256_of(where.path) if where.path is not None else "",
                    preprocessing=pb.Preprocessing(
                        resize=prep.resize,
                        crop=pb.Extent(height=prep.crop[0], width=prep.crop[1]),
                        interpolation=prep.interpolation,
                        mean=list(prep.mean),
                        std=list(prep.std),
                    ),
                    num_classes=record.num_classes,
                    is_default=name == default,
                )
            )
        return response

    def Classify(self, request: pb.ClassifyRequest, context) -> pb.ClassifyResponse:
        start = time.monotonic()
        name = self._model_name(request.model)
        record = models.records()[name]
        top_k = request.top_k or 5
        if not 1 <= top_k <= record.num_classes:
            raise InvalidArgument(f"must be in 1..{record.num_classes}, got {request.top_k}", field="top_k")
        pixels = self._pixels(request.images, record.preprocessing, request.skip_resize)
        loaded = self._load(name)
        prepared = time.monotonic()
        try:
            results = self.classifier.run(
                loaded, pixels, deadline=self._deadline(context), is_active=context.is_active
            )
        except QueueFull as error:
            raise ResourceExhausted(str(error), field="images") from None
        except Cancelled:
            raise
        response = pb.ClassifyResponse(
            model=name, model_version=loaded.version, preprocess_seconds=prepared - start
        )
        for image, result in zip(request.images, results, strict=True):
            message = pb.Classification(
                name=image.name,
                top=[
                    pb.ClassScore(index=c.index, label=c.label, probability=c.probability)
                    for c in classify.top_k(result.logits, top_k)
                ],
                batch_size=result.batch_size,
                queue_seconds=result.queue_seconds,
                inference_seconds=result.inference_seconds,
            )
            if request.return_logits:
                message.logits.CopyFrom(tensors.to_tensor(result.logits))
            response.results.append(message)
        response.total_seconds = time.monotonic() - start
        return response

    def ComputeReceptiveField(self, request: pb.ComputeReceptiveFieldRequest, context):
        try:
            return self._receptive_field(request, lambda: not context.is_active())
        except rf.FieldError as error:
            raise _service_error(error) from None
        except Cancelled:
            raise

    def GenerateAdversarial(self, request: pb.GenerateAdversarialRequest, context):
        name = self._model_name(request.model)
        record = models.records()[name]
        k = request.top_k or 5
        if not 1 <= k <= record.num_classes:
            raise InvalidArgument(f"must be in 1..{record.num_classes}, got {request.top_k}", field="top_k")
        target = self._attack_target(request, record.num_classes)
        spec = self._attack_spec(request)
        for i, other in enumerate(request.transfer_models):
            self._model_name(other or "-", field=f"transfer_models[{i}]")
        if len(request.transfer_models) + len(request.transfer_addresses) > transfer.MAX_TARGETS:
            raise InvalidArgument(
                f"at most {transfer.MAX_TARGETS} transfer models and addresses together",
                field="transfer_addresses" if request.transfer_addresses else "transfer_models",
            )
        for i, address in enumerate(request.transfer_addresses):
            problem = transfer.address_problem(address)
            if problem:
                raise InvalidArgument(problem, field=f"transfer_addresses[{i}]")
        pixels = attacks.quantize(self._pixels(request.images, record.preprocessing, False))
        loaded = self._load(name)
        targeted = target is not None
        token = self._bearer(context)
        stopped = _StopTracker(context)
        events = adversarial.generate(loaded, pixels, target, spec, k=k, should_stop=stopped)
        try:
            for event in events:
                if isinstance(event, attacks.Progress):
                    stopped.iteration = event.iteration
                    yield pb.GenerateAdversarialResponse(progress=self._progress_message(event))
                    continue
                for other in request.transfer_models:
                    event.transfers.append(self._local_transfer(other, event, targeted))
                for address in request.transfer_addresses:
                    event.transfers.append(
                        transfer.remote_transfer(
                            address,
                            event,
                            targeted,
                            token=token,
                            timeout=transfer.call_timeout(self._remaining(context)),
                        )
                    )
                yield pb.GenerateAdversarialResponse(result=self._result_message(event, request))
        except Cancelled as error:
            stopped.record(error.done if error.done is not None else stopped.iteration, spec.steps)
            raise
        except GeneratorExit:
            stopped.record(stopped.iteration, spec.steps)
            raise

    # -- adversarial examples --------------------------------------------------------------------------
    def _attack_target(self, request: pb.GenerateAdversarialRequest, classes: int) -> int | None:
        goal = valid.enum_value(request.goal, pb.AttackGoal, "goal", pb.ATTACK_GOAL_UNSPECIFIED)
        has_target = request.HasField("target") and request.target.WhichOneof("target") is not None
        if goal == pb.ATTACK_GOAL_UNTARGETED and has_target:
            raise InvalidArgument("must be absent with an untargeted goal", field="target")
        if goal == pb.ATTACK_GOAL_TARGETED and not has_target:
            raise InvalidArgument("is required with a targeted goal", field="target")
        if not has_target:
            return None
        if request.target.WhichOneof("target") == "class_index":
            index = request.target.class_index
            if not 0 <= index < classes:
                raise InvalidArgument(f"must be in 0..{classes - 1}, got {index}", field="target.class_index")
            return index
        wanted = request.target.label.strip().lower()
        labels = [label.lower() for label in models.imagenet_labels()]
        if wanted not in labels:
            raise InvalidArgument(
                f"no ImageNet class is called {request.target.label!r}", field="target.label"
            )
        return labels.index(wanted)

    def _attack_spec(self, r: pb.GenerateAdversarialRequest) -> attacks.AttackSpec:
        method = METHODS.get(r.method)
        if method is None:
            raise InvalidArgument(f"unknown value {r.method}", field="method")
        norm_code = valid.enum_value(r.norm, pb.AttackNorm, "norm", pb.ATTACK_NORM_UNSPECIFIED)
        norm = NORMS.get(norm_code, "l2" if method == "cw_l2" else "linf")
        if method in LINF_ONLY and norm != "linf":
            raise InvalidArgument(f"{method} supports the L-infinity norm only", field="norm")
        if method == "cw_l2":
            if norm != "l2":
                raise InvalidArgument("cw_l2 is an L2 attack", field="norm")
            if r.HasField("epsilon"):
                raise InvalidArgument("cw_l2 has no epsilon budget; leave it out", field="epsilon")
        epsilon = r.epsilon if r.HasField("epsilon") else 8 / 255
        if not (math.isfinite(epsilon) and 0 < epsilon <= 1):
            raise InvalidArgument(f"must be in (0, 1] pixel units, got {epsilon}", field="epsilon")
        default_steps = {"fgsm": 1, "cw_l2": 100}.get(method, 10)
        steps = r.steps or default_steps
        if steps <= 0 or steps > self.config.max_attack_steps:
            raise InvalidArgument(
                f"must be in 1..{self.config.max_attack_steps}, got {r.steps}", field="steps"
            )
        if method == "fgsm" and steps != 1:
            raise InvalidArgument("fgsm takes exactly one step", field="steps")
        step_size = r.step_size if r.HasField("step_size") else epsilon / (4 if norm == "linf" else 5)
        if not (math.isfinite(step_size) and 0 < step_size <= 1):
            raise InvalidArgument(f"must be in (0, 1] pixel units, got {step_size}", field="step_size")
        if r.HasField("random_start") and r.random_start and method != "pgd":
            raise InvalidArgument("only pgd has a random start", field="random_start")
        if not 0 <= r.refine_steps <= self.config.max_attack_steps:
            raise InvalidArgument(
                f"must be in 0..{self.config.max_attack_steps}, got {r.refine_steps}", field="refine_steps"
            )
        positives = {"learning_rate": 0.01, "momentum_decay": 1.0, "cw_c": 1.0}
        values = {}
        for key, default in positives.items():
            value = getattr(r, key) if r.HasField(key) else default  # type: ignore[arg-type]
            if not (math.isfinite(value) and value > 0):
                raise InvalidArgument(f"must be a positive number, got {value}", field=key)
            values[key] = value
        valid.finite_non_negative(r.cw_confidence, "cw_confidence")
        return attacks.AttackSpec(
            method=method,
            norm=norm,
            epsilon=epsilon,
            step_size=step_size,
            steps=steps,
            seed=r.seed,
            random_start=r.random_start if r.HasField("random_start") else method == "pgd",
            early_stop=r.early_stop if r.HasField("early_stop") else True,
            refine_steps=r.refine_steps,
            learning_rate=values["learning_rate"],
            momentum_decay=values["momentum_decay"],
            cw_c=values["cw_c"],
            cw_confidence=r.cw_confidence,
        )

    def _local_transfer(self, name: str, result: adversarial.AdversarialImage, targeted: bool):
        try:
            other = self.models.get(self._model_name(name))
        except models.WeightsMissing as error:
            return adversarial.Transfer(name, "", None, False, str(error))
        return adversarial.local_transfer(other, result, targeted)

    @staticmethod
    def _bearer(context) -> str | None:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                return value[len("Bearer ") :].strip()
        return None

    @staticmethod
    def _remaining(context) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None or remaining > 1e8 else max(remaining, 0.001)

    @staticmethod
    def _score(score) -> pb.ClassScore:
        return pb.ClassScore(index=score.index, label=score.label, probability=score.probability)

    def _progress_message(self, event: attacks.Progress) -> pb.AttackProgress:
        labels = models.imagenet_labels()
        return pb.AttackProgress(
            image=event.image,
            iteration=event.iteration,
            loss=event.loss,
            goal_probability=event.goal_probability,
            top1=pb.ClassScore(
                index=event.top1, label=labels[event.top1], probability=event.top1_probability
            ),
        )

    def _result_message(self, r: adversarial.AdversarialImage, request) -> pb.AdversarialResult:
        return pb.AdversarialResult(
            image=r.image,
            name=request.images[r.image].name,
            original_png=adversarial.png(r.original),
            adversarial_png=adversarial.png(r.adversarial),
            perturbation=tensors.to_tensor(r.perturbation),
            l0=r.l0,
            l2=r.l2,
            linf=r.linf,
            original_top=[self._score(s) for s in r.original_top],
            final_top=[self._score(s) for s in r.final_top],
            success=r.success,
            iterations=r.iterations,
            seconds=r.seconds,
            goal_class=r.goal_class,
            transfers=[
                pb.TransferResult(
                    model=t.model,
                    address=t.address,
                    top1=self._score(t.top1) if t.top1 is not None else None,
                    fooled=t.fooled,
                    error=t.error,
                )
                for t in r.transfers
            ],
        )

    # -- classification ------------------------------------------------------------------------------
    def _model_name(self, requested: str, field: str = "model") -> str:
        name = requested.strip() or self.config.default_model
        if name not in models.records():
            raise NotFound(
                f"no model {name!r}; the available models are {', '.join(models.records())}", field=field
            )
        return name

    def _load(self, name: str, field: str = "model") -> models.LoadedModel:
        try:
            return self.models.get(name)
        except models.WeightsMissing as error:
            raise FailedPrecondition(str(error), field=field) from None

    @staticmethod
    def _deadline(context) -> float | None:
        remaining = context.time_remaining()
        if remaining is None or remaining > 1e8:
            return None
        return time.monotonic() + remaining

    def _pixels(
        self, images, prep: models.Preprocessing, skip_resize: bool, field: str = "images"
    ) -> torch.Tensor:
        """Decode and preprocess every image to (N, 3, H, W) in [0, 1]; errors name the image index."""
        if not images:
            raise InvalidArgument("give at least one image", field=field)
        if len(images) > self.config.batch_queue_size:
            raise ResourceExhausted(
                f"holds {len(images)} images; the limit is {self.config.batch_queue_size}", field=field
            )
        batch = []
        for i, image in enumerate(images):
            part = (
                f"{field}[{i}].encoded"
                if image.encoded or not image.HasField("pixels")
                else f"{field}[{i}].pixels"
            )
            label = f"image {i}" + (f" ({image.name})" if image.name else "")
            try:
                batch.append(preprocess.model_input(self._decode(image, part), prep, skip_resize=skip_resize))
            except preprocess.ImageError as error:
                kind = ResourceExhausted if error.kind == "too_large" else InvalidArgument
                raise kind(f"{label} {error}", field=part) from None
        return torch.stack(batch)

    def _decode(self, image: common_pb2.Image, part: str):
        limit_pixels = self.config.max_image_pixels
        if image.encoded or not image.HasField("pixels"):
            return preprocess.decode(
                image.encoded, max_bytes=self.config.max_image_bytes, max_pixels=limit_pixels
            )
        pixels = valid.tensor(image.pixels, part, max_elements=self.config.max_tensor_elements)
        return preprocess.from_pixels(pixels, max_pixels=limit_pixels)

    # -- receptive fields ----------------------------------------------------------------------------
    def _receptive_field(self, request: pb.ComputeReceptiveFieldRequest, should_stop: Callable[[], bool]):
        has_model = request.HasField("model")
        if has_model == bool(request.layers):
            raise InvalidArgument("give exactly one of `layers` and `model`", field="layers")
        origin = self._origin(request)
        image = self._plot_image(request)
        input_size = self._input_size(request, image)
        if has_model:
            name, onnx = request.model.name.strip(), request.model.onnx
            if not name and not onnx:
                raise InvalidArgument("must name a model", field="model.name")
            graph = rf_graph.analyse(
                name, onnx, input_size, origin, request.end_point or None, strict=request.strict
            )
            fields, end, resolve = graph.fields, graph.end_point, graph.resolve
        else:
            specs = [self._layer_spec(layer, i) for i, layer in enumerate(request.layers)]
            fields = rf.analyse_layers(specs, input_size, origin)
            resolve = self._list_resolver(fields)
            end = resolve(request.end_point, "end_point") if request.end_point else fields[-1].name
            fields = fields[: [f.name for f in fields].index(end) + 1]
        by_name = {f.name: f for f in fields}
        if len(request.units) > rf.MAX_UNITS:
            raise ResourceExhausted(
                f"asks for {len(request.units)} units; the limit is {rf.MAX_UNITS}", field="units"
            )
        queries = [(resolve(u.layer, f"units[{i}].layer"), u.x, u.y, i) for i, u in enumerate(request.units)]
        if not queries and (request.verify or request.HasField("plot")):
            x, y = rf.center_unit(by_name[end])
            queries = [(end, x, y, -1)]
        units = [
            rf.unit_field(fields, layer, x, y, input_size, origin, field=f"units[{i}]" if i >= 0 else "units")
            for layer, x, y, i in queries
        ]
        response = pb.ComputeReceptiveFieldResponse(
            layers=[self._layer_message(f, origin) for f in fields],
            end_point=end,
            input_size=pb.Extent(height=input_size[0], width=input_size[1]),
            first_pixel_center=float(origin),
            units=[self._unit_message(u) for u in units],
            model=request.model.name.strip() if has_model else "",
        )
        if has_model:
            self._model_graph_message(response, graph)
        empirical = request.verify or request.HasField("effective_field")
        if empirical and input_size[0] * input_size[1] > MAX_EMPIRICAL_PIXELS:
            raise ResourceExhausted(
                f"is {input_size[0]} x {input_size[1]}; back-propagation checks allow at most "
                f"{MAX_EMPIRICAL_PIXELS} pixels",
                field="input_size",
            )

        def probe(layers: list[str], weights: str, seed: int = 0):
            if has_model and graph.frontend == "onnx":
                if weights != "transparent":
                    raise FailedPrecondition("needs a named model, not an ONNX one", field="effective_field")
                return rf_empirical.twin_probe(graph.capture, layers, self.device)
            if has_model:
                return rf_empirical.model_probe(
                    name, layers, self.device, weights=weights, seed=seed, input_size=input_size
                )
            return rf_empirical.chain_probe(specs, input_size, self.device, weights=weights, seed=seed)

        if request.verify:
            self._verify(response, units, probe, input_size, should_stop)
        gradient_map = gradient_unit = None
        if request.HasField("effective_field"):
            gradient_map, gradient_unit = self._effective_field(
                request.effective_field,
                request.model.seed if has_model else request.effective_field.seed,
                response,
                fields,
                resolve,
                end,
                probe,
                input_size,
                origin,
                should_stop,
            )
        if request.HasField("plot"):
            title = f"{response.model or 'layer list'}: receptive fields (dashed: unclipped)"
            response.plot_png = rf_plot.render(
                input_size,
                float(origin),
                units,
                image=image,
                gradient_map=gradient_map,
                gradient_unit=gradient_unit,
                title=title,
                should_stop=should_stop,
            )
        return response

    def _verify(self, response, units, probe, input_size, should_stop) -> None:
        network, channels = probe(sorted({u.layer for u in units}), "transparent")
        boxes = rf_empirical.gradient_boxes(
            network, channels, input_size, self.device, [(u.layer, u.x, u.y) for u in units], should_stop
        )
        all_match = True
        for message, unit, box in zip(response.units, units, boxes, strict=True):
            matches = (box.first_row, box.last_row, box.first_column, box.last_column) == (
                *unit.rows,
                *unit.columns,
            )
            all_match = all_match and matches
            message.verification.CopyFrom(
                pb.Verification(
                    rows=pb.PixelRange(first=box.first_row, last=box.last_row),
                    columns=pb.PixelRange(first=box.first_column, last=box.last_column),
                    matches=matches,
                )
            )
        response.verified = all_match

    def _effective_field(
        self, options, weight_seed, response, fields, resolve, end, probe, input_size, origin, should_stop
    ):
        samples = valid.positive(
            options.num_samples,
            "effective_field.num_samples",
            default=DEFAULT_ERF_SAMPLES,
            maximum=MAX_ERF_SAMPLES,
        )
        if options.HasField("unit"):
            layer = resolve(options.unit.layer, "effective_field.unit.layer")
            x, y = options.unit.x, options.unit.y
        else:
            layer = end
            x, y = rf.center_unit(next(f for f in fields if f.name == end))
        unit = rf.unit_field(fields, layer, x, y, input_size, origin, field="effective_field.unit")
        network, channels = probe([layer], "random", weight_seed)
        grad_map = rf_empirical.gradient_map(
            network, channels, input_size, self.device, (layer, x, y), samples, options.seed, should_stop
        )
        summary = rf_empirical.summarise(grad_map, (*unit.rows, *unit.columns), samples)
        response.effective_field.CopyFrom(
            pb.EffectiveField(
                unit=pb.UnitQuery(layer=layer, x=x, y=y),
                gradient_map=tensors.to_tensor(summary.gradient_map),
                num_samples=samples,
                sigma_height=summary.sigma_height,
                sigma_width=summary.sigma_width,
                center_vertical=float(origin) + summary.mean_row,
                center_horizontal=float(origin) + summary.mean_column,
                pixels_for_95_percent=summary.pixels_for_95_percent,
                theoretical_pixels=summary.theoretical_pixels,
                share_for_95_percent=summary.pixels_for_95_percent / summary.theoretical_pixels,
                mass_inside_field=summary.mass_inside_field,
            )
        )
        return grad_map, unit

    # -- conversion ----------------------------------------------------------------------------------
    @staticmethod
    def _model_graph_message(response: pb.ComputeReceptiveFieldResponse, graph: rf_graph.GraphField) -> None:
        response.misaligned_merges.extend(
            pb.MisalignedMerge(
                layer=m.node, axis=m.axis, reference=m.reference, path=m.path, offset=float(m.offset)
            )
            for m in graph.misaligned
        )
        response.global_context = graph.global_context
        response.global_context_module = graph.global_context_module
        response.capture = graph.frontend
        response.model_final_stride = graph.final_stride or 0

    @staticmethod
    def _origin(request: pb.ComputeReceptiveFieldRequest) -> Fraction:
        if not request.HasField("first_pixel_center"):
            return Fraction(1, 2)
        value = request.first_pixel_center
        if not math.isfinite(value):
            raise InvalidArgument(f"must be a finite number, got {value}", field="first_pixel_center")
        return Fraction(value)

    def _plot_image(self, request: pb.ComputeReceptiveFieldRequest):
        if not request.HasField("plot") or not request.plot.HasField("image"):
            return None
        image = request.plot.image
        if image.encoded:
            try:
                return rf_plot.decode_image(image.encoded)
            except ValueError as error:
                raise InvalidArgument(str(error), field="plot.image.encoded") from None
        if image.HasField("pixels"):
            pixels = valid.tensor(
                image.pixels, "plot.image.pixels", max_elements=self.config.max_tensor_elements, ndim=3
            )
            if pixels.shape[2] not in (1, 3, 4) or pixels.dtype.kind not in "uf":
                raise InvalidArgument(
                    f"must be (H, W, C) with C in 1, 3, 4 of uint8 or float, "
                    f"got {list(pixels.shape)} {pixels.dtype}",
                    field="plot.image.pixels",
                )
            return pixels
        raise InvalidArgument("give `encoded` bytes or `pixels`", field="plot.image")

    def _input_size(self, request: pb.ComputeReceptiveFieldRequest, image) -> tuple[int, int]:
        if request.HasField("input_size"):
            size = (
                valid.positive(request.input_size.height, "input_size.height"),
                valid.positive(request.input_size.width, "input_size.width"),
            )
        elif image is not None:
            size = (int(image.shape[0]), int(image.shape[1]))
        elif request.HasField("model") and request.model.onnx:
            size = rf_onnx.declared_size(request.model.onnx) or (224, 224)
        elif request.HasField("model"):
            side = rf_graph.default_input_size(request.model.name.strip())
            size = (side, side)
        else:
            raise InvalidArgument(
                "is required with `layers` (height and width of the input)", field="input_size"
            )
        limit = self.config.max_tensor_elements
        if size[0] * size[1] * 3 > limit:
            raise ResourceExhausted(
                f"{size[0]} x {size[1]} x 3 exceeds the limit of {limit} elements", field="input_size"
            )
        return size

    @staticmethod
    def _layer_spec(layer: pb.LayerSpec, index: int) -> rf.LayerSpec:
        base = f"layers[{index}]"
        kind = KINDS.get(layer.kind)
        if kind is None:
            raise InvalidArgument(f"must be conv, pool or other, not {layer.kind}", field=f"{base}.kind")
        if not layer.HasField("kernel"):
            raise InvalidArgument("is required", field=f"{base}.kernel")

        def pair(message: pb.Extent, present: bool) -> tuple[int, int] | None:
            return (int(message.height), int(message.width)) if present else None

        mode = valid.enum_value(
            layer.padding_mode, pb.PaddingMode, f"{base}.padding_mode", pb.PADDING_MODE_EXPLICIT
        )
        padding: rf.Pads | str
        if mode == pb.PADDING_MODE_SAME:
            padding = "same"
        elif mode == pb.PADDING_MODE_VALID:
            padding = "valid"
        else:
            p = layer.padding
            padding = (int(p.top), int(p.bottom), int(p.left), int(p.right))
        if mode in (pb.PADDING_MODE_SAME, pb.PADDING_MODE_VALID) and layer.HasField("padding"):
            raise InvalidArgument("must be absent with SAME or VALID padding_mode", field=f"{base}.padding")
        return rf.LayerSpec(
            name=layer.name,
            kind=kind,
            kernel=(int(layer.kernel.height), int(layer.kernel.width)),
            stride=pair(layer.stride, layer.HasField("stride")),
            dilation=pair(layer.dilation, layer.HasField("dilation")) or (1, 1),
            padding=padding,
            ceil_mode=layer.ceil_mode,
        )

    @staticmethod
    def _list_resolver(fields: list[rf.LayerField]) -> Callable[[str, str], str]:
        names = [f.name for f in fields]

        def resolve(name: str, field: str) -> str:
            if name not in names:
                raise InvalidArgument(f"no layer {name!r}; the layers are {', '.join(names)}", field=field)
            return name

        return resolve

    @staticmethod
    def _layer_message(field: rf.LayerField, origin: Fraction) -> pb.LayerField:
        def axis(a: rf.Axis) -> pb.AxisField:
            return pb.AxisField(
                size=a.size,
                jump=a.jump,
                receptive_size=a.receptive,
                start=float(a.start),
                effective_padding=float(a.effective_padding(origin)),
            )

        top, bottom, left, right = field.padding
        return pb.LayerField(
            name=field.name,
            kind=KIND_CODES[field.kind],
            operation=field.operation,
            module=field.module,
            inputs=list(field.inputs),
            height=axis(field.height),
            width=axis(field.width),
            padding=pb.Padding(top=top, bottom=bottom, left=left, right=right),
            global_context=field.global_context,
        )

    @staticmethod
    def _unit_message(unit: rf.UnitField) -> pb.UnitField:
        def interval(span: rf.Span) -> pb.Interval:
            return pb.Interval(start=float(span.start), center=float(span.center), end=float(span.end))

        return pb.UnitField(
            unit=pb.UnitQuery(layer=unit.layer, x=unit.x, y=unit.y),
            vertical=interval(unit.vertical),
            horizontal=interval(unit.horizontal),
            vertical_clipped=interval(unit.vertical_clipped),
            horizontal_clipped=interval(unit.horizontal_clipped),
            rows=pb.PixelRange(first=unit.rows[0], last=unit.rows[1]),
            columns=pb.PixelRange(first=unit.columns[0], last=unit.columns[1]),
        )


class _StopTracker:
    """``should_stop`` for the attack loop; records where an attack stopped (log line and metrics)."""

    def __init__(self, context) -> None:
        self.context = context
        self.iteration = 0
        self.recorded = False

    def __call__(self) -> bool:
        return not self.context.is_active()

    def record(self, iteration: int, steps: int) -> None:
        if self.recorded:
            return
        self.recorded = True
        stops = _attack_stop_metrics()
        stops[0].inc()
        stops[1].set(iteration)
        log.info(
            "GenerateAdversarial stopped after iteration %d of %d: the client went away", iteration, steps
        )


_stop_metrics_lock = threading.Lock()


def _attack_stop_metrics():
    from prometheus_client import Counter, Gauge

    holder = metrics_for("vision")
    with _stop_metrics_lock:
        if hasattr(holder, "attack_stops"):
            return holder.attack_stops  # type: ignore[attr-defined]
        holder.attack_stops = (  # type: ignore[attr-defined]
            Counter(
                "nnprobe_attack_stopped",
                "Attacks stopped by cancellation or deadline.",
                registry=holder.registry,
            ),
            Gauge(
                "nnprobe_attack_stopped_at_iteration",
                "The last iteration finished by the most recently stopped attack.",
                registry=holder.registry,
            ),
        )
    return holder.attack_stops  # type: ignore[attr-defined]


def register(server: grpc.Server, config: ServerConfig, device: torch.device) -> list[str]:
    """Add the servicer to `server`; return the full names of the services added."""
    vision_pb2_grpc.add_VisionServiceServicer_to_server(VisionServicer(config, device), server)
    return [pb.DESCRIPTOR.services_by_name["VisionService"].full_name]
