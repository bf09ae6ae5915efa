"""Per-rank memory of the model state and communication buffers (bytes, float32 everywhere).

    tables              sum over the tables this rank owns of rows * d_t * 4, and over the shards
                        it holds of their rows * columns * 4
    embedding optimizer rowwise_adagrad: rows * 4 (one accumulator per row, a shard: its rows;
                        column shards of the same rows each keep them); sgd: 0
    tower modules       P_tm * 4 * (1 weight + 1 gradient + k),  P_tm: parameters of the Tower
                        Modules this rank holds (flat: all of them, SPTT: its host's)
    dense head          P_head * 4 * (2 + k)
                        k = 2 floats per parameter for Adam (two moments), 1 for Adagrad
    comm buffers        the largest single collective this rank joins: an all-to-all's input plus
                        output tensor (own part included), or an all-reduce's concatenated payload
    activations         the forward's pooled exchanges, input and output tensors, which the graph
                        keeps until the backward
    runtime             the process itself (given: torch, dmt, the process groups; RUNTIME_BYTES)

Not counted: the dense layers' activations, the sparse embedding gradients, the data source and
the allocator's slack.
"""

from __future__ import annotations

from dataclasses import dataclass

from dmt.cost.traffic import FLOAT_BYTES, ModeTraffic

DENSE_OPTIMIZER_FLOATS = {"adam": 2, "adagrad": 1}
EMBEDDING_OPTIMIZER_FLOATS_PER_ROW = {"rowwise_adagrad": 1, "sgd": 0}
# One rank process beside its model state. CPU + gloo: torch, dmt and the process groups take
# 0.36-0.38 GiB (benchmarks/emulated calibration, runtime_rss_bytes), and a `dmt train` rank whose
# model state is negligible peaks at 0.40 GiB once built (benchmarks/scale, startup_peak_rss_bytes):
# the training loop's imports, a data source, the planner. CUDA: the context and NCCL's buffers on
# the device, an assumption (not measured here): set dist.memory_gb with room for it.
RUNTIME_BYTES = {"cpu": 410 * 2**20, "cuda": 1024 * 2**20}


@dataclass(frozen=True)
class RankMemory:
    rank: int
    table_bytes: float
    embedding_optimizer_bytes: float
    tower_module_bytes: float
    dense_head_bytes: float
    comm_buffer_bytes: float
    activation_bytes: float = 0.0
    runtime_bytes: float = 0.0

    @property
    def total_bytes(self) -> float:
        return (
            self.table_bytes
            + self.embedding_optimizer_bytes
            + self.tower_module_bytes
            + self.dense_head_bytes
            + self.comm_buffer_bytes
            + self.activation_bytes
            + self.runtime_bytes
        )

    def as_dict(self) -> dict:
        return {
            "table_bytes": self.table_bytes,
            "embedding_optimizer_bytes": self.embedding_optimizer_bytes,
            "tower_module_bytes": self.tower_module_bytes,
            "dense_head_bytes": self.dense_head_bytes,
            "comm_buffer_bytes": self.comm_buffer_bytes,
            "activation_bytes": self.activation_bytes,
            "runtime_bytes": self.runtime_bytes,
            "total_bytes": self.total_bytes,
        }

    def describe(self) -> str:
        """What the rank would hold, in MB (1e6 bytes), largest part first."""
        parts = {k.removesuffix("_bytes").replace("_", " "): v for k, v in self.as_dict().items() if k != "total_bytes"}
        return ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) if v > 0)


def rank_memory(
    traffic: ModeTraffic,
    embedding_optimizer: str = "rowwise_adagrad",
    dense_optimizer: str = "adam",
    runtime_bytes: float = 0.0,
) -> list[RankMemory]:
    plan, w = traffic.plan, traffic.workload
    layout, shape = plan.layout, w.shape
    tables = {f.table: (f.num_embeddings, w.width(f)) for f in w.features}
    per_row = EMBEDDING_OPTIMIZER_FLOATS_PER_ROW[embedding_optimizer]
    dense_floats = 2 + DENSE_OPTIMIZER_FLOATS[dense_optimizer]
    out = []
    for rt in traffic.ranks:
        r = rt.rank
        blocks = [tables[t] for t, o in plan.table_owner.items() if o == r]
        blocks += [(s.num_rows, s.width) for s in plan.shards_on(r).values()]
        held = range(len(shape.towers)) if plan.mode == "flat" else plan.towers_on(layout.host_of(r))
        tm_params = sum(shape.tower_params[t] for t in held)
        buffers = [p.send_buffer_bytes + p.recv_buffer_bytes for p in rt.phases]
        buffers += [a.bytes for a in rt.allreduces]
        kept = [p.send_buffer_bytes + p.recv_buffer_bytes for p in rt.phases if _pooled_forward(p.phase, p.backward)]
        out.append(
            RankMemory(
                rank=r,
                table_bytes=float(sum(n * d for n, d in blocks) * FLOAT_BYTES),
                embedding_optimizer_bytes=float(sum(n for n, _ in blocks) * per_row * FLOAT_BYTES),
                tower_module_bytes=float(tm_params * FLOAT_BYTES * dense_floats),
                dense_head_bytes=float(shape.head_params * FLOAT_BYTES * dense_floats),
                comm_buffer_bytes=float(max(buffers, default=0.0)),
                activation_bytes=float(sum(kept)),
                runtime_bytes=float(runtime_bytes),
            )
        )
    return out


def _pooled_forward(phase: str, backward: bool) -> bool:
    """A forward exchange of pooled rows ("global.pooled", "intra.intra_pooled", "peer.peer_pooled")."""
    return not backward and phase.rsplit(".", 1)[-1].endswith("pooled")


def memory_summary(ranks: list[RankMemory]) -> dict:
    """Mean over ranks of every part, and the largest rank's total."""
    n = len(ranks)
    keys = ranks[0].as_dict().keys()
    mean = {k: sum(r.as_dict()[k] for r in ranks) / n for k in keys}
    return {"mean": mean, "max_total_bytes": max(r.total_bytes for r in ranks)}
