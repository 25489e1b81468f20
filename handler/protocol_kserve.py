"""KServe's two REST protocols, parsed once each into a ParsedRequest and answered in their own shapes.

  v1   {"instances": [[INSTRUCTION, TEXT], ...]}                      -> {"predictions": [[...], ...]}
       {"instances": [{"instruction": INSTRUCTION, "text": TEXT}, ...]}
  v2   {"id"?, "model_name"?, "inputs": [{"name": "pairs", "datatype": "BYTES", "shape": [n, 2], "data": [...]}]}
       {"id"?, "inputs": [{"name": "instruction", ... "shape": [n] or [1]}, {"name": "text", ... "shape": [n]}]}
       -> {"model_name", "model_version"?, "id"?, "outputs": [{"name": "embedding", "datatype": "FP32",
           "shape": [n, dim], "data": [row-major floats]}]}

v2 also speaks the binary tensor extension as tritonclient does by default: a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw tensors (BYTES: a 4-byte little-endian length
before each string); outputs come back as raw little-endian float32 after the JSON header when the request
asks (``parameters.binary_data_output``, which tritonclient sets when ``infer()`` gets no ``outputs``, or an
output's ``parameters.binary_data``). Raw float32 is also the cheapest answer there is to send and decode.
Errors are ``{"error": "<message naming the field>"}`` with the status of handler/errors.py's table.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson

from handler.errors import InvalidInput, NotFound
from handler.protocol_types import ModelIdentity, Protocol, Reply
from handler.request_parsing import (
    Pair,
    ParsedRequest,
    check_count,
    checked_bool,
    checked_list,
    checked_pair,
    decode_json,
    json_type,
)
from handler.settings import Settings

BINARY_HEADER = "inference-header-content-length"  # lower case: headers are looked up lowered
OUTPUT_NAME = "embedding"
_V1_KEYS = ("instances", "truncate")
_V1_INSTANCE_KEYS = ("instruction", "text")
_V2_KEYS = ("id", "model_name", "model_version", "inputs", "outputs", "parameters")
_V2_TENSOR_KEYS = ("name", "shape", "datatype", "data", "parameters")
_V2_FORMS = ("one BYTES tensor of shape [n, 2] ([instruction, text] rows), or two BYTES tensors of shape [n] "
             "named 'instruction' and 'text'")
_LENGTH = struct.Struct("<I")


def detect(body: Any) -> Protocol:
    """The protocol a decoded body speaks, by its shape alone (for routes that do not say)."""
    if not isinstance(body, dict):
        return Protocol.UNKNOWN
    if "instances" in body:
        return Protocol.V1
    inputs = body.get("inputs")
    if isinstance(inputs, list) and any(isinstance(item, dict) for item in inputs):
        return Protocol.V2
    if any(key in body for key in ("id", "outputs", "parameters", "model_name")):
        return Protocol.V2
    if any(key in body for key in ("inputs", "instruction", "sentences")):
        return Protocol.NATIVE
    return Protocol.UNKNOWN


# --- v1 ---------------------------------------------------------------------------------------------------

def parse_v1(body: Any, settings: Settings) -> ParsedRequest:
    if not isinstance(body, dict):
        raise InvalidInput(f"the body must be a JSON object {{\"instances\": [...]}}; got {json_type(body)}")
    _refuse_unknown(body, _V1_KEYS, "")
    truncate = checked_bool(body.get("truncate", True), "truncate")
    instances = checked_list(body.get("instances"), "instances", empty_hint="send [[instruction, text], ...]")
    check_count(len(instances), "instances", settings)
    pairs = []
    for index, item in enumerate(instances):
        field = f"instances[{index}]"
        if isinstance(item, list):
            if len(item) != 2:
                raise InvalidInput(f"{field} must be [instruction, text]; got a list of {len(item)}")
            pairs.append(checked_pair(item[0], item[1], f"{field}[0]", f"{field}[1]", settings))
        elif isinstance(item, dict):
            _refuse_unknown(item, _V1_INSTANCE_KEYS, f"{field}.")
            if "text" not in item:
                raise InvalidInput(f"{field}.text is missing")
            pairs.append(checked_pair(item.get("instruction", ""), item["text"], f"{field}.instruction",
                                      f"{field}.text", settings))
        else:
            raise InvalidInput(f"{field} must be [instruction, text] or {{\"instruction\": ..., \"text\": ...}}; "
                               f"got {json_type(item)}")
    return ParsedRequest(pairs=pairs, single=False, truncate=truncate)


# --- v2 (Open Inference Protocol) -------------------------------------------------------------------------

def parse_v2(body: Any, settings: Settings, model: ModelIdentity) -> ParsedRequest:
    if not isinstance(body, dict):
        raise InvalidInput(f"the body must be a JSON object {{\"inputs\": [...]}}; got {json_type(body)}")
    _refuse_unknown(body, _V2_KEYS, "")
    _check_model(body, model)
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string; got {json_type(request_id)}")
    truncate, binary_output = _v2_parameters(body)
    binary_output = _v2_requested_outputs(body.get("outputs"), binary_output)
    inputs = checked_list(body.get("inputs"), "inputs", kind="a list of tensors", empty_hint=f"send {_V2_FORMS}")
    for index, tensor in enumerate(inputs):
        _check_tensor(tensor, f"inputs[{index}]")
    if len(inputs) == 1:
        pairs = _v2_pairs_tensor(inputs[0], settings)
    elif len(inputs) == 2:
        pairs = _v2_named_tensors(inputs, settings)
    else:
        raise InvalidInput(f"'inputs' has {len(inputs)} tensors; send {_V2_FORMS}")
    return ParsedRequest(pairs=pairs, single=False, truncate=truncate, request_id=request_id,
                         binary_output=binary_output)


def render_v2(request: ParsedRequest, vectors: np.ndarray, model: ModelIdentity) -> Reply:
    payload: dict[str, Any] = {"model_name": model.name}
    if model.version is not None:
        payload["model_version"] = model.version
    if request.request_id is not None:
        payload["id"] = request.request_id
    output: dict[str, Any] = {"name": OUTPUT_NAME, "datatype": "FP32", "shape": list(vectors.shape)}
    if not request.binary_output:
        payload["outputs"] = [{**output, "data": vectors.reshape(-1)}]
        return Reply(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY))
    raw = vectors.astype("<f4", copy=False).tobytes()
    payload["outputs"] = [{**output, "parameters": {"binary_data_size": len(raw)}}]
    header = orjson.dumps(payload)
    return Reply(header + raw, "application/octet-stream", {"Inference-Header-Content-Length": str(len(header))})


def split_binary(raw: Any, header_length: str) -> dict[str, Any]:
    """A binary-extension body -> its JSON header with each binary tensor's strings put into ``data``."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raw = b"" if raw is None else (raw if isinstance(raw, str) else orjson.dumps(raw)).encode("utf-8")
    data = bytes(raw)
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidInput(f"header Inference-Header-Content-Length must be an integer; got {header_length!r}") \
            from None
    if not 0 < length <= len(data):
        raise InvalidInput(f"header Inference-Header-Content-Length is {length}, but the body has {len(data)} bytes")
    body = decode_json(data[:length])
    offset = length
    tensors = body.get("inputs") if isinstance(body, dict) else None
    for index, tensor in enumerate(tensors if isinstance(tensors, list) else []):
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        if not isinstance(parameters, dict) or "binary_data_size" not in parameters:
            continue
        size = parameters.pop("binary_data_size")
        field = f"inputs[{index}].parameters.binary_data_size"
        if type(size) is not int or size < 0 or offset + size > len(data):
            raise InvalidInput(f"{field} is {size!r}; the body has {len(data) - offset} bytes left")
        if tensor.get("datatype") != "BYTES":
            raise InvalidInput(f"inputs[{index}].datatype must be BYTES (strings); got {tensor.get('datatype')!r}")
        tensor["data"] = _bytes_elements(data[offset:offset + size], f"inputs[{index}]")
        offset += size
    if offset != len(data):
        raise InvalidInput(f"the body has {len(data) - offset} bytes after its tensors; "
                           "the tensors' binary_data_size do not add up to the body")
    return body


