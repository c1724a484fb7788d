"""DeepSeek's MoE routing rule as data: `RoutingRule`, what the `DeepseekMoE` node's attributes carry, read
from a config by DeepSeek's rules (the semantics are `moe.route`). Pure Python: the ONNX reader, the
kernels' plan and the plugin check read it without torch."""

from __future__ import annotations

from dataclasses import dataclass

from . import contract

SCORING_FUNCS = {"softmax": contract.MOE_SCORING_SOFTMAX, "sigmoid": contract.MOE_SCORING_SIGMOID}


@dataclass(frozen=True)
class RoutingRule:
    """One MoE layer's routing, as the `DeepseekMoE` node's attributes carry it.

    num_experts: routed experts E. top_k: experts per token. n_group / topk_group: expert groups and how
    many are kept (1 / 1: no group limit). scoring: contract.MOE_SCORING_*. group_score:
    contract.MOE_GROUP_SCORE_* (max, or sum of the top 2). use_bias: add e_score_correction_bias for
    selection. normalize: divide the weights by their sum. weight_scale: the factor on the weights.
    """

    num_experts: int
    top_k: int
    n_group: int = 1
    topk_group: int = 1
    scoring: int = contract.MOE_SCORING_SOFTMAX
    group_score: int = contract.MOE_GROUP_SCORE_MAX
    use_bias: bool = False
    normalize: bool = False
    weight_scale: float = 1.0

    def __post_init__(self):
        if not (self.num_experts >= 1 and 1 <= self.top_k <= self.num_experts):
            raise ValueError(f"routing: top_k={self.top_k} must be in [1, num_experts={self.num_experts}]")
        if self.n_group < 1 or self.num_experts % self.n_group:
            raise ValueError(f"routing: n_group={self.n_group} must divide num_experts={self.num_experts}")
        if not 1 <= self.topk_group <= self.n_group:
            raise ValueError(f"routing: topk_group={self.topk_group} must be in [1, n_group={self.n_group}]")
        if self.top_k > self.topk_group * self.group_size:
            raise ValueError(f"routing: top_k={self.top_k} exceeds the {self.topk_group * self.group_size} experts "
                             f"of the topk_group={self.topk_group} groups kept")
        if self.group_score == contract.MOE_GROUP_SCORE_TOP2_SUM and self.n_group > 1 and self.group_size < 2:
            raise ValueError("routing: a top-2 group score needs at least 2 experts per group")

    @property
    def group_size(self) -> int:
        return self.num_experts // self.n_group

    @classmethod
    def from_config(cls, config) -> "RoutingRule":
        """The rule of DeepSeek's code for this `MlaConfig`'s `topk_method` (see the module docstring); a
        config without topk_method/scoring_func gets its architecture's (`MlaConfig.routing_method`). Read by
        attribute, so this module imports no config: the kernels below the model read the rule too."""
        method, scoring = config.routing_method, config.routing_scoring
        top_k = config.num_experts_per_tok
        normalize = bool(config.norm_topk_prob) and top_k > 1
        grouped = method != "greedy"
        v3 = method == "noaux_tc"
        return cls(
            num_experts=config.n_routed_experts, top_k=top_k,
            n_group=(config.n_group or 1) if grouped else 1, topk_group=(config.topk_group or 1) if grouped else 1,
            scoring=SCORING_FUNCS[scoring],
            group_score=contract.MOE_GROUP_SCORE_TOP2_SUM if v3 else contract.MOE_GROUP_SCORE_MAX,
            use_bias=v3, normalize=normalize,
            weight_scale=float(config.routed_scaling_factor) if v3 or not normalize else 1.0)

    def attributes(self) -> dict:
        """The node's routing attributes (contract.MOE_ATTRIBUTES), by name."""
        return {"num_experts": self.num_experts, "top_k": self.top_k, "n_group": self.n_group,
                "topk_group": self.topk_group, "scoring_func": self.scoring, "group_score": self.group_score,
                "use_bias": int(self.use_bias), "normalize": int(self.normalize), "weight_scale": self.weight_scale}
