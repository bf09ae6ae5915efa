"""Per-rank memory of the model state and communication buffers (bytes, float32 everywhere).

    tables              sum over the tables this rank owns of rows * d * 4
    embedding optimizer rowwise_adagrad: rows * 4 (one accumulator per row); sgd: 0
    tower modules       P_tm * 4 * (1 weight + 1 gradient + k),  P_tm: parameters of the Tower
                        Modules this rank holds (flat: all of them, SPTT: its host's)
    dense head          P_head * 4 * (2 + k)
                        k = 2 floats per parameter for Adam (two moments), 1 for Adagrad
    comm buffers        the largest single collective this rank joins: an all-to-all's input plus
                        output tensor (own part included), or an all-reduce's concatenated payload

Not counted: activations, the sparse embedding gradients, and the allocator's slack.
"""

from __future__ import annotations

from dataclasses import dataclass

from dmt.cost.traffic import FLOAT_BYTES, ModeTraffic

DENSE_OPTIMIZER_FLOATS = {"adam": 2, "adagrad": 1}
EMBEDDING_OPTIMIZER_FLOATS_PER_ROW = {"rowwise_adagrad": 1, "sgd": 0}


@dataclass(frozen=True)
class RankMemory:
    rank: int
    table_bytes: float
    embedding_optimizer_bytes: float
    tower_module_bytes: float
    dense_head_bytes: float
    comm_buffer_bytes: float

    @property
    def total_bytes(self) -> float:
        return (
            self.table_bytes
            + self.embedding_optimizer_bytes
            + self.tower_module_bytes
            + self.dense_head_bytes
            + self.comm_buffer_bytes
        )

    def as_dict(self) -> dict:
        return {
            "table_bytes": self.table_bytes,
            "embedding_optimizer_bytes": self.embedding_optimizer_bytes,
            "tower_module_bytes": self.tower_module_bytes,
            "dense_head_bytes": self.dense_head_bytes,
            "comm_buffer_bytes": self.comm_buffer_bytes,
            "total_bytes": self.total_bytes,
        }


def rank_memory(
    traffic: ModeTraffic, embedding_optimizer: str = "rowwise_adagrad", dense_optimizer: str = "adam"
) -> list[RankMemory]:
    plan, w = traffic.plan, traffic.workload
    layout, shape = plan.layout, w.shape
    rows = {f.table: f.num_embeddings for f in w.features}
    per_row = EMBEDDING_OPTIMIZER_FLOATS_PER_ROW[embedding_optimizer]
    dense_floats = 2 + DENSE_OPTIMIZER_FLOATS[dense_optimizer]
    out = []
    for rt in traffic.ranks:
        r = rt.rank
        owned = sum(rows[t] for t, o in plan.table_owner.items() if o == r)
        held = range(len(shape.towers)) if plan.mode == "flat" else plan.towers_on(layout.host_of(r))
        tm_params = sum(shape.tower_params[t] for t in held)
        buffers = [p.send_buffer_bytes + p.recv_buffer_bytes for p in rt.phases]
        buffers += [a.bytes for a in rt.allreduces]
        out.append(
            RankMemory(
                rank=r,
                table_bytes=float(owned * w.dim * FLOAT_BYTES),
                embedding_optimizer_bytes=float(owned * per_row * FLOAT_BYTES),
                tower_module_bytes=float(tm_params * FLOAT_BYTES * dense_floats),
                dense_head_bytes=float(shape.head_params * FLOAT_BYTES * dense_floats),
                comm_buffer_bytes=float(max(buffers, default=0.0)),
            )
        )
    return out


def memory_summary(ranks: list[RankMemory]) -> dict:
    """Mean over ranks of every part, and the largest rank's total."""
    n = len(ranks)
    keys = ranks[0].as_dict().keys()
    mean = {k: sum(r.as_dict()[k] for r in ranks) / n for k in keys}
    return {"mean": mean, "max_total_bytes": max(r.total_bytes for r in ranks)}
