"""A rank's graph cut at its collectives, so that ONNX Runtime runs the pieces between them and
torch.distributed runs the collectives (`run/parallel.py`).

Each node gets a stage: the number of collectives on the longest path from the graph's inputs to it. The
nodes of one stage form one segment (a `parts.Part`, written and run like a per-layer part); a collective
whose input is computed in stage s runs after segment s and before segment s + 1. A segment's inputs are
the values it reads that earlier segments, collectives or the graph's inputs give it; its outputs are the
values it computes that anything outside it reads (later segments, collectives, the graph's outputs).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..common import contract
from .parts import Part


@dataclass(frozen=True)
class CollectiveStep:
    """One collective of the graph: `op_type` (AllReduce / AllGather) from `input` to `output`."""

    op_type: str
    input: str
    output: str
    world_size: int
    axis: int = -1


def _is_collective(node) -> bool:
    return node.domain == contract.OP_DOMAIN and node.op_type in (contract.ALL_REDUCE_OP_TYPE,
                                                                 contract.ALL_GATHER_OP_TYPE)


def _step(node) -> CollectiveStep:
    attrs = {a.name: a.i for a in node.attribute}
    return CollectiveStep(node.op_type, node.input[0], node.output[0], attrs["world_size"], attrs.get("axis", -1))


def rank_steps(header) -> list[Part | CollectiveStep]:
    """The graph of `header` (a ModelProto; weights need not be loaded) as segments and collectives in the
    order they run. A graph without collectives is one segment."""
    graph = header.graph
    stage = {v.name: 0 for v in graph.input} | {t.name: 0 for t in graph.initializer}
    node_stage = []
    for node in graph.node:
        s = max((stage.get(name, 0) for name in node.input if name), default=0)
        node_stage.append(s)
        for name in node.output:
            stage[name] = s + 1 if _is_collective(node) else s
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output}
    graph_inputs = {v.name for v in graph.input}
    initializers = {t.name for t in graph.initializer}
    graph_outputs = {v.name for v in graph.output}
    readers: dict[str, set[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            readers.setdefault(name, set()).add(i)

    steps: list[Part | CollectiveStep] = []
    last = max((s for node, s in zip(graph.node, node_stage) if not _is_collective(node)), default=0)
    for s in range(last + 1):
        members = {i for i, node in enumerate(graph.node) if node_stage[i] == s and not _is_collective(node)}
        if members:
            read = {name for i in members for name in graph.node[i].input if name}
            made = {name for i in members for name in graph.node[i].output if name}
            inputs = sorted(n for n in read - made if n not in initializers and n not in graph_inputs)
            used_graph_inputs = sorted(n for n in read if n in graph_inputs)
            outputs = sorted(n for n in made if n in graph_outputs or readers.get(n, set()) - members)
            steps.append(Part(f"segment {s}", tuple(inputs), tuple(outputs), graph_inputs=tuple(used_graph_inputs)))
        steps.extend(_step(node) for i, node in enumerate(graph.node)
                     if _is_collective(node) and stage.get(node.input[0], 0) == s)
    missing = [name for name in graph_outputs if name not in producer and name not in graph_inputs]
    if missing:
        raise RuntimeError(f"graph outputs without a producer: {missing[:3]}")
    return steps
