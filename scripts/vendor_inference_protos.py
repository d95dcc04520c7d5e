"""Write the Open Inference Protocol contract (Triton's ``grpc_service.proto`` and ``model_config.proto``,
package ``inference``) into protos/inference/ from the descriptors compiled into a ``tritonclient`` release.

    .venv-triton/bin/python scripts/vendor_inference_protos.py   # a venv with tritonclient[grpc]

The upstream files live in triton-inference-server/common (``protobuf/``, BSD-3-Clause). Printing them from
the descriptors tritonclient ships guarantees that every message, field number and RPC is the one that
client speaks; only the comments of the upstream text are not carried over, and the import is written
relative to protos/ (``inference/model_config.proto``) as buf requires.
"""

from __future__ import annotations

import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "protos" / "inference"
TYPES = {
    descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE: "double",
    descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT: "float",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT64: "int64",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT64: "uint64",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT32: "int32",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED64: "fixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED32: "fixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_BOOL: "bool",
    descriptor_pb2.FieldDescriptorProto.TYPE_STRING: "string",
    descriptor_pb2.FieldDescriptorProto.TYPE_BYTES: "bytes",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT32: "uint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED32: "sfixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED64: "sfixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT32: "sint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT64: "sint64",
}
REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
HEADER = """\
// Copyright (c) NVIDIA CORPORATION & AFFILIATES. All rights reserved. BSD-3-Clause.
//
// The Open Inference Protocol (KServe v2 / Triton) as Triton Inference Server defines it:
// triton-inference-server/common, protobuf/{name}. Printed by scripts/vendor_inference_protos.py
// from the descriptors compiled into tritonclient {version}: the same messages, field numbers and RPCs,
// without the upstream comments. Do not edit; see the upstream file for the documentation.
"""


def _type_name(field: descriptor_pb2.FieldDescriptorProto, package: str) -> str:
    if field.type_name:
        return field.type_name.removeprefix(f".{package}.")
    return TYPES[field.type]


def _field(field, package: str, maps: dict[str, descriptor_pb2.DescriptorProto]) -> str:
    if field.type_name and field.type_name in maps:
        entry = maps[field.type_name]
        key, value = (_type_name(f, package) for f in entry.field)
        return f"map<{key}, {value}> {field.name} = {field.number};"
    label = "repeated " if field.label == REPEATED else ""
    return f"{label}{_type_name(field, package)} {field.name} = {field.number};"


def _enum(enum: descriptor_pb2.EnumDescriptorProto, indent: str) -> list[str]:
    lines = [f"{indent}enum {enum.name} {{"]
    lines += [f"{indent}  {value.name} = {value.number};" for value in enum.value]
    return [*lines, f"{indent}}}"]


def _message(message, package: str, prefix: str, indent: str) -> list[str]:
    full = f"{prefix}.{message.name}"
    maps = {f"{full}.{n.name}": n for n in message.nested_type if n.options.map_entry}
    lines = [f"{indent}message {message.name} {{"]
    for nested in message.nested_type:
        if not nested.options.map_entry:
            lines += _message(nested, package, full, indent + "  ")
    for enum in message.enum_type:
        lines += _enum(enum, indent + "  ")
    oneofs: dict[int, list[str]] = {}
    for field in message.field:
        text = _field(field, package, maps)
        if field.HasField("oneof_index"):
            if field.oneof_index not in oneofs:
                oneofs[field.oneof_index] = []
                lines.append(f"__oneof{field.oneof_index}__")
            oneofs[field.oneof_index].append(f"{indent}    {text}")
        else:
            lines.append(f"{indent}  {text}")
    out: list[str] = []
    for line in lines:
        if line.startswith("__oneof"):
            index = int(line.removeprefix("__oneof").removesuffix("__"))
            out += [f"{indent}  oneof {message.oneof_decl[index].name} {{", *oneofs[index], f"{indent}  }}"]
        else:
            out.append(line)
    return [*out, f"{indent}}}"]


def render(descriptor, version: str) -> str:
    proto = descriptor_pb2.FileDescriptorProto()
    descriptor.CopyToProto(proto)
    package = proto.package
    lines = [
        HEADER.format(name=proto.name, version=version),
        'syntax = "proto3";',
        "",
        f"package {package};",
        "",
    ]
    for dependency in proto.dependency:
        lines.append(f'import "{package}/{dependency}";')
    if proto.dependency:
        lines.append("")
    for service in proto.service:
        lines.append(f"service {service.name} {{")
        for method in service.method:
            request = ("stream " if method.client_streaming else "") + _type_name(
                descriptor_pb2.FieldDescriptorProto(type_name=method.input_type), package
            )
            response = ("stream " if method.server_streaming else "") + _type_name(
                descriptor_pb2.FieldDescriptorProto(type_name=method.output_type), package
            )
            lines.append(f"  rpc {method.name}({request}) returns ({response});")
        lines += ["}", ""]
    for enum in proto.enum_type:
        lines += [*_enum(enum, ""), ""]
    for message in proto.message_type:
        lines += [*_message(message, package, f".{package}", ""), ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    import tritonclient
    from tritonclient.grpc import model_config_pb2, service_pb2

    version = getattr(tritonclient, "__version__", "")
    if not version:
        from importlib.metadata import version as dist_version

        version = dist_version("tritonclient")
    TARGET.mkdir(parents=True, exist_ok=True)
    for module in (model_config_pb2, service_pb2):
        path = TARGET / module.DESCRIPTOR.name
        path.write_text(render(module.DESCRIPTOR, version))
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
