"""The C++ mirrors of the contracts (plugins/mlaAttentionPlugin/mlaContract.h,
plugins/deepseekMoePlugin/moeContract.h, plugins/blockFp8MatMulPlugin/fp8Contract.h) say what contract.py says."""

import re
from pathlib import Path

from mla_export.common import contract

HEADER = Path(__file__).resolve().parents[1] / "plugins" / "mlaAttentionPlugin" / "mlaContract.h"


def constants(header: Path = HEADER) -> dict[str, str]:
    text = header.read_text()
    values = dict(re.findall(r'constexpr char const\* (k\w+) = "([^"]*)";', text))
    values.update(re.findall(r"constexpr int32_t (k\w+) = (\d+);", text))
    for name, body in re.findall(r"constexpr char const\* (k\w+)\[\w+\]\s*=\s*\{([^}]*)\};", text):
        values[name] = tuple(re.findall(r'"([^"]*)"', body))
    return values


def test_header_mirrors_contract():
    c = constants()
    assert int(c["kContractVersion"]) == contract.CONTRACT_VERSION
    assert (c["kOpType"], c["kOpDomain"]) == (contract.OP_TYPE, contract.OP_DOMAIN)
    assert (c["kPluginName"], c["kPluginNamespace"], c["kPluginVersion"]) == (
        contract.PLUGIN_NAME, contract.PLUGIN_NAMESPACE, contract.PLUGIN_VERSION)
    assert c["kInputNames"] == contract.OP_INPUTS and c["kOutputNames"] == contract.OP_OUTPUTS
    attributes = {c[k] for k in ("kAttrNumHeads", "kAttrKvLoraRank", "kAttrQkRopeHeadDim", "kAttrSoftmaxScale")}
    assert attributes == set(contract.OP_ATTRIBUTES)
    assert c["kCacheSeqlens"] == contract.CACHE_SEQLENS
    assert (c["kHiddenStatesIn"], c["kHiddenStatesOut"]) == (contract.HIDDEN_STATES_IN, contract.HIDDEN_STATES_OUT)
    assert (c["kInputIds"], c["kLogits"]) == (contract.INPUT_IDS, contract.LOGITS)
    assert c["kPastCachePrefix"] + "3" == contract.past_cache_name(3)
    assert c["kPresentCachePrefix"] + "3" == contract.present_cache_name(3)
    # Contract version 2: the appended inputs and outputs, attributes and the FP8 cache format.
    assert int(c["kCacheContractVersion"]) == contract.CACHE_CONTRACT_VERSION
    assert c["kCacheInputNames"] == contract.OP_FP8_CACHE_INPUTS
    assert c["kCacheOutputNames"] == contract.OP_FP8_CACHE_OUTPUTS
    enum = dict(re.findall(r"(k\w+) = (\d+)\b", HEADER.read_text()))
    assert [int(enum[k]) for k in ("kBlockTable", "kPastScale", "kPastRope")] == [
        contract.OP_FP8_CACHE_INPUTS.index(n) for n in ("block_table", "past_scale", "past_rope")]
    assert (int(enum["kNumPagedInputs"]), int(enum["kNumFp8CacheInputs"])) == (
        len(contract.OP_PAGED_INPUTS), len(contract.OP_FP8_CACHE_INPUTS))
    assert [int(enum[k]) for k in ("kPresentScale", "kPresentRope", "kNumFp8CacheOutputs")] == [
        contract.OP_FP8_CACHE_OUTPUTS.index("present_scale"), contract.OP_FP8_CACHE_OUTPUTS.index("present_rope"),
        len(contract.OP_FP8_CACHE_OUTPUTS)]
    assert {c["kAttrPageSize"], c["kAttrKvCacheDtype"]} == set(contract.OP_CACHE_ATTRIBUTES)
    assert (int(c["kKvCacheDtypeModel"]), int(c["kKvCacheDtypeFp8"])) == (contract.KV_CACHE_DTYPE_MODEL,
                                                                         contract.KV_CACHE_DTYPE_FP8)
    assert (int(c["kMaxPageSize"]), int(c["kFp8CacheTile"])) == (contract.MAX_PAGE_SIZE, contract.FP8_CACHE_TILE)
    assert (c["kMetaCache"], c["kMetaKvCacheDtype"]) == (contract.META_CACHE, contract.META_KV_CACHE_DTYPE)


