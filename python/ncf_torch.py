"""Rebuild an ncf model in PyTorch from ``ncf export --to torch --out DIR``.

    import ncf_torch                                  # python/ in this repository
    model = ncf_torch.load("DIR")                     # an nn.Module in eval mode, on the CPU
    model.score(["1", "7"], ["42", "3"])              # what `ncf score` writes for these pairs
    model.score_all(["1", "7"])                       # [2, n_items], columns in model.item_ids order
    model(user_rows, item_rows)                       # logits from table rows (LongTensors)

DIR holds ``model.safetensors`` (the state dict, PyTorch names and layouts), ``config.json``
(model kind, sizes, activation, cosine, score transform, tensor shapes), ``user_ids.json`` and
``item_ids.json`` (the raw ids, as strings, in table-row order). The tensors, with n users, m
items, f factors and MLP widths l:

    gmf_user.weight [n, f], gmf_item.weight [m, f]            GMF, NeuMF
    mf_user.weight [n, f], mf_item.weight [m, f]              MF
    user_bias.weight [n, 1], item_bias.weight [m, 1]          MF without cosine
    mlp_user.weight [n, l0/2], mlp_item.weight [m, l0/2]      MLP, NeuMF
    mlp.K.weight [l(K+1), lK], mlp.K.bias [l(K+1)]            MLP, NeuMF (ReLU after each layer)
    predict.weight [1, width], predict.bias [1]               GMF, MLP, NeuMF (NeuMF: GMF part first)

The model is ncf's (model/src/ncf.rs); u and i are a user's and an item's rows:

    MF     logit = <u, i> + b_u + b_i        (cosine: <u/|u|, i/|i|>, no biases)
    GMF    logit = predict(u ⊙ i)            (cosine: the factors L2-normalised first)
    MLP    logit = predict(tower([u ; i]))   tower: ReLU(Linear(.)) per layer
    NeuMF  logit = predict([u_gmf ⊙ i_gmf ; tower([u_mlp ; i_mlp])])

L2 normalisation is x / sqrt(sum(x²) + cosine_eps), as ncf computes it. With ``model.history`` > 0
(``history_folded`` in config.json) each user's row already has its training history mixed in, as
ncf scores it; interactions after training are not reflected.

Scores: ``forward`` returns the logit, which ``ncf recommend`` writes as its score.
``score``/``score_all`` apply config.json's ``score_transform`` (``sigmoid`` for BCE-trained
models: the probability ``ncf score`` writes; ``none`` otherwise: the raw score), unless
``logits=True``. Temperature (softmax loss) and tanh (CCL without cosine) belong to training
losses only and never enter a score.

The weights are read with the ``safetensors`` package when it is installed, and otherwise with the
small reader in this file (the format: an 8-byte little-endian header length, a JSON header, then
the raw little-endian tensor bytes). Needs only PyTorch.
"""

import json
import os
import struct
import sys

import torch
from torch import nn

__all__ = ["NCF", "load", "read_safetensors"]

