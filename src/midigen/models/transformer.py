"""Decoder-only music transformer; the variants (vanilla, xl, xl_knn) differ only in memory.

Read top to bottom: the config, attention (local, then kNN-augmented; its arithmetic is in
kernels.py, the position biases in positions.py), the block, the memories the model composes
(Transformer-XL's, the kNN memory; what they keep is in memory.py), the model. Every
batch row streams whole songs back to back and `doc` (B, T) says which song each token belongs
to: attention never crosses from one song to another, neither inside a segment nor into
memory, so a new song in a row starts from a clean slate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from midigen.data.batching import IGNORE
from midigen.errors import MidigenError
from midigen.models.kernels import MASKED, BiasedAttention, knn_attention, local_logsumexp
from midigen.models.memory import (
    NO_DOC,
    KNNMemory,
    MemorySlot,
    MemoryState,
    PastKeyValues,
    hide_older,
)
from midigen.models.positions import ALiBi, RelativeBias
from midigen.params import default

POSITIONS = ("relative", "alibi", "absolute")


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross entropy over real targets, their count), so ranks can be averaged exactly.
    Rows of fields (logits (B, T, F, V), targets (B, T, F)): a row's loss is the sum of its
    fields', and rows are counted."""
    loss = F.cross_entropy(
        logits.float().flatten(0, -2), targets.flatten(), ignore_index=IGNORE, reduction="sum"
    )
    rows = targets if logits.dim() == 3 else targets[..., 0]
    return loss, (rows != IGNORE).sum()


def embed_rows(tok_emb: nn.Embedding, field_emb: nn.ModuleList, tokens: Tensor) -> Tensor:
    """Token embeddings (B, T) -> (B, T, d), or of rows of fields (B, T, F): the sum of each
    field's embedding, as MusicBox embeds pitch, onset step and duration."""
    if tokens.dim() == 2:
        return tok_emb(tokens)
    x = tok_emb(tokens[..., 0])
    for i, embedding in enumerate(field_emb, start=1):
        x = x + embedding(tokens[..., i])
    return x


def row_logits(head: nn.Linear, field_heads: nn.ModuleList, x: Tensor) -> Tensor:
    """Next-token logits (B, T, V), or with several fields one head each, stacked and padded to
    the widest field with MASKED (B, T, F, V): each field predicted on its own from x."""
    first = head(x)
    if not len(field_heads):
        return first
    fields = [first, *(field_head(x) for field_head in field_heads)]
    width = max(f.shape[-1] for f in fields)
    return torch.stack([F.pad(f, (0, width - f.shape[-1]), value=MASKED) for f in fields], -2)