def _bytes_elements(chunk: bytes, field: str) -> list[str]:
    """BYTES tensor data in the binary extension: each element a 4-byte little-endian length, then its bytes."""
    out, offset = [], 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise InvalidInput(f"{field}: binary BYTES data ends inside an element's length")
        (size,) = _LENGTH.unpack_from(chunk, offset)
        offset += 4
        if offset + size > len(chunk):
            raise InvalidInput(f"{field}: binary BYTES element {len(out)} claims {size} bytes; "
                               f"{len(chunk) - offset} are left")
        try:
            out.append(chunk[offset:offset + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"{field}: binary BYTES element {len(out)} is not UTF-8 text") from None
        offset += size
    return out


def _check_model(body: dict[str, Any], model: ModelIdentity) -> None:
    """The kserve package's InferRequest names the model in the body: it must be this one."""
    name = body.get("model_name")
    if name is not None and name != model.name:
        raise NotFound(f"'model_name' is {name!r}; this server serves {model.name!r}")
    version = body.get("model_version")
    if version is not None and model.version is not None and str(version) != model.version:
        raise NotFound(f"'model_version' is {version!r}; this server serves version {model.version!r}")


def _v2_parameters(body: dict[str, Any]) -> tuple[bool, bool]:
    """Request parameters are free-form in the protocol; two of them matter here."""
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput(f"'parameters' must be an object; got {json_type(parameters)}")
    truncate = parameters.get("truncate", True)
    if not isinstance(truncate, bool):
        raise InvalidInput(f"parameters.truncate must be true or false; got {json_type(truncate)}")
    binary = parameters.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise InvalidInput(f"parameters.binary_data_output must be true or false; got {json_type(binary)}")
    return truncate, binary


def _v2_requested_outputs(outputs: Any, binary: bool) -> bool:
    if outputs is None:
        return binary
    if not isinstance(outputs, list):
        raise InvalidInput(f"'outputs' must be a list; got {json_type(outputs)}")
    for index, output in enumerate(outputs):
        field = f"outputs[{index}]"
        if not isinstance(output, dict):
            raise InvalidInput(f"{field} must be an object like {{\"name\": \"{OUTPUT_NAME}\"}}; "
                               f"got {json_type(output)}")
        if output.get("name") != OUTPUT_NAME:
            raise InvalidInput(f"{field}.name must be '{OUTPUT_NAME}' (the model's only output); "
                               f"got {output.get('name')!r}")
        parameters = output.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput(f"{field}.parameters must be an object; got {json_type(parameters)}")
        if "binary_data" in parameters:
            binary = checked_bool(parameters["binary_data"], f"{field}.parameters.binary_data")
    return binary


def _check_tensor(tensor: Any, field: str) -> None:
    if not isinstance(tensor, dict):
        raise InvalidInput(f"{field} must be a tensor object {{name, datatype, shape, data}}; "
                           f"got {json_type(tensor)}")
    _refuse_unknown(tensor, _V2_TENSOR_KEYS, f"{field}.")
    for key in ("name", "datatype"):
        if not isinstance(tensor.get(key), str):
            raise InvalidInput(f"{field}.{key} must be a string; got {json_type(tensor.get(key))}")
    if tensor["datatype"] != "BYTES":
        raise InvalidInput(f"{field}.datatype must be BYTES (strings); got {tensor['datatype']!r}")
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and all(type(dim) is int and dim >= 0 for dim in shape)):
        raise InvalidInput(f"{field}.shape must be a list of non-negative integers; got {json_type(shape)}")
    parameters = tensor.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput(f"{field}.parameters must be an object; got {json_type(parameters)}")
    if "binary_data_size" in parameters:
        raise InvalidInput(f"{field}.parameters.binary_data_size needs the header Inference-Header-Content-Length "
                           "(the binary tensor extension)")
    if "shared_memory_region" in parameters:
        raise InvalidInput(f"{field}.parameters.shared_memory_region: shared-memory tensors are not supported; "
                           "send the strings in 'data' or as binary tensor data")
    if not isinstance(tensor.get("data"), list):
        raise InvalidInput(f"{field}.data must be a list of strings; got {json_type(tensor.get('data'))}")


