"""The DeepseekMoE kernels: the launch table (`plan`), router and top-k (`route`), the alignment of tokens
to experts (`align`), the grouped expert GEMMs and combine (`experts`) and the torch entry point (`api`)."""
