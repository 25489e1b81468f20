"""KServe's two REST protocols, spoken by the handler itself (no TorchServe envelope).

TorchServe 0.12 routes ``POST /v1/models/<name>:predict`` and ``POST /v2/models/<name>/infer`` to the handler
with the raw body, exactly like ``/predictions/<name>``; the handler tells the protocols apart by the body's
shape, so one dynamic batch may mix all three and every request is answered in its own protocol:

  v1   {"instances": [[INSTRUCTION, TEXT], ...]}                      -> {"predictions": [[...], ...]}
       {"instances": [{"instruction": INSTRUCTION, "text": TEXT}, ...]}
  v2   {"id"?, "inputs": [{"name": "pairs", "datatype": "BYTES", "shape": [n, 2], "data": [...]}]}
       {"id"?, "inputs": [{"name": "instruction", ... "shape": [n]}, {"name": "text", ... "shape": [n]}]}
       -> {"model_name", "model_version"?, "id"?, "outputs": [{"name": "embedding", "datatype": "FP32",
           "shape": [n, dim], "data": [row-major floats]}]}
  else the handler's own forms (handler/request_parsing.py).

Errors of v1/v2 requests have KServe's shape ``{"error": "<message naming the field>"}`` with the status of
the error table in handler/errors.py. Pairs are validated with the same limits as the native forms and then
handed to ``parse_request``, so every protocol yields the same ParsedRequest and the same core call.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any

import numpy as np
import orjson

from handler.errors import InvalidInput, ServiceError
from handler.request_parsing import (
    Pair,
    ParsedRequest,
    check_count,
    checked_bool,
    checked_list,
    checked_string,
    decode_json,
    json_type,
    parse_request,
)
from handler.settings import Settings

OUTPUT_NAME = "embedding"
_V1_KEYS = ("instances", "truncate")
_V1_INSTANCE_KEYS = ("instruction", "text")
_V2_KEYS = ("id", "inputs", "outputs", "parameters")
_V2_TENSOR_KEYS = ("name", "shape", "datatype", "data", "parameters")
_V2_FORMS = ("one BYTES tensor of shape [n, 2] ([instruction, text] rows), or two BYTES tensors of shape [n] "
             "named 'instruction' and 'text'")


class Protocol(str, enum.Enum):
    """Which protocol a request spoke, hence the shape of its answer."""

    NATIVE = "native"  # the handler's own forms (/predictions)
    V1 = "v1"  # KServe v1: instances -> predictions
    V2 = "v2"  # KServe v2 / Open Inference Protocol: inputs -> outputs


@dataclasses.dataclass(frozen=True)
class ProtocolRequest(ParsedRequest):
    """A ParsedRequest that came as a KServe v1/v2 body: it remembers how to be answered."""

    protocol: Protocol = Protocol.V1
    request_id: str | None = None  # v2 "id", echoed in the response


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    """Name and version that v2 responses carry (TorchServe's model name and archive version)."""

    name: str
    version: str | None = None

    @classmethod
    def from_context(cls, context: Any) -> ModelIdentity:
        """Read them from TorchServe's context: ``model_name`` and the MANIFEST's ``modelVersion``."""
        manifest = getattr(context, "manifest", None) or {}
        version = (manifest.get("model") or {}).get("modelVersion")
        return cls(name=str(context.model_name), version=None if version is None else str(version))


def parse_body(body: Any, settings: Settings) -> ParsedRequest:
    """Parse any accepted body: v1 and v2 into a ProtocolRequest, everything else with ``parse_request``.

    Raises InvalidInput / PayloadTooLarge; an error of a v1/v2 body is marked with its protocol
    (see ``protocol_of``) so that it is answered in that protocol's error shape.
    """
    if isinstance(body, (bytes, bytearray, memoryview, str)):
        body = _load_json(body)
    protocol = detect(body)
    if protocol is Protocol.NATIVE:
        return parse_request(body, settings)
    try:
        if protocol is Protocol.V1:
            pairs, truncate, request_id = _parse_v1(body, settings), body.get("truncate", True), None
        else:
            pairs, truncate, request_id = _parse_v2(body, settings)
        # The native parser builds the ParsedRequest (its checks pass again: the same limits were applied).
        native = parse_request({"inputs": [list(pair) for pair in pairs], "truncate": truncate}, settings)
    except ServiceError as error:
        raise _marked(error, protocol) from None
    fields = {field.name: getattr(native, field.name) for field in dataclasses.fields(ParsedRequest)}
    return ProtocolRequest(**fields, protocol=protocol, request_id=request_id)


def detect(body: Any) -> Protocol:
    """The protocol a (decoded) body speaks, by its shape alone."""
    if not isinstance(body, dict):
        return Protocol.NATIVE
    if "instances" in body:
        return Protocol.V1
    inputs = body.get("inputs")
    if isinstance(inputs, list) and any(isinstance(item, dict) for item in inputs):
        return Protocol.V2
    if "inputs" in body and any(key in body for key in ("id", "outputs", "parameters")):
        return Protocol.V2
    return Protocol.NATIVE


def protocol_of(request: ParsedRequest | None, error: ServiceError | None = None) -> Protocol:
    """The protocol to answer in: the request's, or, if it never parsed, the one its error was marked with."""
    if isinstance(request, ProtocolRequest):
        return request.protocol
    return getattr(error, "protocol", Protocol.NATIVE)


def render_response(request: ProtocolRequest, vectors: np.ndarray, model: ModelIdentity) -> bytes:
    """The JSON answer of a v1/v2 request: float32 printed exactly, as in the native answers."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if request.protocol is Protocol.V1:
        return orjson.dumps({"predictions": vectors}, option=orjson.OPT_SERIALIZE_NUMPY)
    payload: dict[str, Any] = {"model_name": model.name}
    if model.version is not None:
        payload["model_version"] = model.version
    if request.request_id is not None:
        payload["id"] = request.request_id
    payload["outputs"] = [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": list(vectors.shape),
                           "data": vectors.reshape(-1)}]
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def render_error(error: ServiceError, protocol: Protocol) -> bytes:
    """KServe's error body for v1/v2; the native ``{"code", "type", "message"}`` otherwise."""
    if protocol is Protocol.NATIVE:
        return orjson.dumps(error.to_body())
    return orjson.dumps({"error": error.message})


# --- v1 ---------------------------------------------------------------------------------------------------

def _parse_v1(body: dict[str, Any], settings: Settings) -> list[Pair]:
    _refuse_unknown(body, _V1_KEYS, "")
    checked_bool(body.get("truncate", True), "truncate")
    instances = checked_list(body["instances"], "instances", empty_hint="send [[instruction, text], ...]")
    check_count(len(instances), "instances", settings)
    pairs = []
    for index, item in enumerate(instances):
        field = f"instances[{index}]"
        if isinstance(item, list):
            if len(item) != 2:
                raise InvalidInput(f"{field} must be [instruction, text]; got a list of {len(item)}")
            pairs.append((checked_string(item[0], f"{field}[0] (instruction)", settings),
                          checked_string(item[1], f"{field}[1] (text)", settings)))
        elif isinstance(item, dict):
            _refuse_unknown(item, _V1_INSTANCE_KEYS, f"{field}.")
            if "text" not in item:
                raise InvalidInput(f"{field}.text is missing")
            pairs.append((checked_string(item.get("instruction", ""), f"{field}.instruction", settings),
                          checked_string(item["text"], f"{field}.text", settings)))
        else:
            raise InvalidInput(
                f"{field} must be [instruction, text] or {{\"instruction\": ..., \"text\": ...}}; "
                f"got {json_type(item)}"
            )
    return pairs


# --- v2 (Open Inference Protocol) -------------------------------------------------------------------------

def _parse_v2(body: dict[str, Any], settings: Settings) -> tuple[list[Pair], bool, str | None]:
    _refuse_unknown(body, _V2_KEYS, "")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string; got {json_type(request_id)}")
    truncate = _v2_parameters(body)
    _v2_requested_outputs(body.get("outputs"))
    inputs = checked_list(body["inputs"], "inputs", kind="a list of tensors", empty_hint=f"send {_V2_FORMS}")
    for index, tensor in enumerate(inputs):
        _check_tensor(tensor, f"inputs[{index}]")
    if len(inputs) == 1:
        pairs = _v2_pairs_tensor(inputs[0], settings)
    elif len(inputs) == 2:
        pairs = _v2_named_tensors(inputs, settings)
    else:
        raise InvalidInput(f"'inputs' has {len(inputs)} tensors; send {_V2_FORMS}")
    return pairs, truncate, request_id


def _v2_parameters(body: dict[str, Any]) -> bool:
    """Request parameters are free-form in the protocol; two of them matter here."""
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput(f"'parameters' must be an object; got {json_type(parameters)}")
    if parameters.get("binary_data_output"):
        raise InvalidInput("parameters.binary_data_output: binary outputs are not supported; "
                           "omit it (outputs are JSON)")
    truncate = parameters.get("truncate", True)
    if not isinstance(truncate, bool):
        raise InvalidInput(f"parameters.truncate must be true or false; got {json_type(truncate)}")
    return truncate


def _v2_requested_outputs(outputs: Any) -> None:
    if outputs is None:
        return
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
        if parameters.get("binary_data"):
            raise InvalidInput(f"{field}.parameters.binary_data: binary outputs are not supported; "
                               "set it to false (outputs are JSON)")


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
    if "binary_data_size" in parameters or "shared_memory_region" in parameters:
        raise InvalidInput(f"{field}.parameters: binary and shared-memory tensor data are not supported; "
                           "send the strings in 'data' (JSON)")
    if not isinstance(tensor.get("data"), list):
        raise InvalidInput(f"{field}.data must be a list of strings; got {json_type(tensor.get('data'))}")


def _v2_pairs_tensor(tensor: dict[str, Any], settings: Settings) -> list[Pair]:
    field = "inputs[0]"
    shape, data = tensor["shape"], tensor["data"]
    if len(shape) != 2 or shape[1] != 2 or shape[0] < 1:
        raise InvalidInput(f"{field}.shape must be [n, 2] with n >= 1 ([instruction, text] rows); got {shape}"
                           f"; or send two tensors named 'instruction' and 'text'")
    rows = shape[0]
    check_count(rows, f"{field}.shape[0]", settings)
    if all(isinstance(item, list) for item in data):  # nested: [[instruction, text], ...]
        if len(data) != rows or any(len(row) != 2 for row in data):
            raise InvalidInput(f"{field}.data must hold {rows} rows of 2 strings, as {field}.shape {shape} says")
        return [_checked_bytes_pair(row[0], row[1], f"{field}.data[{i}][0]", f"{field}.data[{i}][1]", settings)
                for i, row in enumerate(data)]
    if len(data) != 2 * rows:  # flat, row-major
        raise InvalidInput(f"{field}.data has {len(data)} elements; {field}.shape {shape} needs {2 * rows}")
    return [_checked_bytes_pair(data[2 * i], data[2 * i + 1], f"{field}.data[{2 * i}]",
                                f"{field}.data[{2 * i + 1}]", settings) for i in range(rows)]


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
    check_count(rows, f"{text_field}.shape[0]", settings)
    # One instruction ([1]) applies to every text, like the native compact form.
    if instruction["shape"] not in ([rows], [1]):
        raise InvalidInput(f"{instruction_field}.shape must be [{rows}] (one per text) or [1]; "
                           f"got {instruction['shape']}")
    for tensor_field, tensor in ((text_field, text), (instruction_field, instruction)):
        if len(tensor["data"]) != tensor["shape"][0]:
            raise InvalidInput(f"{tensor_field}.data has {len(tensor['data'])} elements; "
                               f"{tensor_field}.shape {tensor['shape']} needs {tensor['shape'][0]}")
    broadcast = instruction["shape"] == [1]
    return [_checked_bytes_pair(instruction["data"][0 if broadcast else i], text["data"][i],
                                f"{instruction_field}.data[{0 if broadcast else i}]", f"{text_field}.data[{i}]",
                                settings)
            for i in range(rows)]


def _checked_bytes_pair(instruction: Any, text: Any, instruction_field: str, text_field: str,
                        settings: Settings) -> Pair:
    return (checked_string(instruction, f"{instruction_field} (instruction)", settings),
            checked_string(text, f"{text_field} (text)", settings))


# --- shared -----------------------------------------------------------------------------------------------

def _refuse_unknown(obj: dict[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    unknown = [key for key in obj if key not in allowed]
    if unknown:
        raise InvalidInput(f"unknown field {prefix}{unknown[0]}; allowed: {', '.join(allowed)}")


def _load_json(raw: bytes | bytearray | memoryview | str) -> Any:
    """Decode a raw body once (``decode_json``: the collector paused); InvalidInput if it is not JSON."""
    try:
        return decode_json(raw)
    except InvalidInput:
        data = raw.encode("utf-8", errors="surrogatepass") if isinstance(raw, str) else bytes(raw)
        if _is_v2_binary_extension(data):
            raise _marked(InvalidInput(
                "binary tensor data (the Inference-Header-Content-Length extension) is not supported; "
                "send the strings in inputs[].data as JSON (tritonclient: binary_data=False)"), Protocol.V2) from None
        raise


def _is_v2_binary_extension(data: bytes) -> bool:
    """A v2 JSON header followed by raw tensor bytes, as binary-data clients (tritonclient) send."""
    text = data.decode("utf-8", errors="replace")
    try:
        header, end = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError):  # RecursionError: hostile nesting, which orjson refused already
        return False
    return end < len(text) and detect(header) is Protocol.V2


def _marked(error: ServiceError, protocol: Protocol) -> ServiceError:
    error.protocol = protocol  # read back by protocol_of(); an attribute keeps the error types unchanged
    return error
