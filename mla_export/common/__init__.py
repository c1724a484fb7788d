"""What every stage shares, importing no other part of mla-export: user errors (`errors`), files written
whole or not at all (`fileio`), terminal output (`console`, `progress`), the ONNX contract's names and
versions (`contract`) with the `DeepseekMoE` routing attributes as data (`moe_rule`), the version."""
