#!/usr/bin/env python3
"""Drives a running Tessera's gRPC port with the unmodified Triton gRPC client (tritonclient.grpc),
and with the stubs it ships (service_pb2) for what the client does not send by itself.

    python3 tests/oip/tritonclient_grpc_check.py HOST:GRPC_PORT TOKEN OTHER_TOKEN AUDITOR_TOKEN LIMITED_TOKEN

Expects, in TOKEN's tenant, the models `adder` (tests/fixtures/models/add_fp32.onnx, alias
`production`) and `dtypes` (tests/fixtures/models/dtypes.onnx); in OTHER_TOKEN's tenant, the
model `secret` (add_fp32.onnx) and no `adder`. AUDITOR_TOKEN is a credential of TOKEN's tenant
without `inference.run`. LIMITED_TOKEN's tenant allows one call a second with a burst of
two. Exits non-zero with a message on the first mismatch. Run by the
integration test `inference::tritonclient_grpc_works_unmodified`.
"""

import sys

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from dtypes_feeds import DATATYPES, FEEDS


def check(condition, message):
    if not condition:
        print(f"FAILED: {message}")
        sys.exit(1)


def refused(call, status, code, what):
    """`call` must fail with gRPC `status` and the problem `code` in its message."""
    try:
        call()
    except InferenceServerException as e:
        check(e.status() == f"StatusCode.{status}", f"{what}: status {e.status()}, expected {status} ({e.message()!r})")
        check(f"[{code}]" in e.message(), f"{what}: message {e.message()!r} lacks [{code}]")
        return e
    check(False, f"{what}: accepted")