def _v2_pairs_tensor(tensor: dict[str, Any], settings: Settings) -> list[Pair]:
    field = "inputs[0]"
    shape, data = tensor["shape"], tensor["data"]
    if len(shape) != 2 or shape[1] != 2 or shape[0] < 1:
        raise InvalidInput(f"{field}.shape must be [n, 2] with n >= 1 ([instruction, text] rows); got {shape}"
                           f"; or send two tensors named 'instruction' and 'text'")
    rows = shape[0]
    # The shape is checked against the data before the limit: a shape that disagrees with its data is a 400.
    if data and all(isinstance(item, list) for item in data):  # nested: [[instruction, text], ...]
        if len(data) != rows or any(len(row) != 2 for row in data):
            raise InvalidInput(f"{field}.data must hold {rows} rows of 2 strings, as {field}.shape {shape} says")
        check_count(rows, f"{field}.shape[0]", settings)
        return [checked_pair(row[0], row[1], f"{field}.data[{i}][0]", f"{field}.data[{i}][1]", settings)
                for i, row in enumerate(data)]
    if len(data) != 2 * rows:  # flat, row-major
        raise InvalidInput(f"{field}.data has {len(data)} elements; {field}.shape {shape} needs {2 * rows}")
    check_count(rows, f"{field}.shape[0]", settings)
    return [checked_pair(data[2 * i], data[2 * i + 1], f"{field}.data[{2 * i}]", f"{field}.data[{2 * i + 1}]", settings)
            for i in range(rows)]


