"""Running a `--tp N` export on ONNX Runtime: one process per rank, in lockstep, the collectives over
torch.distributed (gloo), as a `Runner` that validate (and anything else taking a runner) drives.

    ParallelOnnxRunner(export).run(feeds)
        -> every rank process is sent the same feeds (each keeps its own copy of the caches)
        -> each runs its graph's segments on ONNX Runtime and its collectives with the ranks beside it
           (`graph/collective_parts.py`; the collectives are `model/parallel.py`'s ops, as in the eager model)
        -> rank 0's outputs, with every other rank's kept in `peer_outputs` for comparison

Why cut the graphs rather than run a collective inside ONNX Runtime: its collective ops (com.microsoft
AllReduce) exist only in NCCL builds for GPUs, and a Python custom op (onnxruntime-extensions) would add a
dependency and copy through Python lists. Cutting needs nothing new, runs every dtype ONNX Runtime runs and
costs one more session call per collective (measured in benchmarks/RESULTS.md).

A rank that dies stops the others: the parent polls the processes while it waits, terminates the rest and
raises one UserError; gloo's own timeout (`COLLECTIVE_TIMEOUT_S`) bounds a collective whose peer vanished.
"""

from __future__ import annotations

import os
import queue
import tempfile
import traceback
from datetime import timedelta
from pathlib import Path

import numpy as np

from ..common.errors import UserError

COLLECTIVE_TIMEOUT_S = 60  # gloo: a collective waiting longer for a peer fails instead of hanging
POLL_S = 0.2  # how often the parent checks that every rank process is alive while it waits
START_TIMEOUT_S = 600  # a rank's start (imports, session creation) past this is a failure


def _rank_main(rank: int, world_size: int, path: str, data_file: str | None, init_file: str, threads: int,
               tasks, results) -> None:
    """A rank process: load its segments, then run each feed sent until None arrives."""
    try:
        import onnx
        import onnxruntime as ort
        import torch
        import torch.distributed as dist

        from ..graph.collective_parts import CollectiveStep, rank_steps
        from ..graph.parts import part_directory, write_part
        from ..model import parallel  # noqa: F401  (registers the collectives)
        from .runners import from_numpy, run_session, to_numpy

        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        header = onnx.load(path, load_external_data=False)
        steps = rank_steps(header)
        elem = header.graph.output[0].type.tensor_type.elem_type  # hidden states or logits: the activations' T
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        sessions = {}
        data = Path(data_file) if data_file else None  # None: the weights are inside the .onnx (and the header)
        with part_directory(data) as directory:
            for step in steps:
                if not isinstance(step, CollectiveStep):
                    part_path = write_part(header, step, elem, data, Path(directory))
                    sessions[step.label] = ort.InferenceSession(str(part_path), options,
                                                                providers=["CPUExecutionProvider"])
        outputs = [v.name for v in header.graph.output]
        results.put(("ready", rank, None))
        while (feeds := tasks.get()) is not None:
            values = dict(feeds)
            for step in steps:
                if isinstance(step, CollectiveStep):
                    x = from_numpy(values[step.input])
                    y = (torch.ops.mla.all_reduce(x, step.world_size) if step.op_type == "AllReduce"
                         else torch.ops.mla.all_gather(x, step.world_size, step.axis))
                    values[step.output] = to_numpy(y)
                    continue
                session = sessions[step.label]
                names = [o.name for o in session.get_outputs()]
                got = run_session(session, names, {i.name: values[i.name] for i in session.get_inputs()})
                values.update(zip(names, got))
            results.put(("outputs", rank, {name: values[name] for name in outputs}))
    except Exception as exc:  # reported to the parent, which raises it as one message
        results.put(("error", rank, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                     if str(exc) else traceback.format_exc(limit=1)))


class ParallelOnnxRunner:
    """The ranks of a `ParallelExport` on ONNX Runtime's CPU provider, one process each (a context manager:
    the processes stop on exit)."""

    def __init__(self, export, start_timeout_s: float = START_TIMEOUT_S):
        import torch.multiprocessing as mp

        self.name = f"onnxruntime x{export.world_size} ranks"
        self.world_size = export.world_size
        self.peer_outputs: dict[int, dict[str, np.ndarray]] = {}
        context = mp.get_context("spawn")
        self._workdir = tempfile.TemporaryDirectory(prefix="mla-export-ranks-")
        init_file = os.path.join(self._workdir.name, "gloo-init")
        threads = max(1, (os.cpu_count() or 1) // export.world_size)
        self._results = context.Queue()
        self._tasks = [context.Queue() for _ in range(export.world_size)]
        self.processes = []
        for rank, model in enumerate(export.ranks):
            process = context.Process(
                target=_rank_main, daemon=True, name=f"mla-export rank {rank}",
                args=(rank, export.world_size, str(model.path), str(model.data_file) if model.data_file else None,
                      init_file, threads, self._tasks[rank], self._results))
            process.start()
            self.processes.append(process)
        try:
            self._collect("ready", start_timeout_s)
        except BaseException:
            self.close()
            raise

    def _collect(self, kind: str, timeout_s: float | None) -> dict[int, object]:
        """One message of `kind` from every rank; UserError as soon as one fails or dies."""
        import time

        got: dict[int, object] = {}
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while len(got) < self.world_size:
            try:
                what, rank, payload = self._results.get(timeout=POLL_S)
            except queue.Empty:
                dead = [(r, p.exitcode) for r, p in enumerate(self.processes) if p.exitcode is not None]
                if dead:
                    self.close()
                    rank, code = dead[0]
                    raise UserError(f"rank {rank} of {self.world_size} exited (code {code}) before it answered; "
                                    "the other ranks were stopped") from None
                if deadline is not None and time.monotonic() > deadline:
                    self.close()
                    raise UserError(f"the rank processes did not start within {timeout_s:.0f} s; the machine "
                                    "may be short of memory or CPU") from None
                continue
            if what == "error":
                dead = self._dead_peer(rank)
                self.close()
                if dead is not None:  # the error is a peer vanishing mid-collective: name the peer
                    raise UserError(f"rank {dead[0]} of {self.world_size} exited (code {dead[1]}) before it "
                                    "answered; the other ranks were stopped")
                raise UserError(f"rank {rank} of {self.world_size} failed: {payload[:90]}")
            got[rank] = payload
        return got

    def _dead_peer(self, failed: int, grace_s: float = 2.0) -> tuple[int, int] | None:
        """(rank, exit code) of a rank other than `failed` that has exited, waiting up to `grace_s` for one."""
        import time

        deadline = time.monotonic() + grace_s
        while True:
            dead = [(r, p.exitcode) for r, p in enumerate(self.processes) if r != failed and p.exitcode is not None]
            if dead or time.monotonic() > deadline:
                return dead[0] if dead else None
            time.sleep(0.05)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every rank runs `feeds`; rank 0's outputs (the others' in `peer_outputs`)."""
        if not self.processes:
            raise UserError("the rank processes were stopped")
        for tasks in self._tasks:
            tasks.put(feeds)
        outputs = self._collect("outputs", None)
        self.peer_outputs = {rank: outputs[rank] for rank in range(1, self.world_size)}
        return outputs[0]

    def close(self) -> None:
        """Stop every rank process (asked first, then terminated) and remove the rendezvous file."""
        for process, tasks in zip(self.processes, self._tasks):
            if process.is_alive():
                try:
                    tasks.put(None)
                except (OSError, ValueError):
                    pass
        for process in self.processes:
            process.join(timeout=2)
            if process.is_alive():
                process.terminate()
                process.join(timeout=2)
        self.processes = []
        self._workdir.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
