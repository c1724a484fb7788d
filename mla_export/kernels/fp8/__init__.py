"""The BlockFp8MatMul kernels: the launch table (`plan`), the block-scaled FP8 GEMM and its split-K reduction
(`gemm`) and the torch entry point (`api`)."""
