"""The attribution graph: a plain data object with typed nodes, a sparse edge matrix and files.

Nodes are held as parallel arrays, sorted by ``stage`` (the topological order of the
replacement model) and, within a stage, by position and index::

    stage 0             embedding   one per position (token + position vector)
    stage 2l + 1        lorsa       active Lorsa heads of layer l, and its attention error nodes
    stage 2l + 2        transcoder  active transcoder features of layer l, and its MLP error nodes
    stage 2L + 1        logit       targets: logit tokens (demeaned), logit differences

``edges[t, s]`` is the direct linear effect of source ``s`` on target ``t`` with every attention
pattern and LayerNorm scale frozen (DESIGN.md section 5). Row ``t`` plus ``bias[t]`` sums to the
target's pre-activation (``value[t]``). Edges only run from a lower stage to a higher one.

``activation`` is what a source multiplies its write vector by: a head's ``z``, a feature's
activation, and 1 for embedding and error nodes (whose write vector is the vector itself).
``value`` is a target's pre-activation: equal to ``activation`` for active heads and features,
the demeaned logit (or logit difference) for logit nodes.

Node ids follow circuit-tracer/Neuronpedia's ``{layer}_{feature}_{pos}``, where ``layer`` counts
sublayers (``2l`` is block l's Lorsa, ``2l + 1`` its transcoder, ``2L + 1`` the logits)::

    E_{token}_{pos}        embedding            {2l}_{head}_{pos}      Lorsa head
    {2l}_-1_{pos}          attention error      {2l+1}_{feature}_{pos} transcoder feature
    {2l+1}_-1_{pos}        MLP error            {2L+1}_{token}_{pos}   logit
    {2L+1}_{a}-{b}_{pos}   logit difference a - b
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import networkx as nx
import numpy as np
import scipy.sparse as sp
import torch
from jaxtyping import Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor

KINDS = ("embedding", "lorsa", "transcoder", "error", "logit")
FORMAT_VERSION = 1


@dataclass
class QKPair:
    """One term of a QK score: query-side node x key-side node (``None`` is the bias side)."""

    query: str | None
    key: str | None
    value: float


@dataclass
class QKAttribution:
    """The pre-softmax score of one Lorsa QK head at (query, key), split into exact terms.

    ``score = sum of all query-node x key-node terms + query-node x key-bias terms +
    query-bias x key-node terms + bias x bias``; ``pairs`` holds the largest of these terms,
    ``query_marginals`` / ``key_marginals`` each side's node totals (over every partner,
    bias included), largest first. ``rest`` is ``score`` minus the listed pairs.
    """

    layer: int
    qk_head: int
    query: int
    key: int
    attention: float
    score: float
    pairs: list[QKPair]
    query_marginals: list[tuple[str | None, float]]
    key_marginals: list[tuple[str | None, float]]
    rest: float
    # Optional (``qk_attribution(contrast=True)``): ``score`` minus the mean score over every
    # key the query could read, split into query-node x key-*unit* terms (a unit's key vector
    # at this key minus its mean over keys; "bias" is the constant part).
    contrast: float | None = None
    contrast_pairs: list[QKPair] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["pairs"] = [[p.query, p.key, p.value] for p in self.pairs]
        d["contrast_pairs"] = [[p.query, p.key, p.value] for p in self.contrast_pairs]
        d["query_marginals"] = [list(m) for m in self.query_marginals]
        d["key_marginals"] = [list(m) for m in self.key_marginals]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> QKAttribution:
        d = dict(d)
        d["pairs"] = [QKPair(*p) for p in d["pairs"]]
        d["contrast_pairs"] = [QKPair(*p) for p in d.get("contrast_pairs", [])]
        d["query_marginals"] = [tuple(m) for m in d["query_marginals"]]
        d["key_marginals"] = [tuple(m) for m in d["key_marginals"]]
        return cls(**d)


@dataclass
class Graph:
    prompt: str
    tokens: list[int]
    token_strings: list[str]
    n_layers: int
    kind: Int[Tensor, " node"]  # index into KINDS
    stage: Int[Tensor, " node"]
    pos: Int[Tensor, " node"]
    index: Int[Tensor, " node"]  # head, feature or token id; -1 for errors and embeddings
    activation: Float[Tensor, " node"]
    value: Float[Tensor, " node"]  # targets' pre-activations (NaN where not a target)
    bias: Float[Tensor, " node"]  # targets' constant terms (0 where not a target)
    target_weight: Float[Tensor, " node"]  # where influence starts: logit probabilities
    edges: sp.csr_array  # (node, node) float32, [target, source]
    labels: list[str]
    ids: list[str]  # see ``node_id``
    qk: list[QKAttribution] = field(default_factory=list)
    influence: Float[Tensor, " node"] | None = None
    model: dict = field(default_factory=dict)  # names and weight hashes
    settings: dict = field(default_factory=dict)  # mode, targets, thresholds, timings, scores

    @property
    def n_nodes(self) -> int:
        return len(self.kind)

    @property
    def n_edges(self) -> int:
        return int(self.edges.nnz)

    @property
    def kinds(self) -> list[str]:
        return [KINDS[k] for k in self.kind.tolist()]

    def is_kind(self, *kinds: str) -> Tensor:
        codes = torch.tensor([KINDS.index(k) for k in kinds])
        return torch.isin(self.kind, codes)

    @property
    def layer(self) -> Int[Tensor, " node"]:
        """Block index: -1 for embeddings, n_layers for logits."""
        return torch.div(self.stage - 1, 2, rounding_mode="floor").clamp(max=self.n_layers)

    @property
    def id_to_index(self) -> dict[str, int]:
        return {node_id: i for i, node_id in enumerate(self.ids)}

    # ----------------------------------------------------------------- views
    def subgraph(self, keep: Tensor | list[int], edges: sp.csr_array | None = None) -> Graph:
        """The graph restricted to the nodes ``keep`` (indices or a boolean mask), in order;
        ``edges`` (optional) replaces the edges among them, e.g. with a pruned set."""
        keep = torch.as_tensor(keep)
        if keep.dtype == torch.bool:
            keep = keep.nonzero().squeeze(1)
        keep = keep.sort().values
        idx = keep.numpy()
        qk_keys = self._qk_keys(keep)
        return replace(
            self,
            kind=self.kind[keep],
            stage=self.stage[keep],
            pos=self.pos[keep],
            index=self.index[keep],
            activation=self.activation[keep],
            value=self.value[keep],
            bias=self.bias[keep],
            target_weight=self.target_weight[keep],
            edges=sp.csr_array(self.edges[idx][:, idx]) if edges is None else edges,
            labels=[self.labels[i] for i in idx],
            ids=[self.ids[i] for i in idx],
            qk=[a for a in self.qk if (a.layer, a.qk_head, a.query) in qk_keys],
            influence=None if self.influence is None else self.influence[keep],
        )

    def _qk_keys(self, nodes: Tensor) -> set[tuple[int, int, int]]:
        """(layer, QK head, query) of the Lorsa nodes among ``nodes``."""
        h = self.settings.get("lorsa_group_size")
        lorsa = nodes[self.kind[nodes] == KINDS.index("lorsa")]
        if not h or not len(lorsa):
            return set()
        layers, heads = self.layer[lorsa].tolist(), (self.index[lorsa] // h).tolist()
        return set(zip(layers, heads, self.pos[lorsa].tolist(), strict=True))

    def qk_for(self, node: int) -> list[QKAttribution]:
        """The QK attributions of the Lorsa head ``node`` (one per key it was traced to)."""
        h = self.settings.get("lorsa_group_size")
        if KINDS[int(self.kind[node])] != "lorsa" or not h:
            return []
        layer, q = int(self.layer[node]), int(self.pos[node])
        head = int(self.index[node]) // h
        return [a for a in self.qk if (a.layer, a.qk_head, a.query) == (layer, head, q)]

    def to_networkx(self) -> nx.DiGraph:
        """Nodes keyed by id with every attribute; edges source -> target with ``weight``."""
        g = nx.DiGraph(prompt=self.prompt, tokens=self.token_strings, **self.settings)
        for i, node_id in enumerate(self.ids):
            g.add_node(node_id, **self.node_attributes(i))
        coo = self.edges.tocoo()
        g.add_weighted_edges_from(
            (self.ids[s], self.ids[t], float(w))
            for t, s, w in zip(coo.row.tolist(), coo.col.tolist(), coo.data.tolist(), strict=True)
        )
        return g

    def node_attributes(self, i: int) -> dict:
        attrs = {
            "kind": KINDS[int(self.kind[i])],
            "layer": int(self.layer[i]),
            "stage": int(self.stage[i]),
            "pos": int(self.pos[i]),
            "index": int(self.index[i]),
            "activation": float(self.activation[i]),
            "value": float(self.value[i]),
            "bias": float(self.bias[i]),
            "target_weight": float(self.target_weight[i]),
            "label": self.labels[i],
        }
        if self.influence is not None:
            attrs["influence"] = float(self.influence[i])
        qk = self.qk_for(i)
        if qk:
            attrs["qk"] = [a.to_dict() for a in qk]
        return attrs

    # ----------------------------------------------------------------- files
    def _tensors(self) -> dict[str, Tensor]:
        csr = self.edges
        tensors = {
            "kind": self.kind,
            "stage": self.stage,
            "pos": self.pos,
            "index": self.index,
            "activation": self.activation,
            "value": self.value,
            "bias": self.bias,
            "target_weight": self.target_weight,
            "edges.indptr": torch.from_numpy(csr.indptr.astype(np.int64)),
            "edges.indices": torch.from_numpy(csr.indices.astype(np.int32)),
            "edges.data": torch.from_numpy(csr.data.astype(np.float32)),
            "tokens": torch.tensor(self.tokens, dtype=torch.int64),
        }
        if self.influence is not None:
            tensors["influence"] = self.influence
        return {k: v.contiguous() for k, v in tensors.items()}

    def _header(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "prompt": self.prompt,
            "token_strings": self.token_strings,
            "n_layers": self.n_layers,
            "labels": self.labels,
            "ids": self.ids,
            "qk": [a.to_dict() for a in self.qk],
            "model": self.model,
            "settings": self.settings,
        }

    def save(self, path: str | Path) -> None:
        """Write ``.pt`` (one torch file) or ``.safetensors`` (tensors, JSON header) atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        if path.suffix == ".safetensors":
            save_file(self._tensors(), str(tmp), metadata={"graph": json.dumps(self._header())})
        elif path.suffix == ".pt":
            torch.save({"header": self._header(), "tensors": self._tensors()}, tmp)
        else:
            raise ValueError(f"{path}: graph files end in .pt or .safetensors")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> Graph:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"graph file missing: {path}")
        try:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), "pt") as f:
                    header = json.loads(f.metadata()["graph"])
                tensors = load_file(str(path))
            else:
                blob = torch.load(path, weights_only=True)
                header, tensors = blob["header"], blob["tensors"]
            if header["format_version"] != FORMAT_VERSION:
                raise ValueError(f"format_version {header['format_version']}")
            n = len(tensors["kind"])
            edges = sp.csr_array(
                (
                    tensors["edges.data"].numpy(),
                    tensors["edges.indices"].numpy(),
                    tensors["edges.indptr"].numpy(),
                ),
                shape=(n, n),
            )
            return cls(
                prompt=header["prompt"],
                tokens=tensors["tokens"].tolist(),
                token_strings=header["token_strings"],
                n_layers=header["n_layers"],
                kind=tensors["kind"],
                stage=tensors["stage"],
                pos=tensors["pos"],
                index=tensors["index"],
                activation=tensors["activation"],
                value=tensors["value"],
                bias=tensors["bias"],
                target_weight=tensors["target_weight"],
                edges=edges,
                labels=header["labels"],
                ids=header["ids"],
                qk=[QKAttribution.from_dict(a) for a in header["qk"]],
                influence=tensors.get("influence"),
                model=header["model"],
                settings=header["settings"],
            )
        except Exception as exc:  # any corruption: one message naming the file
            raise ValueError(f"{path}: not a readable graph file ({exc})") from None

    def to_json(self, slug: str = "graph") -> dict:
        """The attribution-graph schema of circuit-tracer / Neuronpedia (``metadata``,
        ``qParams``, ``nodes``, ``links``); Lorsa nodes carry their QK attributions in ``qk``."""
        n_pos = len(self.tokens)
        nodes = []
        for i, node_id in enumerate(self.ids):
            kind = KINDS[int(self.kind[i])]
            stage, pos, index = int(self.stage[i]), int(self.pos[i]), int(self.index[i])
            layer = "E" if kind == "embedding" else str(stage if kind == "logit" else stage - 1)
            node = {
                "node_id": node_id,
                "jsNodeId": node_id,
                "feature": index,
                "layer": layer,
                "ctx_idx": pos,
                "reverse_ctx_idx": n_pos - 1 - pos,
                "run_idx": 0,
                "feature_type": _FEATURE_TYPE[kind] if kind != "error" else _error_type(stage),
                "clerp": self.labels[i],
                "activation": None if kind in ("embedding", "error") else float(self.activation[i]),
                "influence": None if self.influence is None else float(self.influence[i]),
                "is_target_logit": kind == "logit",
                "token_prob": float(self.target_weight[i]) if kind == "logit" else 0.0,
            }
            qk = self.qk_for(i)
            if qk:
                node["qk"] = [a.to_dict() for a in qk]
            nodes.append(node)
        coo = self.edges.tocoo()
        links = [
            {"source": self.ids[s], "target": self.ids[t], "weight": float(w)}
            for t, s, w in zip(coo.row.tolist(), coo.col.tolist(), coo.data.tolist(), strict=True)
        ]
        metadata = {
            "slug": slug,
            "scan": self.model.get("name", "unknown"),
            "transcoder_list": [],
            "prompt_tokens": self.token_strings,
            "prompt": self.prompt,
            "node_threshold": self.settings.get("node_threshold"),
            "schema_version": 1,
            "info": {"model": self.model, "settings": self.settings},
        }
        q_params = {
            "pinnedIds": [],
            "supernodes": [],
            "linkType": "both",
            "clickedId": "",
            "sg_pos": "",
        }
        return {"metadata": metadata, "qParams": q_params, "nodes": nodes, "links": links}


def node_id(kind: str, stage: int, pos: int, index: int, token: int | None = None) -> str:
    """The node's id in circuit-tracer/Neuronpedia form (module docstring)."""
    if kind == "embedding":
        return f"E_{token}_{pos}"
    if kind == "logit":
        return f"{stage}_{index}_{pos}"
    return f"{stage - 1}_{-1 if kind == 'error' else index}_{pos}"


_FEATURE_TYPE = {
    "embedding": "embedding",
    "lorsa": "lorsa",
    "transcoder": "cross layer transcoder",
    "logit": "logit",
}


def _error_type(stage: int) -> str:
    return "attention reconstruction error" if stage % 2 else "mlp reconstruction error"
