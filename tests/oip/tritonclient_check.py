#!/usr/bin/env python3
"""Drives a running Tessera with the unmodified Triton HTTP client (tritonclient.http).

    python3 tests/oip/tritonclient_check.py HOST:PORT TOKEN

Expects, in the token's tenant, the models `adder` (tests/fixtures/models/add_fp32.onnx) and
`dtypes` (tests/fixtures/models/dtypes.onnx). Exits non-zero with a message on the first
mismatch. Run by the integration test `inference::tritonclient_works_unmodified`.
"""

import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from dtypes_feeds import DATATYPES, FEEDS


def check(condition, message):
    if not condition:
        print(f"FAILED: {message}")
        sys.exit(1)


def main() -> int:
    url, token = sys.argv[1], sys.argv[2]
    # A fresh dict per call: tritonclient adds Inference-Header-Content-Length to the dict it
    # is given, which would leak into the next request.
    auth = {"Authorization": f"Bearer {token}"}

    client = httpclient.InferenceServerClient(url=url)

    check(client.is_server_live(headers=dict(auth)), "server live")
    check(client.is_server_ready(headers=dict(auth)), "server ready")
    check(client.is_model_ready("adder", headers=dict(auth)), "model ready")
    metadata = client.get_model_metadata("adder", headers=dict(auth))
    check([i["name"] for i in metadata["inputs"]] == ["x", "y"], f"metadata inputs {metadata}")

    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    y = np.full((2, 4), 0.5, dtype=np.float32)
    for binary_in in (False, True):
        for binary_out in (False, True):
            inputs = [httpclient.InferInput("x", [2, 4], "FP32"), httpclient.InferInput("y", [2, 4], "FP32")]
            inputs[0].set_data_from_numpy(x, binary_data=binary_in)
            inputs[1].set_data_from_numpy(y, binary_data=binary_in)
            outputs = [httpclient.InferRequestedOutput("z", binary_data=binary_out)]
            result = client.infer("adder", inputs, outputs=outputs, headers=dict(auth), request_id="req-1")
            z = result.as_numpy("z")
            check(z is not None and np.array_equal(z, x + y), f"adder binary_in={binary_in} binary_out={binary_out}: {z}")
            check(result.get_response()["id"] == "req-1", "request id echoed")
    # The alias and explicit-version forms.
    inputs = [httpclient.InferInput("x", [1, 4], "FP32"), httpclient.InferInput("y", [1, 4], "FP32")]
    inputs[0].set_data_from_numpy(x[:1])
    inputs[1].set_data_from_numpy(y[:1])
    result = client.infer("adder", inputs, model_version="production", headers=dict(auth))
    check(np.array_equal(result.as_numpy("z"), x[:1] + y[:1]), "alias version")

    # Every datatype of the dtypes model, as binary data and as JSON.
    feeds, datatypes = FEEDS, DATATYPES
    for binary in (True, False):
        inputs = []
        for suffix, array in feeds.items():
            tensor = httpclient.InferInput(f"in_{suffix}", list(array.shape), datatypes[suffix])
            tensor.set_data_from_numpy(array, binary_data=binary)
            inputs.append(tensor)
        outputs = [httpclient.InferRequestedOutput(f"out_{s}", binary_data=binary) for s in feeds]
        result = client.infer("dtypes", inputs, outputs=outputs, headers=dict(auth))
        for suffix, array in feeds.items():
            got = result.as_numpy(f"out_{suffix}")
            if suffix == "string":
                got = np.array([g if isinstance(g, bytes) else str(g).encode() for g in got.reshape(-1)], dtype=np.object_)
            check(got is not None and got.shape == array.shape and np.array_equal(got, array),
                  f"dtypes binary={binary} {suffix}: sent {array!r}, got {got!r}")

    # Errors come back as InferenceServerException with the server's message.
    bad = [httpclient.InferInput("x", [1, 5], "FP32"), httpclient.InferInput("y", [1, 4], "FP32")]
    bad[0].set_data_from_numpy(np.zeros((1, 5), dtype=np.float32))
    bad[1].set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
    try:
        client.infer("adder", bad, headers=dict(auth))
        check(False, "a wrong shape was accepted")
    except InferenceServerException as e:
        check("input 'x'" in str(e.message()), f"error message names the tensor: {e.message()!r}")
    try:
        client.get_model_metadata("no-such-model", headers=dict(auth))
        check(False, "an unknown model was found")
    except InferenceServerException as e:
        check("not found" in str(e.message()), f"unknown model message: {e.message()!r}")
    print("tritonclient: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