#: The export layout this module reads (config.json's ``format_version``).
FORMAT_VERSION = 1

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path):
    """A safetensors file as a dict of CPU tensors, with or without the ``safetensors`` package."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        load_file = None
    if load_file is not None:
        return load_file(path)
    if sys.byteorder != "little":
        raise RuntimeError(f"{path}: the built-in safetensors reader needs a little-endian machine; install safetensors")
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: shorter than a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"{path}: header length {n} does not fit a {len(data)}-byte file")
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(meta["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has dtype {meta['dtype']}, which this reader does not know")
        start, end = meta["data_offsets"]
        shape = meta["shape"]
        if not 0 <= start <= end <= len(data) - base:
            raise ValueError(f"{path}: tensor {name!r} has bad or truncated data offsets")
        if start == end:
            tensors[name] = torch.empty(shape, dtype=dtype)
        else:
            # bytearray: a writable copy, so the tensor owns its memory.
            tensors[name] = torch.frombuffer(bytearray(data[base + start : base + end]), dtype=dtype).reshape(shape)
    return tensors


class NCF(nn.Module):
    """ncf's GMF, MLP, NeuMF or MF as a torch module (see the module docs), built from an
    export's config.json; its raw ids map to table rows through ``user_ids``/``item_ids``."""

    def __init__(self, config, user_ids, item_ids):
        super().__init__()
        self.config = config
        self.kind = config["model"]
        self.cosine = bool(config["cosine"])
        self.eps = float(config["cosine_eps"])
        self.transform = config["score_transform"]
        if self.transform not in ("sigmoid", "none"):
            raise ValueError(f"unknown score_transform {self.transform!r}")
        n_users, n_items, f, layers = config["n_users"], config["n_items"], config["factors"], config["layers"]
        if (len(user_ids), len(item_ids)) != (n_users, n_items):
            raise ValueError(f"{len(user_ids)} user and {len(item_ids)} item ids for a model of {n_users} users and {n_items} items")
        self.user_ids, self.item_ids = list(user_ids), list(item_ids)
        self._user_row = {u: r for r, u in enumerate(self.user_ids)}
        self._item_row = {i: r for r, i in enumerate(self.item_ids)}
        if self.kind in ("gmf", "neumf"):
            self.gmf_user = nn.Embedding(n_users, f)
            self.gmf_item = nn.Embedding(n_items, f)
        if self.kind == "mf":
            self.mf_user = nn.Embedding(n_users, f)
            self.mf_item = nn.Embedding(n_items, f)
            if not self.cosine:
                self.user_bias = nn.Embedding(n_users, 1)
                self.item_bias = nn.Embedding(n_items, 1)
        if self.kind in ("mlp", "neumf"):
            self.mlp_user = nn.Embedding(n_users, layers[0] // 2)
            self.mlp_item = nn.Embedding(n_items, layers[0] // 2)
            self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in zip(layers, layers[1:]))
        widths = {"gmf": f, "mlp": layers[-1] if layers else 0, "neumf": f + (layers[-1] if layers else 0)}
        if self.kind not in ("mf", *widths):
            raise ValueError(f"unknown model kind {self.kind!r}")
        if self.kind != "mf":
            self.predict = nn.Linear(widths[self.kind], 1)

    def _factors(self, x):
        """GMF/MF factors as the score compares them: L2-normalised with cosine."""
        if not self.cosine:
            return x
        return x / torch.sqrt((x * x).sum(-1, keepdim=True) + self.eps)

    def forward(self, users, items):
        """Logits of (users[k], items[k]) given as table rows (LongTensors of one shape)."""
        if self.kind == "mf":
            s = (self._factors(self.mf_user(users)) * self._factors(self.mf_item(items))).sum(-1)
            if not self.cosine:
                s = s + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1)
            return s
        parts = []
        if self.kind in ("gmf", "neumf"):
            parts.append(self._factors(self.gmf_user(users)) * self._factors(self.gmf_item(items)))
        if self.kind in ("mlp", "neumf"):
            h = torch.cat([self.mlp_user(users), self.mlp_item(items)], -1)
            for layer in self.mlp:
                h = torch.relu(layer(h))
            parts.append(h)
        return self.predict(torch.cat(parts, -1)).squeeze(-1)

    def _rows(self, ids, rows, what):
        """Table rows of raw ids (str, or anything whose str() is the id)."""
        ids = [ids] if isinstance(ids, (str, int)) else list(ids)
        missing = [i for i in ids if str(i) not in rows]
        if missing:
            raise KeyError(f"{len(missing)} of {len(ids)} {what} ids are not in the export (e.g. {missing[:5]!r})")
        device = next(self.parameters()).device
        return torch.tensor([rows[str(i)] for i in ids], dtype=torch.long, device=device)

    def user_rows(self, users):
        """Rows of raw user ids in the user tables."""
        return self._rows(users, self._user_row, "user")

    def item_rows(self, items):
        """Rows of raw item ids in the item tables."""
        return self._rows(items, self._item_row, "item")

    def _out(self, logits, raw):
        return logits if raw or self.transform == "none" else torch.sigmoid(logits)

    @torch.no_grad()
    def score(self, users, items, logits=False):
        """What ``ncf score`` writes for the pairs (users[k], items[k]) of raw ids: the
        probability for BCE-trained models, else the raw score; ``logits=True``: always raw."""
        return self._out(self(self.user_rows(users), self.item_rows(items)), logits)

    @torch.no_grad()
    def score_all(self, users, logits=False, pairs_per_chunk=1 << 20):
        """Every item's score for each raw user id: ``[len(users), n_items]``, columns in
        ``item_ids`` order, transformed as :meth:`score` does. ``logits=True`` gives the scores
        ``ncf recommend`` ranks by (before it masks seen items)."""
        rows = self.user_rows(users)
        n = len(self.item_ids)
        items = torch.arange(n, device=rows.device)
        per = max(1, pairs_per_chunk // max(n, 1))
        out = []
        for chunk in rows.split(per):
            u = chunk.repeat_interleave(n)
            i = items.repeat(len(chunk))
            out.append(self(u, i).reshape(len(chunk), n))
        return self._out(torch.cat(out) if out else torch.empty(0, n), logits)


def load(path, device="cpu"):
    """The model in ``ncf export --to torch`` directory ``path``, weights loaded, in eval mode."""
    config_path = os.path.join(path, "config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{config_path}: not found; pass the directory `ncf export --to torch --out DIR` wrote") from None
    if config.get("format") != "ncf-torch":
        raise ValueError(f"{config_path}: format {config.get('format')!r}, not an `ncf export --to torch` directory")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{config_path}: export format version {config.get('format_version')}; this ncf_torch reads version {FORMAT_VERSION}")
    ids = []
    for name in ("user_ids.json", "item_ids.json"):
        with open(os.path.join(path, name), encoding="utf-8") as f:
            ids.append(json.load(f))
    model = NCF(config, *ids)
    # strict: every tensor present with the shape config.json implies, and nothing else.
    model.load_state_dict(read_safetensors(os.path.join(path, "model.safetensors")))
    return model.to(device).eval()
