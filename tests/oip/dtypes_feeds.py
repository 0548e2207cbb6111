"""What the Triton checks send the dtypes model (tests/fixtures/models/dtypes.onnx): one input
per datatype, `in_<suffix>`, echoed as `out_<suffix>`."""

import numpy as np

FEEDS = {
    "int64": np.array([[1, -2], [3, 4]], dtype=np.int64),
    "int32": np.array([7, -8], dtype=np.int32),
    "bool": np.array([[True, False, True], [False, False, True]]),
    "fp64": np.array([1.25, -3.5], dtype=np.float64),
    "uint8": np.array([[0, 1, 2, 254, 255], [5, 6, 7, 8, 9]], dtype=np.uint8),
    "fp16": np.array([[0.5, -1.0], [2.0, 1024.0]], dtype=np.float16),
    "int8": np.array([-128, 127], dtype=np.int8),
    "string": np.array([b"tessera", b"caf\xc3\xa9"], dtype=np.object_),
}
DATATYPES = {"int64": "INT64", "int32": "INT32", "bool": "BOOL", "fp64": "FP64", "uint8": "UINT8",
             "fp16": "FP16", "int8": "INT8", "string": "BYTES"}
