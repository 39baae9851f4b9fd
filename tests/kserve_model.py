"""A tiny model on the real KServe ModelServer, for the verify-inference
tests: v1 `:predict` and v2 `/infer` on one port, bound to 127.0.0.1 only
(KServe binds 0.0.0.0 unless told otherwise), gRPC off.

    python kserve_model.py PORT [DELAY_SECONDS] [OUTPUT]
"""

import asyncio
import json
import sys

import uvicorn


class LoopbackConfig(uvicorn.Config):
    """uvicorn's Config with the host forced to the loopback interface."""

    def __init__(self, *args, **kwargs):
        kwargs["host"] = "127.0.0.1"
        super().__init__(*args, **kwargs)


uvicorn.Config = LoopbackConfig

PORT = int(sys.argv[1])
DELAY = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
OUTPUT = float(sys.argv[3]) if len(sys.argv) > 3 else 0.42
sys.argv = [sys.argv[0], f"--http_port={PORT}", "--enable_grpc=false"]

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer  # noqa: E402


class Fraud(Model):
    def __init__(self, name: str):
        super().__init__(name)
        self.ready = True

    async def predict(self, payload, headers=None, response_headers=None):
        if DELAY:
            await asyncio.sleep(DELAY)
        if isinstance(payload, InferRequest):
            n = payload.inputs[0].shape[0]
            out = InferOutput(name="output-0", shape=[n], datatype="FP32", data=[OUTPUT] * n)
            return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id)
        if isinstance(payload, (bytes, bytearray)):
            payload = json.loads(payload)
        return {"predictions": [OUTPUT for _ in payload["instances"]]}


if __name__ == "__main__":
    ModelServer(http_port=PORT, enable_grpc=False).start([Fraud("fraud")])
