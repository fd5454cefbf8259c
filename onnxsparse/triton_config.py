"""A strict reader of Triton Inference Server's ``config.pbtxt``, for the fields onnxsparse writes.

Triton reads a model's configuration as protobuf text format of ``inference.ModelConfig``
(``model_config.proto`` in Triton's common repository). Its Python definitions ship in
``tritonclient[grpc]``, which requires protobuf < 7, while onnx and this project run on protobuf 7;
so this module declares the subset of the message that ``onnxsparse.serving`` writes and the
deployment guide shows, with Triton's field names, numbers and enum values, and parses with
protobuf's own text-format parser. That parser is strict: an unknown field, a value of the wrong
type, an unknown enum name, a singular field given twice or an unbalanced brace is an error.
A configuration that uses Triton fields outside this subset is refused, not misread.
"""

from __future__ import annotations

from functools import lru_cache

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from .errors import OnnxSparseError

_F = descriptor_pb2.FieldDescriptorProto
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED

# ONNX TensorProto element type -> Triton DataType name.
ONNX_TO_TRITON = {
    1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32",
    7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 12: "TYPE_UINT32",
    13: "TYPE_UINT64", 16: "TYPE_BF16",
}
_DATA_TYPES = ["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8",
               "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING",
               "TYPE_BF16"]
_KINDS = ["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]

# message -> [(field name, number, type, label, type name)], as in Triton's model_config.proto.
_MESSAGES = {
    "ModelInput": [("name", 1, _F.TYPE_STRING, _OPTIONAL, None),
                   ("data_type", 2, _F.TYPE_ENUM, _OPTIONAL, "DataType"),
                   ("dims", 4, _F.TYPE_INT64, _REPEATED, None),
                   ("optional", 8, _F.TYPE_BOOL, _OPTIONAL, None)],
    "ModelOutput": [("name", 1, _F.TYPE_STRING, _OPTIONAL, None),
                    ("data_type", 2, _F.TYPE_ENUM, _OPTIONAL, "DataType"),
                    ("dims", 3, _F.TYPE_INT64, _REPEATED, None)],
    "ModelInstanceGroup": [("name", 1, _F.TYPE_STRING, _OPTIONAL, None),
                           ("count", 2, _F.TYPE_INT32, _OPTIONAL, None),
                           ("gpus", 3, _F.TYPE_INT32, _REPEATED, None),
                           ("kind", 4, _F.TYPE_ENUM, _OPTIONAL, "ModelInstanceGroup.Kind")],
    "ModelDynamicBatching": [("preferred_batch_size", 1, _F.TYPE_INT32, _REPEATED, None),
                             ("max_queue_delay_microseconds", 2, _F.TYPE_UINT64, _OPTIONAL, None)],
    "ModelParameter": [("string_value", 1, _F.TYPE_STRING, _OPTIONAL, None)],
    "ModelOperations": [("op_library_filename", 1, _F.TYPE_STRING, _REPEATED, None)],
    "ModelConfig": [("name", 1, _F.TYPE_STRING, _OPTIONAL, None),
                    ("platform", 2, _F.TYPE_STRING, _OPTIONAL, None),
                    ("max_batch_size", 4, _F.TYPE_INT32, _OPTIONAL, None),
                    ("input", 5, _F.TYPE_MESSAGE, _REPEATED, "ModelInput"),
                    ("output", 6, _F.TYPE_MESSAGE, _REPEATED, "ModelOutput"),
                    ("instance_group", 7, _F.TYPE_MESSAGE, _REPEATED, "ModelInstanceGroup"),
                    ("default_model_filename", 8, _F.TYPE_STRING, _OPTIONAL, None),
                    ("dynamic_batching", 11, _F.TYPE_MESSAGE, _OPTIONAL, "ModelDynamicBatching"),
                    ("parameters", 14, _F.TYPE_MESSAGE, _REPEATED, "ModelConfig.ParametersEntry"),
                    ("backend", 17, _F.TYPE_STRING, _OPTIONAL, None),
                    ("model_operations", 18, _F.TYPE_MESSAGE, _OPTIONAL, "ModelOperations")],
}


def _field(message, name, number, kind, label, type_name) -> None:
    field = message.field.add(name=name, number=number, type=kind, label=label)
    if type_name:
        field.type_name = f".inference.{type_name}"


@lru_cache(maxsize=1)
def _model_config_class():
    proto = descriptor_pb2.FileDescriptorProto(name="onnxsparse_triton_model_config.proto", package="inference",
                                               syntax="proto3")
    data_type = proto.enum_type.add(name="DataType")
    for number, name in enumerate(_DATA_TYPES):
        data_type.value.add(name=name, number=number)
    for message_name, fields in _MESSAGES.items():
        message = proto.message_type.add(name=message_name)
        for spec in fields:
            _field(message, *spec)
        if message_name == "ModelInstanceGroup":
            kind = message.enum_type.add(name="Kind")
            for number, name in enumerate(_KINDS):
                kind.value.add(name=name, number=number)
        if message_name == "ModelConfig":  # map<string, ModelParameter> parameters = 14
            entry = message.nested_type.add(name="ParametersEntry")
            entry.options.map_entry = True
            _field(entry, "key", 1, _F.TYPE_STRING, _OPTIONAL, None)
            _field(entry, "value", 2, _F.TYPE_MESSAGE, _OPTIONAL, "ModelParameter")
    pool = descriptor_pool.DescriptorPool()  # private: no clash with tritonclient's definitions
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def parse_model_config(text: str):
    """``config.pbtxt`` text -> an ``inference.ModelConfig`` message (this module's subset).

    Raises ``OnnxSparseError`` with protobuf's line and column on anything malformed."""
    config = _model_config_class()()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise OnnxSparseError(f"config.pbtxt: {exc}") from None
    return config
