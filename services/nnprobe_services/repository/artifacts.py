"""Safe loading of model files a client provides: ONNX models and ``torch.export`` archives (``.pt2``), never
pickles.

What is checked before anything is executed or unpickled:

* the format, from the bytes (not the name): ONNX protobuf or a ``torch.export`` zip archive. TorchScript
  archives and ``torch.save`` pickles are refused with a message saying so, as are raw pickles;
* ONNX: node count (subgraphs included) within the limit; every external-data location is a relative path
  that resolves, symlinks followed, inside the model's folder, and its offset and length lie inside the file;
  ``onnx.checker`` passes;
* ``.pt2``: the archive holds only the entries ``torch.export.save`` writes for one program (no AOTInductor
  libraries, no pickled weights or constants, no custom or opaque objects), its uncompressed size is within
  the limit and the sample inputs load with ``torch.load(weights_only=True)``; after loading, every graph
  call is an ATen or prims operator or ``operator.getitem`` (the serialised graph may name any attribute
  under ``torch``, such as ``torch.os.system``, so names alone are not trusted), besides the integer
  arithmetic on symbolic sizes that dynamic dimensions record (``operator.mul``...).

Every refusal of a file is ``InvalidArgument`` naming ``field`` with a message a user can act on.

ONNX bytes sent in a request (``check_onnx_bytes``) meet the same node and byte limits as repository models,
answered with ``ResourceExhausted`` naming the field and the limit; they may hold no external data at all (it
would be read from the server's own files).
"""

from __future__ import annotations

import io
import json
import operator
import os
import re
import threading
import zipfile
from pathlib import Path

import torch

from nnprobe_services.errors import InvalidArgument, ResourceExhausted
from nnprobe_services.repository.quoting import cap, quote

FORMATS = ("onnx", "pt2")
FILE_NAMES = {"onnx": "model.onnx", "pt2": "model.pt2"}
PICKLE_REFUSED = (
    "is {what}; loading it would unpickle arbitrary Python objects, so it is refused. Export the network "
    "with torch.onnx.export (model.onnx) or torch.export.save (model.pt2) instead"
)
#: Entries ``torch.export.save`` writes for the program ``model`` (after the archive's root folder).
_PT2_ENTRIES = re.compile(
    r"^(archive_format|archive_version|byteorder|version|\.data/version|\.data/serialization_id"
    r"|models/model\.json|data/weights/model_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+|data/sample_inputs/model\.pt"
    r"|extra/[A-Za-z0-9_.-]+)$"
)
_PT2_NAMESPACES = ("aten", "prims")
#: Python functions a program may call besides ATen/prims operators: tuple indexing, and the integer
#: arithmetic and comparisons ``torch.export`` records on symbolic sizes of dynamic dimensions.
_PT2_FUNCTIONS = (
    operator.getitem,
    operator.add,
    operator.sub,
    operator.mul,
    operator.floordiv,
    operator.truediv,
    operator.mod,
    operator.neg,
    operator.pow,
    operator.eq,
    operator.ne,
    operator.lt,
    operator.le,
    operator.gt,
    operator.ge,
    torch.sym_float,
    torch.sym_int,
    torch.sym_max,
    torch.sym_min,
    torch.sym_not,
)