def _v2_named_tensors(inputs: list[dict[str, Any]], settings: Settings) -> list[Pair]:
    by_name = {tensor["name"]: (index, tensor) for index, tensor in enumerate(inputs)}
    if set(by_name) != {"instruction", "text"}:
        raise InvalidInput(f"two input tensors must be named 'instruction' and 'text'; "
                           f"got {[tensor['name'] for tensor in inputs]}")
    text_index, text = by_name["text"]
    instruction_index, instruction = by_name["instruction"]
    text_field, instruction_field = f"inputs[{text_index}]", f"inputs[{instruction_index}]"
    if len(text["shape"]) != 1 or text["shape"][0] < 1:
        raise InvalidInput(f"{text_field}.shape must be [n] with n >= 1; got {text['shape']}")
    rows = text["shape"][0]
    # One instruction ([1]) applies to every text, like the native compact form.
    if instruction["shape"] not in ([rows], [1]):
        raise InvalidInput(f"{instruction_field}.shape must be [{rows}] (one per text) or [1]; "
                           f"got {instruction['shape']}")
    for tensor_field, tensor in ((text_field, text), (instruction_field, instruction)):
        if len(tensor["data"]) != tensor["shape"][0]:
            raise InvalidInput(f"{tensor_field}.data has {len(tensor['data'])} elements; "
                               f"{tensor_field}.shape {tensor['shape']} needs {tensor['shape'][0]}")
    check_count(rows, f"{text_field}.shape[0]", settings)
    broadcast = instruction["shape"] == [1]
    return [checked_pair(instruction["data"][0 if broadcast else i], text["data"][i],
                  f"{instruction_field}.data[{0 if broadcast else i}]", f"{text_field}.data[{i}]", settings)
            for i in range(rows)]


# --- shared -----------------------------------------------------------------------------------------------

def _refuse_unknown(obj: dict[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    unknown = [key for key in obj if key not in allowed]
    if unknown:
        raise InvalidInput(f"unknown field {prefix}{unknown[0]}; allowed: {', '.join(allowed)}")
