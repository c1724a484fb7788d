"""The C++ mirror of the contract (plugins/mlaAttentionPlugin/mlaContract.h) says what contract.py says."""

import re
from pathlib import Path

from mla_export import contract

HEADER = Path(__file__).resolve().parents[1] / "plugins" / "mlaAttentionPlugin" / "mlaContract.h"


def constants() -> dict[str, str]:
    text = HEADER.read_text()
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