def _zip_names(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def detect_format(path: Path, field: str = "file") -> str:
    """``onnx`` or ``pt2`` from the file's bytes; ``InvalidArgument`` for pickles, TorchScript and others."""
    with path.open("rb") as handle:
        head = handle.read(4)
    if not head:
        raise InvalidArgument("is empty", field=field)
    if head[:1] == b"\x80" or head[:1] in (b"(", b"]", b"}"):
        raise InvalidArgument(PICKLE_REFUSED.format(what="a Python pickle"), field=field)
    if head == b"PK\x03\x04":
        names = _zip_names(path)
        if names is None:
            raise InvalidArgument("is a damaged or truncated zip archive", field=field)
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            raise InvalidArgument(PICKLE_REFUSED.format(what="a TorchScript archive"), field=field)
        if any(n.endswith("/archive_format") for n in names):
            return "pt2"
        if any(n.endswith("data.pkl") for n in names):
            raise InvalidArgument(PICKLE_REFUSED.format(what="a torch.save pickle (.pt)"), field=field)
        raise InvalidArgument("is a zip archive but not a torch.export archive (.pt2)", field=field)
    return "onnx"


# -- ONNX ------------------------------------------------------------------------------------------------
def _graphs(graph):
    """``graph`` and every subgraph of its nodes' attributes (If, Loop, Scan bodies), depth first."""
    yield graph
    yield from _subgraphs(graph.node)


def _subgraphs(nodes):
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _graphs(attribute.g)
            for sub in attribute.graphs:
                yield from _graphs(sub)


def _external_tensors(model):
    """Every tensor ``model`` holds: initializers (sparse ones too) and tensor attributes, in its graph, its
    subgraphs and its local functions."""
    graphs = [*_graphs(model.graph), *(g for f in model.functions for g in _subgraphs(f.node))]
    node_lists = [g.node for g in graphs] + [f.node for f in model.functions]
    for graph in graphs:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
    for nodes in node_lists:
        for node in nodes:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                if attribute.HasField("sparse_tensor"):
                    yield from (attribute.sparse_tensor.values, attribute.sparse_tensor.indices)
                yield from attribute.tensors
                for sparse in attribute.sparse_tensors:
                    yield from (sparse.values, sparse.indices)


def non_utf8_string(message, path: str = "") -> str | None:
    """The path of the first string field of ``message`` (an ONNX protobuf, walked depth first) whose bytes
    are not UTF-8 (protobuf hands such a proto2 string over as ``bytes``), or None."""
    from google.protobuf.descriptor import FieldDescriptor

    for descriptor, value in message.ListFields():
        name = f"{path}.{descriptor.name}" if path else descriptor.name
        items = list(enumerate(value)) if descriptor.is_repeated else [(None, value)]
        for index, item in items:
            where = name if index is None else f"{name}[{index}]"
            if descriptor.type == FieldDescriptor.TYPE_STRING and not isinstance(item, str):
                return where
            if descriptor.type == FieldDescriptor.TYPE_MESSAGE:
                found = non_utf8_string(item, where)
                if found is not None:
                    return found
    return None


def check_text(model, field: str) -> None:
    """``InvalidArgument`` naming ``field`` when a name or other string of ``model`` is not UTF-8."""
    where = non_utf8_string(model)
    if where is not None:
        raise InvalidArgument(f"is not a valid ONNX model: {cap(where, 160)} is not UTF-8 text", field=field)


def count_nodes(model) -> int:
    """Nodes of ``model``'s graph, its subgraphs and its local functions (which inference expands)."""
    graphs = [*_graphs(model.graph), *(g for f in model.functions for g in _subgraphs(f.node))]
    return sum(len(graph.node) for graph in graphs) + sum(len(f.node) for f in model.functions)


def check_onnx_bytes(data: bytes, *, max_nodes: int, max_bytes: int, field: str):
    """Validate a serialised ONNX ``ModelProto`` sent in request field ``field`` and return it parsed.

    Raises ``ResourceExhausted`` when ``data`` holds more than ``max_bytes`` bytes (checked before parsing)
    or the graph more than ``max_nodes`` nodes (subgraphs and functions included), and ``InvalidArgument``
    when the bytes are not an ONNX model or a tensor refers to external data."""
    import onnx

    if len(data) > max_bytes:
        raise ResourceExhausted(
            f"holds {len(data)} bytes; the limit for a model is {max_bytes} bytes (max_model_bytes)",
            field=field,
        )
    try:
        model = onnx.load_from_string(data)
    except Exception as error:  # any parse failure of client bytes
        raise InvalidArgument(
            f"is not an ONNX model: {type(error).__name__}: {str(error)[:200]}", field=field
        ) from None
    check_text(model, field)
    nodes = count_nodes(model)
    if nodes > max_nodes:
        raise ResourceExhausted(
            f"has {nodes} graph nodes; the limit for a model is {max_nodes} nodes (max_model_nodes)",
            field=field,
        )
    for tensor in _external_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            raise InvalidArgument(
                f"tensor {quote(tensor.name)} refers to external data ({quote(location)}); an ONNX model "
                "sent in the request must hold all its tensors",
                field=field,
            )
    return model


def check_onnx(path: Path, *, max_nodes: int, max_bytes: int, field: str = "file"):
    """Validate ``path`` (its folder is the model's folder) and return the ``onnx.ModelProto`` without its
    external data loaded. Raises ``InvalidArgument``."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError) as error:
        raise InvalidArgument(f"is not a readable ONNX model ({cap(str(error), 200)})", field=field) from None
    check_text(model, field)
    if not model.graph.node:
        raise InvalidArgument("is not an ONNX model (no graph nodes)", field=field)
    nodes = count_nodes(model)
    if nodes > max_nodes:
        raise InvalidArgument(f"has {nodes} nodes; the limit is {max_nodes}", field=field)
    folder = path.parent.resolve()
    total = path.stat().st_size
    for tensor in _external_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        target = (folder / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(folder):
            raise InvalidArgument(
                f"tensor {quote(tensor.name)} keeps its data at {quote(location)}, "
                "outside the model's folder",
                field=field,
            )
        if not target.is_file():
            raise InvalidArgument(
                f"tensor {quote(tensor.name)} keeps its data in {quote(location)}, "
                "which is not in the model's folder",
                field=field,
            )
        size = target.stat().st_size
        offset, length = int(info.get("offset", 0) or 0), int(info.get("length", size) or 0)
        if offset < 0 or length < 0 or offset + length > size:
            raise InvalidArgument(
                f"tensor {quote(tensor.name)} reads bytes {offset}..{offset + length} of {quote(location)} "
                f"({size} bytes)",
                field=field,
            )
        total += length
    if total > max_bytes:
        raise InvalidArgument(f"holds {total} bytes with its data; the limit is {max_bytes}", field=field)
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError, OSError) as error:
        raise InvalidArgument(
            f"is not a valid ONNX model ({str(error).splitlines()[0]})", field=field
        ) from None
    return model


# -- torch.export ------------------------------------------------------------------------------------------
def check_pt2_archive(path: Path, *, max_bytes: int, field: str = "file") -> None:
    """Refuse a ``.pt2`` archive whose loading could run or unpickle anything (see the module docstring)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            roots = {info.filename.split("/", 1)[0] for info in infos}
            if len(roots) != 1:
                raise InvalidArgument(
                    "holds more than one root folder; not a torch.export archive", field=field
                )
            total = sum(info.file_size for info in infos)
            if total > max_bytes:
                raise InvalidArgument(f"unpacks to {total} bytes; the limit is {max_bytes}", field=field)
            for info in infos:
                inner = info.filename.split("/", 1)[1] if "/" in info.filename else ""
                if not _PT2_ENTRIES.match(inner):
                    raise InvalidArgument(
                        f"holds {quote(inner)}, which torch.export.save does not write for a program "
                        "(AOTInductor libraries, pickled or custom objects and extra programs are refused)",
                        field=field,
                    )
            root = roots.pop()
            for config in (
                "data/weights/model_weights_config.json",
                "data/constants/model_constants_config.json",
            ):
                payloads = json.loads(archive.read(f"{root}/{config}")).get("config", {})
                pickled = [name for name, meta in payloads.items() if meta.get("use_pickle")]
                if pickled:
                    raise InvalidArgument(
                        f"stores {', '.join(quote(name) for name in pickled[:3])} as pickles; "
                        "re-export with a current torch.export",
                        field=field,
                    )
            samples = archive.read(f"{root}/data/sample_inputs/model.pt")
    except InvalidArgument:
        raise
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, AttributeError) as error:
        raise InvalidArgument(
            f"is not a complete torch.export archive ({cap(str(error), 200)})", field=field
        ) from None
    if samples:
        try:
            torch.load(io.BytesIO(samples), weights_only=True, map_location="cpu")
        except Exception as error:  # any failure of the restricted unpickler means: refuse
            raise InvalidArgument(
                f"has sample inputs that are not plain tensors ({type(error).__name__})", field=field
            ) from None