def main() -> int:
    url, token, other_token, auditor_token, limited_token = sys.argv[1:6]
    auth = {"authorization": f"Bearer {token}"}
    other = {"authorization": f"Bearer {other_token}"}
    client = grpcclient.InferenceServerClient(url=url)

    # Health and server metadata are public, as over HTTP.
    check(client.is_server_live(), "server live")
    check(client.is_server_ready(), "server ready")
    check(client.get_server_metadata().name == "tessera", "server metadata")
    check(client.is_model_ready("adder", headers=auth), "model ready")
    check(client.is_model_ready("adder", "production", headers=auth), "alias ready")
    metadata = client.get_model_metadata("adder", headers=auth)
    check([i.name for i in metadata.inputs] == ["x", "y"], f"metadata inputs {metadata}")
    check([i.datatype for i in metadata.inputs] == ["FP32", "FP32"], f"metadata datatypes {metadata}")
    check(list(metadata.versions) == ["1"], f"metadata versions {metadata}")

    # Raw contents, as tritonclient sends them.
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    y = np.full((2, 4), 0.5, dtype=np.float32)
    inputs = [grpcclient.InferInput("x", [2, 4], "FP32"), grpcclient.InferInput("y", [2, 4], "FP32")]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(y)
    result = client.infer("adder", inputs, outputs=[grpcclient.InferRequestedOutput("z")], headers=auth, request_id="req-1")
    check(np.array_equal(result.as_numpy("z"), x + y), f"adder raw: {result.as_numpy('z')}")
    response = result.get_response()
    check(response.id == "req-1", "request id echoed")
    check(response.model_name == "adder" and response.model_version == "1", f"model and version: {response.model_name} {response.model_version}")
    check(response.parameters["cache"].string_param in ("hit", "miss", "bypass"), f"cache parameter {response.parameters}")
    result = client.infer("adder", inputs, model_version="production", headers=auth)
    check(np.array_equal(result.as_numpy("z"), x + y), "alias version")

    # Every datatype of the dtypes model, raw both ways.
    feeds, datatypes = FEEDS, DATATYPES
    tensors = []
    for suffix, array in feeds.items():
        tensor = grpcclient.InferInput(f"in_{suffix}", list(array.shape), datatypes[suffix])
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    result = client.infer("dtypes", tensors, outputs=[grpcclient.InferRequestedOutput(f"out_{s}") for s in feeds], headers=auth)
    for suffix, array in feeds.items():
        got = result.as_numpy(f"out_{suffix}")
        check(got is not None and got.shape == array.shape and np.array_equal(got, array),
              f"dtypes raw {suffix}: sent {array!r}, got {got!r}")

    # Typed contents (what generated clients other than tritonclient often send): the answer
    # comes back typed too.
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(url))
    metadata_pairs = (("authorization", f"Bearer {token}"),)
    request = service_pb2.ModelInferRequest(model_name="adder", id="typed")
    for name, values in (("x", x), ("y", y)):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[2, 4])
        tensor.contents.fp32_contents.extend(values.reshape(-1).tolist())
    typed = stub.ModelInfer(request, metadata=metadata_pairs)
    check(len(typed.raw_output_contents) == 0, "typed request, typed answer")
    check(typed.outputs[0].name == "z" and list(typed.outputs[0].shape) == [2, 4], f"typed output {typed.outputs}")
    check(list(typed.outputs[0].contents.fp32_contents) == (x + y).reshape(-1).tolist(), f"typed values {typed.outputs[0].contents}")
    typed_types = service_pb2.ModelInferRequest(model_name="dtypes")
    for suffix, field in (("int64", "int64_contents"), ("int32", "int_contents"), ("bool", "bool_contents"),
                          ("fp64", "fp64_contents"), ("uint8", "uint_contents"), ("int8", "int_contents"),
                          ("string", "bytes_contents")):
        array = feeds[suffix]
        tensor = typed_types.inputs.add(name=f"in_{suffix}", datatype=datatypes[suffix], shape=list(array.shape))
        getattr(tensor.contents, field).extend(array.reshape(-1).tolist())
    # FP16 has no typed field: sent typed, it is refused with the protocol's reason.
    fp16 = typed_types.inputs.add(name="in_fp16", datatype="FP16", shape=[2, 2])
    fp16.contents.fp32_contents.extend([0.5, -1.0, 2.0, 1024.0])
    try:
        stub.ModelInfer(typed_types, metadata=metadata_pairs)
        check(False, "typed FP16 was accepted")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "FP16" in e.details(), f"typed FP16: {e.code()} {e.details()}")
        trailers = dict(e.trailing_metadata() or ())
        check(trailers.get("tessera-error-code") == "invalid_input", f"error code trailer: {trailers}")
    # A value out of its datatype's range is refused, not wrapped.
    narrow = service_pb2.ModelInferRequest(model_name="dtypes")
    narrow.inputs.add(name="in_int8", datatype="INT8", shape=[2]).contents.int_contents.extend([1, 300])
    try:
        stub.ModelInfer(narrow, metadata=metadata_pairs)
        check(False, "INT8 300 was accepted")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "out of range" in e.details(), f"INT8 range: {e.details()}")

    # Hostile messages: each refused with a client error, and the server serves on.
    def rpc_error(call, code, fragment, what):
        try:
            call()
            check(False, f"{what}: accepted")
        except grpc.RpcError as e:
            check(e.code() == code and fragment in e.details(), f"{what}: {e.code()} {e.details()}")
    nul = service_pb2.ModelInferRequest(model_name="add\0er")
    rpc_error(lambda: stub.ModelInfer(nul, metadata=metadata_pairs), grpc.StatusCode.INVALID_ARGUMENT, "[invalid_request]",
              "a NUL in the model name")
    rpc_error(lambda: stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="a\0"), metadata=metadata_pairs),
              grpc.StatusCode.INVALID_ARGUMENT, "[invalid_request]", "a NUL in a metadata name")
    crowd = service_pb2.ModelInferRequest(model_name="adder")
    for _ in range(257):
        crowd.inputs.add()
    rpc_error(lambda: stub.ModelInfer(crowd, metadata=metadata_pairs), grpc.StatusCode.INVALID_ARGUMENT, "inputs has 257",
              "257 inputs")
    twice = service_pb2.ModelInferRequest(model_name="adder")
    twice.outputs.add(name="z")
    twice.outputs.add(name="z")
    for name in ("x", "y"):
        twice.inputs.add(name=name, datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([0.0] * 4)
    rpc_error(lambda: stub.ModelInfer(twice, metadata=metadata_pairs), grpc.StatusCode.INVALID_ARGUMENT, "more than once",
              "an output requested twice")
    # A megabyte to a public call, or to ModelInfer without a credential: refused, not buffered.
    channel = grpc.insecure_channel(url, options=[("grpc.max_send_message_length", 8 << 20)])
    raw = lambda method: channel.unary_unary(f"/inference.GRPCInferenceService/{method}",
                                             request_serializer=lambda b: b, response_deserializer=lambda b: b)
    padding = b"\x4a" + b"\x80\x80\x40" + b"\0" * (1 << 20)  # unknown field 9, 1 MiB of bytes
    rpc_error(lambda: raw("ServerLive")(padding), grpc.StatusCode.RESOURCE_EXHAUSTED, "[payload_too_large]", "1 MiB to ServerLive")
    rpc_error(lambda: raw("ModelInfer")(b"\xff\xff\xff", metadata=metadata_pairs), grpc.StatusCode.INVALID_ARGUMENT,
              "[invalid_request]", "a message that is not protobuf")
    rpc_error(lambda: raw("ModelInfer")(padding), grpc.StatusCode.UNAUTHENTICATED, "[unauthenticated]",
              "1 MiB to ModelInfer without a credential")
    check(client.is_server_live(), "still live after the hostile messages")

    # Errors: gRPC status, the problem code in the message.
    bad = [grpcclient.InferInput("x", [1, 5], "FP32"), grpcclient.InferInput("y", [1, 4], "FP32")]
    bad[0].set_data_from_numpy(np.zeros((1, 5), dtype=np.float32))
    bad[1].set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
    e = refused(lambda: client.infer("adder", bad, headers=auth), "INVALID_ARGUMENT", "invalid_input", "wrong shape")
    check("input 'x'" in e.message(), f"the message names the tensor: {e.message()!r}")
    short = service_pb2.ModelInferRequest(model_name="adder")
    short.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    short.inputs.add(name="y", datatype="FP32", shape=[1, 4])
    short.raw_input_contents.extend([b"\0" * 16, b"\0" * 12])
    try:
        stub.ModelInfer(short, metadata=metadata_pairs)
        check(False, "raw contents 4 bytes short were accepted")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "input 'y'" in e.details(), f"short raw contents: {e.details()}")
    refused(lambda: client.get_model_metadata("no-such-model", headers=auth), "NOT_FOUND", "not_found", "unknown model")
    refused(lambda: client.infer("adder", inputs, model_version="7", headers=auth), "NOT_FOUND", "not_found", "unknown version")
    refused(lambda: client.infer("adder", inputs), "UNAUTHENTICATED", "unauthenticated", "no credential")
    refused(lambda: client.infer("adder", inputs, headers={"authorization": "Bearer tsk_nope"}), "UNAUTHENTICATED",
            "invalid_token", "a made-up key")
    refused(lambda: client.infer("adder", inputs, headers={"authorization": f"Bearer {auditor_token}"}), "PERMISSION_DENIED",
            "forbidden", "a credential without inference.run")

    # Another tenant's model does not exist for this one, under any call, and the other way round.
    for call, what in (
        (lambda: client.infer("secret", inputs, headers=auth), "infer"),
        (lambda: client.get_model_metadata("secret", headers=auth), "metadata"),
        (lambda: client.is_model_ready("secret", headers=auth), "ready"),
    ):
        refused(call, "NOT_FOUND", "not_found", f"another tenant's model, {what}")
    refused(lambda: client.infer("adder", inputs, headers=other), "NOT_FOUND", "not_found", "this tenant's model from the other")
    result = client.infer("secret", inputs, headers=other)
    check(np.array_equal(result.as_numpy("z"), x + y), "the other tenant's own model serves it")
    # The tenant's rate limit holds over gRPC too, with the wait in the `retry-after` trailer.
    limited = (("authorization", f"Bearer {limited_token}"),)
    for attempt in range(5):
        try:
            stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="none"), metadata=limited)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                trailers = dict(e.trailing_metadata() or ())
                check("[rate_limited]" in e.details() and trailers.get("retry-after", "").isdigit(),
                      f"rate limit: {e.details()} {trailers}")
                break
            check(e.code() == grpc.StatusCode.NOT_FOUND, f"within the burst: {e.code()} {e.details()}")
    else:
        check(False, "five calls at once passed a limit of one a second with a burst of two")
    print("tritonclient.grpc: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
