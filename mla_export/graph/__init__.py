"""The ONNX graph: the custom nodes' schemas and function bodies (`onnx_node`, `onnx_moe`), tracing one
layer (`tracing`), streaming the weights to disk (`weight_stream`), the whole export (`export`) and reading an
export back (`onnx_reader`). Imports `common`, `model` and `weights`."""