def check_pt2_graph(program: torch.export.ExportedProgram, *, max_nodes: int, field: str = "file") -> None:
    """Every call in the loaded program is an ATen/prims operator, ``operator.getitem`` or arithmetic on
    symbolic sizes (``_PT2_FUNCTIONS``)."""
    nodes = list(program.graph.nodes)
    if len(nodes) > max_nodes:
        raise InvalidArgument(f"has {len(nodes)} graph nodes; the limit is {max_nodes}", field=field)
    for node in nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        target = node.target
        allowed = node.op == "call_function" and (
            target in _PT2_FUNCTIONS
            or (isinstance(target, torch._ops.OpOverload) and target.namespace in _PT2_NAMESPACES)
        )
        if not allowed:
            raise InvalidArgument(
                f"calls {quote(target)} ({node.op}); only ATen and prims operators are accepted", field=field
            )


#: ``torch.export.load`` keeps its deserializer in a process-wide global and fails when two threads load
#: at once ("_CURRENT_DESERIALIZER is already set"): every load in the process takes this lock.
_EXPORT_LOAD = threading.Lock()


def load_pt2(
    path: Path, *, max_nodes: int, max_bytes: int, field: str = "file"
) -> torch.export.ExportedProgram:
    """``torch.export.load`` after ``check_pt2_archive``, then ``check_pt2_graph``. Safe from any number of
    threads (loads take turns, ``_EXPORT_LOAD``)."""
    check_pt2_archive(path, max_bytes=max_bytes, field=field)
    try:
        with _EXPORT_LOAD:
            program = torch.export.load(str(path))
    except Exception as error:  # deserialisation failures of every kind mean the same to the caller
        raise InvalidArgument(
            f"is not a loadable torch.export archive ({type(error).__name__}: {str(error)[:200]})",
            field=field,
        ) from None
    check_pt2_graph(program, max_nodes=max_nodes, field=field)
    return program
