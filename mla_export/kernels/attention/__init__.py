"""The MlaAttention kernels: the launch table (`plan`), RoPE + cache append (`rope_append`), split-KV
attention (`split_kv`), the combine of the splits (`combine`) and the torch entry point (`api`)."""