@dataclass
class ModelConfig:
    vocab_size: int = 164  # of the first field, with rows of several (`extra_fields`)
    extra_fields: tuple[int, ...] = ()  # rows of fields (codebook): the other fields' sizes
    n_layer: int = default("model", "n_layer")
    n_head: int = default("model", "n_head")
    d_model: int = default("model", "d_model")
    d_ff: int = default("model", "d_ff")
    dropout: float = default("model", "dropout")  # on embeddings and residual branches
    attn_dropout: float = 0.0  # on attention weights; off: on CPU it costs as much as attention
    segment_len: int = default("model", "segment_len")  # local attention window, tokens
    position: str = default("model", "position")  # relative | alibi | absolute
    max_distance: int = default("model", "max_distance")  # relative distances clamp here
    bar_pos_size: int = default("model", "bar_pos_size")  # bar-position rows (larger clamp)
    steps_per_beat: int = 4  # beat in bar = bar_pos // steps_per_beat
    beat_size: int = 32  # beat embedding rows (larger beats clamp)
    memory: str = "none"  # none | xl | xl_knn
    xl_mem_len: int = default("model", "xl_mem_len")
    knn_layer: int = default("model", "knn_layer")  # python index; -2: one layer above it
    knn_k: int = default("model", "knn_k")
    knn_max_memories: int = default("model", "knn_max_memories")  # per row; oldest dropped
    previous_tokens: int = default("model", "previous_tokens")  # token shift: n tokens back

    def __post_init__(self) -> None:
        self.extra_fields = tuple(self.extra_fields)  # a list when read back from model.pt

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def validate(self) -> None:
        """Stop with one clear message on the first impossible setting."""
        for name in (
            "vocab_size",
            "n_layer",
            "n_head",
            "d_model",
            "d_ff",
            "segment_len",
            "max_distance",
            "bar_pos_size",
            "steps_per_beat",
            "beat_size",
            "xl_mem_len",
            "knn_k",
            "knn_max_memories",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise MidigenError(f"model.{name} must be a positive integer (got {value!r})")
        lags = self.previous_tokens
        if isinstance(lags, bool) or not isinstance(lags, int) or lags < 0:
            raise MidigenError(
                f"model.previous_tokens must be an integer >= 0 (got {self.previous_tokens!r})"
            )
        if any(isinstance(n, bool) or not isinstance(n, int) or n <= 0 for n in self.extra_fields):
            raise MidigenError(
                f"model extra_fields must be positive sizes (got {self.extra_fields})"
            )
        if lags and self.extra_fields:
            raise MidigenError("model.previous_tokens needs one token per row (not codebook)")
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise MidigenError(f"model.{name} must be a number in [0, 1) (got {value!r})")
        if self.position not in POSITIONS:
            raise MidigenError(
                f"model.position must be one of {', '.join(POSITIONS)} (got {self.position!r})"
            )
        if self.memory not in MEMORY_KINDS:
            raise MidigenError(
                f"model.memory must be one of {', '.join(MEMORY_KINDS)} (got {self.memory!r})"
            )
        if self.d_model % self.n_head:
            raise MidigenError(
                f"model.n_head ({self.n_head}) must divide model.d_model ({self.d_model})"
            )
        for kind in MEMORY_KINDS[self.memory]:
            kind.validate(self)


class Dropout(nn.Dropout):
    """nn.Dropout without its call into torch outside training: generation passes one token
    through nine of them per step, which cost a thirtieth of the step (bench/generate.py)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) if self.training else x


# ---- attention ---------------------------------------------------------------------------------


@dataclass
class Context:
    """What every attention layer of one forward shares."""

    mask: Tensor | None  # additive (B|1, H|1, T, S) float mask; None = plain causal
    bias: Tensor | None  # (H, T, S) position bias, already in `mask`, apart for its gradient
    doc: Tensor  # (B, T) song ids of the queries
    slots: dict[str, MemorySlot] = field(default_factory=dict)  # MemoryState.slots


class Attention(nn.Module):
    """Causal self-attention over [XL memory; segment]: scaled_dot_product_attention, except
    when training on the CPU with a learned bias, where BiasedAttention is faster."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.attn_dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.resid_drop = Dropout(config.dropout)

    def forward(
        self, x: Tensor, ctx: Context, memory: PastKeyValues | None = None, layer: int = 0
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """(B, T, D) -> (B, T, D), plus the detached keys/values it attended to, [memory of this
        layer; this segment's], for the memories (handing them on saves copying them again)."""
        batch, length, _ = x.shape  # plain views, not einops: generation calls this per token
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_head, -1).permute(2, 0, 3, 1, 4)
        q, k = self.similarity(q, k)
        keys, values = (k, v) if memory is None else memory.append(layer, k, v)
        # handed on to the memories, which keep values, not the graph that made them
        present = (keys.detach(), values.detach()) if keys.requires_grad else (keys, values)
        mask = ctx.mask
        if mask is not None and mask.dtype != q.dtype:  # autocast
            mask = mask.to(q.dtype)
        dropout = self.dropout if self.training else 0.0
        bias = ctx.bias
        if bias is not None and bias.requires_grad and not q.is_cuda and not dropout:
            y = BiasedAttention.apply(q, k, v, *present, mask.detach(), bias.to(q.dtype))
        else:
            y = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask, dropout_p=dropout, is_causal=mask is None
            )
        y = self.mix(q, y, keys, mask, ctx)
        y = y.transpose(1, 2).reshape(batch, length, -1)
        return self.resid_drop(self.proj(y)), present

    def similarity(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Queries and keys as attention compares them: plain dot products here."""
        return q, k

    def mix(
        self, q: Tensor, local: Tensor, keys: Tensor, mask: Tensor | None, ctx: Context
    ) -> Tensor:
        """Where a memory joins in; plain attention has none. `local` is the attention over
        `keys` (B, H, S, Dh) under `mask` (None: causal)."""
        return local


class KNNAttention(Attention):
    """Local attention plus a top-k look-up in the kNN memory, in one softmax.

    As in Memorizing Transformers, the layer compares queries and keys by cosine similarity
    times a learned per-head temperature (cosine scores are in [-1, 1]: without it no softmax
    could be sharp enough to copy one key), and it does so in its local attention too: one
    similarity everywhere is what lets the memory pay, since a look-up circuit the layer learns
    on the keys of its segment then finds the same keys in memory. (With plain dot products
    locally, a trained copy head found its key by dot product 92% of the time and by cosine
    45%: bench/RESULTS.md, "Copy demonstration".) The memory stores these keys and Faiss
    ranks them by the same score, so the k hits are the keys of the whole song that would
    weigh most were they all in the segment.

    The hits join the local keys in one softmax (as in the Focused Transformer), each score
    plus a learned per-head `memory_bias`, instead of Memorizing Transformers' per-head gate:
    a gate weighs the memory the same for every query, so it shuts wherever most queries find
    nothing (a piece's first hearing) and cannot open for the few that find their match; in one
    softmax a hit that matches outweighs the local keys for that query alone. The bias starts
    low, so an untrained memory gets almost no weight. Hits carry no position (they may be
    from anywhere earlier in the song). Gradients reach the queries, the bias and the
    temperature, never the memory. A query whose song has nothing in memory attends locally.
    """

    MEMORY_BIAS_START = -3.0  # a hit starts worth e^-3 = 1/20 of a local key of equal score
    TEMPERATURE_START = 10.0  # cosine 1 vs 0.5 then weigh e^5 = 148 : 1

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.k = config.knn_k
        self.memory_bias = nn.Parameter(torch.full((config.n_head,), self.MEMORY_BIAS_START))
        self.log_temperature = nn.Parameter(
            torch.full((config.n_head,), math.log(self.TEMPERATURE_START))
        )

    def similarity(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Unit keys and unit queries times temperature x √d: attention's q·k/√d is then the
        cosine times the temperature. The memories keep these unit keys."""
        scale = rearrange(self.log_temperature.exp(), "h -> h 1 1") * math.sqrt(q.shape[-1])
        return F.normalize(q, dim=-1) * scale.to(q.dtype), F.normalize(k, dim=-1)

    def mix(
        self, q: Tensor, local: Tensor, keys: Tensor, mask: Tensor | None, ctx: Context
    ) -> Tensor:
        knn = ctx.slots.get(KNNRetrieval.slot)
        if knn is None:
            return local
        hit_keys, hit_values, found = knn.search(q, ctx.doc, self.k)
        memory, memory_lse = knn_attention(
            q, hit_keys.to(q.dtype), hit_values.to(q.dtype), found, self.memory_bias
        )
        # the memory's share of one softmax over [local keys; hits]
        share = (memory_lse - local_logsumexp(q, keys, mask)).sigmoid()[..., None]
        return torch.where(found.any(-1, keepdim=True), local + share * (memory - local), local)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.up = nn.Linear(config.d_model, config.d_ff)
        self.down = nn.Linear(config.d_ff, config.d_model)
        self.drop = Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    """Pre-LayerNorm: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: ModelConfig, attention: type[Attention] = Attention):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = attention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(
        self, x: Tensor, ctx: Context, memory: PastKeyValues | None = None, layer: int = 0
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        a, present = self.attn(self.ln1(x), ctx, memory, layer)
        x = x + a
        return x + self.mlp(self.ln2(x)), present


# ---- memories: what a segment leaves for the ones after it -------------------------------------


@dataclass
class SegmentTrace:
    """What one forward read, for the memories to keep: `after`, the stream after it with the
    memories as they were; per layer the detached keys/values it attended to ([XL memory;
    segment's own]), at stream positions `key_pos` (S,) of songs `key_doc` (B, S); `doc`
    (B, T), the songs of the segment's own tokens (the last T keys)."""

    after: MemoryState
    keys: list[Tensor]
    values: list[Tensor]
    key_pos: Tensor
    key_doc: Tensor
    doc: Tensor

    def cached(self, keep: int) -> MemoryState:
        """Generation's key/value cache: the stream after these tokens, with the newest `keep`
        keys/values of every layer as its past and nothing else written, since the segment is
        not complete (MusicTransformer.remember takes it in once it is)."""
        past = PastKeyValues.extend(
            self.after.past, self.keys, self.values, self.key_doc, self.key_pos, keep
        )
        return replace(self.after, past=past)


class Memory(nn.Module):
    """One kind of memory the model composes (MEMORY_KINDS lists those of each model.memory):
    it may give layers their own attention, it starts empty, and it takes in every complete
    segment. What it keeps lives in `MemoryState.slots[slot]` (a MemorySlot, which moves with
    its rows and saves itself); Transformer-XL keeps the attended past instead. Adding a kind
    of memory is adding a subclass and naming it in MEMORY_KINDS."""

    slot: str | None = None  # its name in MemoryState.slots; None: it keeps nothing there
    past_len = 0  # how many keys of earlier segments every layer attends to (Transformer-XL)

    @classmethod
    def validate(cls, config: ModelConfig) -> None:
        """Stop with one clear message on a setting this memory cannot work with."""

    def load(self, saved: dict, device: torch.device | str) -> MemorySlot:
        """Its slot back from `slot.state_dict()` (e.g. out of a checkpoint)."""
        raise NotImplementedError

    def attention(self, layer: int) -> type[Attention] | None:
        """The attention layer `layer` needs to read this memory; None: plain attention."""
        return None

    def start(self, state: MemoryState) -> MemoryState:
        """`state` with this memory empty, for `state.batch` rows."""
        return state

    def remember(
        self, state: MemoryState, trace: SegmentTrace, rows: list[int] | None = None
    ) -> MemoryState:
        """`state` with this memory after the complete segment of `trace` in `rows` (None:
        every row, as in training; generation's rows may complete their segments apart)."""
        return state


class XLRecurrence(Memory):
    """Transformer-XL: every layer also attends to the keys/values of the last xl_mem_len
    tokens, computed by earlier segments (no gradient crosses into them). Those keys are the
    state's attended past, which the model keeps (MusicTransformer.remember): this memory
    only says how much of it outlives a segment."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.past_len = config.xl_mem_len


class KNNRetrieval(Memory):
    """Memorizing Transformers: one layer (model.knn_layer) also looks up the top knn_k of the
    keys of everything earlier in the song (KNNAttention), stored as that layer computed them."""

    slot = "knn"

    @classmethod
    def validate(cls, config: ModelConfig) -> None:
        layer, layers = config.knn_layer, config.n_layer
        if isinstance(layer, bool) or not isinstance(layer, int) or not -layers <= layer < layers:
            raise MidigenError(
                f"model.knn_layer ({layer!r}) is outside the model: it has {layers} layers, "
                f"so use {-layers} to {layers - 1}"
            )

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.layer = config.knn_layer % config.n_layer
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.max_memories = config.knn_max_memories

    def attention(self, layer: int) -> type[Attention] | None:
        return KNNAttention if layer == self.layer else None

    def start(self, state: MemoryState) -> MemoryState:
        knn = KNNMemory(
            state.batch, self.n_head, self.head_dim, self.max_memories, state.last_doc.device
        )
        return replace(state, slots={**state.slots, self.slot: knn})

    def load(self, saved: dict, device: torch.device | str) -> KNNMemory:
        return KNNMemory.from_state_dict(saved, self.max_memories, device)

    def remember(
        self, state: MemoryState, trace: SegmentTrace, rows: list[int] | None = None
    ) -> MemoryState:
        """The segment's own keys/values of the kNN layer go into the kNN memory (in place)."""
        own = slice(-trace.doc.shape[1], None)
        keys, values = trace.keys[self.layer], trace.values[self.layer]
        state.slots[self.slot].write(keys[:, :, own], values[:, :, own], trace.doc, rows)
        return state


MEMORY_KINDS: dict[str, tuple[type[Memory], ...]] = {
    "none": (),
    "xl": (XLRecurrence,),
    "xl_knn": (XLRecurrence, KNNRetrieval),
}


# ---- the model ---------------------------------------------------------------------------------


class MusicTransformer(nn.Module):
    """Token + bar-position + beat embeddings, pre-LN blocks, a head tied to the embeddings."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        d = config.d_model
        self.tok_emb = nn.Embedding(config.vocab_size, d)
        self.field_emb = nn.ModuleList(nn.Embedding(n, d) for n in config.extra_fields)
        self.bar_emb = nn.Embedding(config.bar_pos_size, d)
        self.beat_emb = nn.Embedding(config.beat_size, d)
        # one more row: "no token before this one" (a song's first token)
        # per lag one table, one more row each: "no token that far back" (a song's start)
        lags = config.previous_tokens
        self.prev_emb = nn.Embedding(lags * (config.vocab_size + 1), d) if lags else None
        absolute = config.position == "absolute"
        self.pos_emb = nn.Embedding(config.max_distance, d) if absolute else None  # song position
        bias = {"relative": RelativeBias, "alibi": ALiBi}.get(config.position)
        self.position_bias = bias(config.n_head, config.max_distance) if bias else None
        self.drop = Dropout(config.dropout)
        self.memories = nn.ModuleList(kind(config) for kind in MEMORY_KINDS[config.memory])
        self.blocks = nn.ModuleList(
            Block(config, self._attention(i)) for i in range(config.n_layer)
        )
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, config.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied, as in GPT-2: fewer parameters
        self.field_heads = nn.ModuleList(nn.Linear(d, n, bias=False) for n in config.extra_fields)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2: keep the residual stream's variance in check
            for proj in (block.attn.proj, block.mlp.down):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * config.n_layer))
        if isinstance(self.position_bias, RelativeBias):
            self.position_bias.reset_parameters()

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _attention(self, layer: int) -> type[Attention]:
        """The attention of layer `layer`: a memory's own, or plain."""
        chosen = [memory.attention(layer) for memory in self.memories]
        return next((attention for attention in chosen if attention), Attention)

    @property
    def keeps_memory(self) -> bool:
        """Whether a segment leaves anything to the next (xl, xl_knn; not vanilla)."""
        return len(self.memories) > 0

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def optimizer_groups(self, weight_decay: float, memory_lr_scale: float) -> list[dict]:
        """AdamW parameter groups: matrices decay, vectors (biases, norms) do not, and the few
        scalar-like parameters that decide how memory is used (the relative position table,
        the kNN memory bias and temperature) neither decay nor crawl. Adam moves a parameter
        by about the learning rate per step, and a whole run's learning rates add up to about
        one: too little for the memory's weight to rise or fall, or for a distance bias to
        leave its ALiBi start.
        `lr_scale` multiplies the scheduled learning rate of a group."""
        steering = self._memory_steering()
        chosen = {id(p) for p in steering}
        rest = [p for p in self.parameters() if id(p) not in chosen]
        return [
            {"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
            {
                "params": steering,
                "weight_decay": 0.0,
                "lr_scale": memory_lr_scale,
            },
        ]

    def _memory_steering(self) -> list[nn.Parameter]:
        """The relative position table and every kNN layer's memory bias and temperature."""
        found = (
            []
            if not isinstance(self.position_bias, RelativeBias)
            else [self.position_bias.table.weight]
        )
        for block in self.blocks:
            if isinstance(block.attn, KNNAttention):
                found += [block.attn.memory_bias, block.attn.log_temperature]
        return found

    # -- state --

    def initial_state(self, batch: int, device: torch.device | str) -> MemoryState:
        """Before the first segment: no song seen, empty memories."""
        state = MemoryState(
            0,
            torch.full((batch,), NO_DOC, dtype=torch.int64, device=device),
            torch.zeros(batch, dtype=torch.int64, device=device),
            torch.zeros(batch, self.config.previous_tokens, dtype=torch.int64, device=device),
        )
        for memory in self.memories:
            state = memory.start(state)
        return state

    def memory_state_from(self, state: dict) -> MemoryState:
        """A MemoryState back from `MemoryState.state_dict()` (e.g. out of a checkpoint)."""
        device = self.tok_emb.weight.device
        loaders = {memory.slot: memory.load for memory in self.memories if memory.slot}
        return MemoryState.from_state_dict(state, loaders, device)

    # -- forward --

    def forward(
        self,
        tokens: Tensor,
        bar_pos: Tensor,
        doc: Tensor | None = None,
        state: MemoryState | None = None,
        targets: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, MemoryState]:
        """One segment of every row: (B, T) tokens (or (B, T, F) rows of fields), bar positions,
        song ids -> logits (B, T, V) (or (B, T, F, V), see `row_logits`),
        the mean cross entropy over targets that are not IGNORE (None without targets), and
        the state after the segment, its memories updated: pass it to the next segment of the
        same rows."""
        logits, trace = self.read(tokens, bar_pos, doc, state)
        loss = None
        if targets is not None:
            total, count = token_loss(logits, targets)
            loss = total / count.clamp(min=1)
        return logits, loss, self.remember(trace)

    def read(
        self,
        tokens: Tensor,
        bar_pos: Tensor,
        doc: Tensor | None = None,
        state: MemoryState | None = None,
        window: int | None = None,
    ) -> tuple[Tensor, SegmentTrace]:
        """The logits of a segment (or of the next tokens of one) under `state`, and what it
        leaves for the memories; no memory is written. Training's forward hands each complete
        segment to `remember`; generation keeps a growing segment in a key/value cache
        (`SegmentTrace.cached`) and remembers it once complete, as training does. `window`: a
        query sees no key that many tokens or more before it (a sliding window)."""
        batch, length = tokens.shape[:2]
        device = tokens.device
        doc = torch.zeros_like(bar_pos) if doc is None else doc
        if state is None:
            state = self.initial_state(batch, device)
        if state.batch != batch:
            raise ValueError(f"memory state is for {state.batch} rows, got a batch of {batch}")
        positions = torch.arange(state.offset, state.offset + length, device=device)
        song_pos, song_start = self._song_positions(positions, doc, state)

        x = embed_rows(self.tok_emb, self.field_emb, tokens)
        x = x + self.bar_emb(bar_pos.clamp(0, self.config.bar_pos_size - 1))
        x = x + self.beat_emb(
            (bar_pos // self.config.steps_per_beat).clamp(0, self.config.beat_size - 1)
        )
        if self.prev_emb is not None:
            x = x + self.prev_emb(self._previous_tokens(tokens, song_pos, state)).sum(-2)
        if self.pos_emb is not None:
            x = x + self.pos_emb(song_pos.clamp(max=self.config.max_distance - 1))
        x = self.drop(x)

        key_pos, key_doc = positions, doc  # of every key: the XL memory's, then the segment's
        if state.past is not None:
            key_pos = torch.cat([state.past.pos, positions])
            key_doc = torch.cat([state.past.doc, doc], dim=1)
        mask = self._attention_mask(positions, doc, key_pos, key_doc, window)
        ctx = Context(*mask, doc, state.slots)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            x, (k, v) = block(x, ctx, state.past, i)
            keys.append(k)
            values.append(v)
        after = replace(
            state,
            offset=state.offset + length,
            last_doc=doc[:, -1].clone(),
            song_start=song_start,
            last_tokens=self._last_tokens(tokens, state),
        )
        logits = row_logits(self.head, self.field_heads, self.ln_f(x))
        return logits, SegmentTrace(after, keys, values, key_pos, key_doc, doc)

    def remember(self, trace: SegmentTrace, rows: list[int] | None = None) -> MemoryState:
        """The state after a complete segment of `rows` (None: all): every memory takes it in
        (no gradient crosses), and the attended past keeps its newest `past_len` keys."""
        state = replace(trace.after, past=self._past_after(trace, rows))
        for memory in self.memories:
            state = memory.remember(state, trace, rows)
        return state

    @property
    def past_len(self) -> int:
        """How many keys of earlier segments every layer attends to (xl: xl_mem_len)."""
        return max((memory.past_len for memory in self.memories), default=0)

    def _past_after(self, trace: SegmentTrace, rows: list[int] | None) -> PastKeyValues | None:
        """The attended past once the segment of `rows` (None: all) is complete."""
        if rows is not None:  # the other rows' segments go on: keep every key, hide the
            doc = hide_older(trace.key_doc, rows, self.past_len)  # older ones from `rows`
            past, length = trace.after.past, len(trace.key_pos)
            return PastKeyValues.extend(past, trace.keys, trace.values, doc, trace.key_pos, length)
        if not self.past_len:
            return None
        return PastKeyValues.extend(
            trace.after.past, trace.keys, trace.values, trace.key_doc, trace.key_pos, self.past_len
        )

    def _previous_tokens(self, tokens: Tensor, song_pos: Tensor, state: MemoryState) -> Tensor:
        """Row ids into `prev_emb` (B, T, n): for lag 1..n the token that far back in the song,
        or that lag's "none" row before the song's start.

        Token shift (`model.previous_tokens` n): with the tokens before it in their own
        embeddings, every key already says what came before it, so one attention layer can
        look up "where did my context come before, and what followed" (an induction head, the
        circuit that copies) without first growing a previous-token head in the layer below;
        with n = 2 a key holds a bigram, which one token so often repeats. An option for the
        memory experiments, off by default; with n = 1 a one-layer model learns the copy
        circuit in about 2,000 steps (bench/RESULTS.md, "Copy demonstration")."""
        lags = self.config.previous_tokens
        history = torch.cat([state.last_tokens, tokens], dim=1)  # (B, n + T)
        length, rows = tokens.shape[1], self.config.vocab_size + 1
        ids = [
            torch.where(song_pos >= lag, history[:, lags - lag : lags - lag + length], rows - 1)
            + (lag - 1) * rows
            for lag in range(1, lags + 1)
        ]
        return torch.stack(ids, dim=-1)

    def _last_tokens(self, tokens: Tensor, state: MemoryState) -> Tensor:
        """The row's last `previous_tokens` tokens after this segment (B, n), oldest first."""
        if self.prev_emb is None:
            return state.last_tokens  # (B, 0): kept by no one
        return torch.cat([state.last_tokens, tokens], dim=1)[:, tokens.shape[1] :].clone()

    @staticmethod
    def _song_positions(
        positions: Tensor, doc: Tensor, state: MemoryState
    ) -> tuple[Tensor, Tensor]:
        """Each token's position inside its song (B, T), and where each row's last song began."""
        previous = torch.cat([state.last_doc[:, None], doc[:, :-1]], dim=1)
        starts = torch.where(doc != previous, positions, -1).cummax(dim=1).values
        starts = torch.where(starts < 0, state.song_start[:, None], starts)
        return positions - starts, starts[:, -1]

    def _attention_mask(
        self,
        positions: Tensor,
        doc: Tensor,
        key_pos: Tensor,
        key_doc: Tensor,
        window: int | None = None,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Position bias + causal + same-song mask, built once and shared by all layers, and
        the position bias alone (None without one).

        Query i may see key j only if j is not later (nor `window` or more earlier) and both
        are of the same song. The mask is None when plain causal attention is exact (no bias,
        no memory, one song per row, nothing beyond the window).
        """
        distance = positions[:, None] - key_pos[None, :]  # (T, S)
        one_song = bool((key_doc == key_doc[:, -1:]).all())  # in every row, keys included
        plain = len(key_pos) == len(positions) and (window is None or len(key_pos) <= window)
        if self.position_bias is None and one_song and plain:
            return None, None
        allowed = (distance >= 0)[None]  # (1, T, S): no key later than its query
        if window is not None:
            allowed = allowed & (distance < window)
        if not one_song:
            allowed = allowed & (doc[:, :, None] == key_doc[:, None, :])  # (B, T, S)
        mask = torch.where(allowed, 0.0, MASKED)[:, None]  # (B|1, 1, T, S)
        if self.position_bias is None:
            return mask, None
        bias = self.position_bias(distance)
        return mask + bias, bias