MOE_HEADER = Path(__file__).resolve().parents[1] / "plugins" / "deepseekMoePlugin" / "moeContract.h"


def test_moe_header_mirrors_contract():
    c = constants(MOE_HEADER)
    assert int(c["kContractVersion"]) == contract.MOE_CONTRACT_VERSION
    assert (c["kOpType"], c["kOpDomain"]) == (contract.MOE_OP_TYPE, contract.OP_DOMAIN)
    assert (c["kPluginName"], c["kPluginNamespace"], c["kPluginVersion"]) == (
        contract.MOE_PLUGIN_NAME, contract.PLUGIN_NAMESPACE, contract.PLUGIN_VERSION)
    # The names of a 7-input node (FP8 experts); a 5-input node has the first kNumInputsTExperts of them.
    assert c["kInputNames"] == contract.MOE_FP8_INPUTS and c["kOutputNames"] == contract.MOE_OUTPUTS
    enum = dict(re.findall(r"(k\w+) = (\d+)\b", MOE_HEADER.read_text()))
    assert c["kInputNames"][:int(enum["kNumInputsTExperts"])] == contract.MOE_INPUTS
    assert [int(enum[k]) for k in ("kGateUpScale", "kDownScale", "kNumInputs")] == [
        contract.MOE_FP8_INPUTS.index("gate_up_scale"), contract.MOE_FP8_INPUTS.index("down_scale"),
        len(contract.MOE_FP8_INPUTS)]
    assert int(c["kFp8Block"]) == contract.FP8_BLOCK
    attributes = {v for k, v in c.items() if k.startswith("kAttr")}
    assert attributes == set(contract.MOE_ATTRIBUTES) | set(contract.MOE_SLICE_ATTRIBUTES)
    assert (int(c["kScoringSoftmax"]), int(c["kScoringSigmoid"])) == (contract.MOE_SCORING_SOFTMAX,
                                                                       contract.MOE_SCORING_SIGMOID)
    assert (int(c["kGroupScoreMax"]), int(c["kGroupScoreTop2Sum"])) == (contract.MOE_GROUP_SCORE_MAX,
                                                                         contract.MOE_GROUP_SCORE_TOP2_SUM)


FP8_HEADER = Path(__file__).resolve().parents[1] / "plugins" / "blockFp8MatMulPlugin" / "fp8Contract.h"


def test_fp8_header_mirrors_contract():
    c = constants(FP8_HEADER)
    assert int(c["kContractVersion"]) == contract.FP8_CONTRACT_VERSION
    assert (c["kOpType"], c["kOpDomain"]) == (contract.FP8_OP_TYPE, contract.OP_DOMAIN)
    assert (c["kPluginName"], c["kPluginNamespace"], c["kPluginVersion"]) == (
        contract.FP8_PLUGIN_NAME, contract.PLUGIN_NAMESPACE, contract.PLUGIN_VERSION)
    assert c["kInputNames"] == contract.FP8_INPUTS and c["kOutputNames"] == contract.FP8_OUTPUTS
    enum = dict(re.findall(r"(k\w+) = (\d+)\b", FP8_HEADER.read_text()))
    assert [int(enum[k]) for k in ("kInput", "kWeight", "kWeightScaleInv")] == list(range(len(contract.FP8_INPUTS)))
    assert {v for k, v in c.items() if k.startswith("kAttr")} == set(contract.FP8_ATTRIBUTES)
    assert int(c["kBlock"]) == contract.FP8_BLOCK
