"""Running an export: the runners (`runners` for ONNX Runtime, `trt_runner` for an engine), the comparison
(`compare`), `validate`, the timing helpers (`measure`), `profile` with its report (`profile_report`).
Imports every layer below it; nothing imports it but `ui`."""
