"""Continue a prompt with a trained model: sampling controls (temperature, top-k, top-p) or
beam search, every token drawn from those the scheme's grammar allows next."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midigen.encodings import Cursor, Grammar, Scheme
from midigen.errors import MidigenError
from midigen.generation.contexts import Carried, Context, KVCache
from midigen.generation.prompts import Prompt
from midigen.models.lstm import MusicLSTM
from midigen.params import default
from midigen.progress import progress

ContextKind = Callable[[nn.Module], Context]  # a Context class, built on the model


@dataclass(frozen=True)
class GenerateConfig:
    """The `generate` params: which prompts, how long, and how tokens are chosen."""

    prompts: int = default("generate", "prompts")
    prompt_bars: int = default("generate", "prompt_bars")
    length: int = default("generate", "length")  # most tokens generated per prompt
    temperature: float = default("generate", "temperature")
    top_k: int = default("generate", "top_k")  # 0 = off
    top_p: float = default("generate", "top_p")  # 1.0 = off
    min_length: int = default("generate", "min_length")  # tokens before <eos> may end it
    beams: int = default("generate", "beams")  # > 1: beam search (no sampling knobs used)
    seed: int = default("generate", "seed")
    sample_rate: int = default("generate", "sample_rate")

    @classmethod
    def from_params(cls, generate: dict) -> GenerateConfig:
        return cls(**{k: v for k, v in generate.items() if k in cls.__dataclass_fields__})


class DeviceGrammar:
    """A scheme's grammar with its mask rows as tensors on the model's device, each copied
    there once (generation asks for one per token)."""

    def __init__(self, grammar: Grammar, device: torch.device | str):
        self.grammar, self.device = grammar, device
        self.parse, self.advance, self.sounds_at = grammar.parse, grammar.advance, grammar.sounds_at
        self._copies: dict[int, Tensor] = {}  # id of the grammar's shared row -> its tensor

    def allowed(self, cursors: list[Cursor], eos: bool = True) -> Tensor:
        """(B, V) bool on the device, one row per cursor (`Grammar.allowed`)."""
        rows = [self._copy(self.grammar.allowed([cursor], eos)) for cursor in cursors]
        return rows[0] if len(rows) == 1 else torch.cat(rows)

    def _copy(self, row: np.ndarray) -> Tensor:
        if id(row) not in self._copies:  # the grammar keeps every row it hands out
            self._copies[id(row)] = torch.as_tensor(row, device=self.device)
        return self._copies[id(row)]


def sample(
    logits: Tensor, allowed: Tensor, config: GenerateConfig, generators: Sequence[torch.Generator]
) -> Tensor:
    """One token per row (B,), drawn from the allowed tokens after temperature, top-k, top-p;
    with rows of fields (B, F, V), each field drawn on its own (B, F), as the heads predict.
    Row b draws its randomness from generators[b] alone, so a prompt continues the same way
    whichever batch it is in."""
    if config.temperature != 1:
        logits = logits / config.temperature
    logits = logits.float().masked_fill(~allowed, float("-inf"))
    if config.top_k:
        kth = logits.topk(min(config.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if config.top_p == 1:
        return _draw(probs, generators)
    ranked, order = probs.sort(dim=-1, descending=True)
    ranked = ranked.masked_fill(ranked.cumsum(-1) - ranked >= config.top_p, 0)  # nucleus full
    return order.gather(-1, _draw(ranked, generators)[..., None])[..., 0]


def _draw(weights: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
    """One index per row, in proportion to its (unnormalised) weights: the exponential race,
    argmax of w / Exp(1), which is multinomial's own method for one draw, without its per-call
    input checks (they cost a tenth of a cached generation step). Row b's noise comes from
    generators[b]."""
    noise = torch.empty_like(weights)
    rows = [noise] if len(noise) == 1 else noise  # one row: no view to make
    for row, generator in zip(rows, generators, strict=True):
        row.exponential_(generator=generator)
    return (weights / noise.clamp_min_(1e-30)).argmax(-1)


@dataclass
class Generation:
    """A continuation as drawn (it may end inside a row when the length limit stopped it; see
    `whole_rows`) and its total log-probability under the grammar-masked model."""

    tokens: list[int]
    log_prob: float


@contextlib.contextmanager
def _without_onednn() -> Iterator[None]:
    """The exact GELU goes through oneDNN on the CPU, whose set-up per call (~7 us) is most of
    the cost of one token's GELU: a tenth of a cached step (bench/generate.py)."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


def generate(
    model: nn.Module,
    prompt: Prompt,
    scheme: Scheme,
    config: GenerateConfig,
    seed: int | None = None,
    context: ContextKind | None = None,
) -> Generation:
    """Continue `prompt` for at most config.length tokens (`generate_batch` of one prompt)."""
    seeds = None if seed is None else [seed]
    return generate_batch(model, [prompt], scheme, config, seeds, context)[0]


@torch.inference_mode()
@_without_onednn()
def generate_batch(
    model: nn.Module,
    prompts: Sequence[Prompt],
    scheme: Scheme,
    config: GenerateConfig,
    seeds: Sequence[int] | None = None,
    context: ContextKind | None = None,
) -> list[Generation]:
    """Continue every prompt for at most config.length tokens: sampled, all prompts as rows
    of one batch, or by beam search (config.beams > 1), one prompt after another. Prompt k
    draws from its own generator, seeded seeds[k] (default config.seed + k), so it continues
    exactly as it would alone, up to the rounding of batched arithmetic. The transformers feed
    a `KVCache` (`context=Recompute`, one prompt only, runs the whole context again for every
    token), the LSTM its `Carried` state. Each prompt fills its own context, then the
    contexts are stacked into one batch."""
    model.eval()
    device = model.tok_emb.weight.device
    grammar = DeviceGrammar(scheme.grammar, device)
    if context is None:
        context = Carried if isinstance(model, MusicLSTM) else KVCache
    contexts, logits = [context(model) for _ in prompts], []
    for prompt, filled in zip(prompts, contexts, strict=True):
        logits.append(
            filled.feed(
                torch.as_tensor(np.asarray(prompt.tokens, np.int64), device=device)[None],
                torch.as_tensor(np.asarray(prompt.bar_pos, np.int64), device=device)[None],
            )
        )
    cursors = [
        p.cursor if p.cursor is not None else grammar.parse(p.tokens.tolist()) for p in prompts
    ]
    if config.beams > 1:
        if logits[0].dim() == 3:
            raise MidigenError("generate.beams > 1 needs one token per step (not codebook rows)")
        return [
            _beam_search(*searched, grammar, config)
            for searched in zip(contexts, logits, cursors, prompts, strict=True)
        ]
    seeds = [config.seed + k for k in range(len(prompts))] if seeds is None else seeds
    generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
    batch = contexts[0] if len(contexts) == 1 else context.stack(contexts)
    return _sample_rows(batch, torch.cat(logits), cursors, grammar, prompts, config, generators)


def _sample_rows(
    context: Context,
    logits: Tensor,
    cursors: list[Cursor],
    grammar: DeviceGrammar,
    prompts: Sequence[Prompt],
    config: GenerateConfig,
    generators: list[torch.Generator],
) -> list[Generation]:
    """Draw every prompt's continuation, one token per row and step; a row that ends (<eos>
    or config.length tokens) leaves the batch."""
    device = logits.device
    live = list(range(len(prompts)))  # the prompt of each batch row
    tokens: list[list] = [[] for _ in prompts]
    drawn_from: list[list] = [[] for _ in prompts]  # the (logits, allowed) each was drawn from
    for step in progress(range(config.length), "generate", config.length, "token"):
        allowed = grammar.allowed([cursors[k] for k in live], eos=step >= config.min_length)
        drawn = sample(logits, allowed, config, [generators[k] for k in live]).tolist()
        going, fed, bars = [], [], []
        for row, (k, token) in enumerate(zip(live, drawn, strict=True)):
            token = token if isinstance(token, int) else tuple(token)
            tokens[k].append(token)
            drawn_from[k].append((logits[row : row + 1], allowed[row : row + 1]))
            bars.append(prompts[k].bar_position(grammar.sounds_at(cursors[k], token)))
            cursors[k] = grammar.advance(cursors[k], token)
            if not cursors[k].ended and step + 1 < config.length:
                going.append(row)
                fed.append(token)
        if not going:
            break
        if len(going) < len(live):
            context.select(torch.tensor(going, device=device))
            live, bars = [live[row] for row in going], [bars[row] for row in going]
        logits = context.feed(
            torch.tensor(fed, device=device)[:, None], torch.tensor(bars, device=device)[:, None]
        )
    return [_scored(*drawn) for drawn in zip(tokens, drawn_from, strict=True)]


def _scored(tokens: list, drawn_from: list[tuple[Tensor, Tensor]]) -> Generation:
    """A continuation and its log-probability, scored once at the end, all steps together (per
    token it would cost a twentieth of a step)."""
    if not tokens:  # length 0
        return Generation(tokens, 0.0)
    logits, allowed = (torch.cat(column) for column in zip(*drawn_from, strict=True))
    chosen = torch.tensor(tokens, device=logits.device)[..., None]  # (N, 1), or (N, F, 1)
    return Generation(tokens, float(_log_probs(logits, allowed).gather(-1, chosen).sum()))


def _log_probs(logits: Tensor, allowed: Tensor) -> Tensor:
    """Log-probabilities of the model renormalised over the allowed tokens (B, V), in float64."""
    return F.log_softmax(logits.double().masked_fill(~allowed, float("-inf")), dim=-1)


def _beam_search(
    context: Context,
    logits: Tensor,
    cursor: Cursor,
    prompt: Prompt,
    grammar: DeviceGrammar,
    config: GenerateConfig,
) -> Generation:
    """The continuation with the highest total log-probability that beam search finds: ended by
    <eos>, or config.length tokens long. Beams are batch rows; each step keeps the `beams` best
    extensions, and the memories follow their rows. Log-probabilities only fall as a sequence
    grows, so once a finished sequence beats every live one the search is over."""
    beams, device = config.beams, logits.device
    context.select(torch.zeros(beams, dtype=torch.int64, device=device))
    logits = logits.expand(beams, -1)
    cursors, sequences = [cursor] * beams, [[] for _ in range(beams)]
    scores = torch.full((beams,), float("-inf"), dtype=torch.float64, device=device)
    scores[0] = 0.0  # one prompt: the other rows are copies until the first choice
    finished: list[tuple[float, list[int]]] = []  # (score, sequence) ended by <eos>
    full_length: list[tuple[float, list[int]]] = []
    for step in range(config.length):
        allowed = grammar.allowed(cursors, eos=step >= config.min_length)
        totals = scores[:, None] + _log_probs(logits, allowed)
        best, flat = totals.flatten().topk(min(2 * beams, totals.numel()))
        live = []  # (score, row, token) of the extensions kept
        for score, index in zip(best.tolist(), flat.tolist(), strict=True):
            if score == float("-inf") or len(live) == beams:
                break
            row, token = divmod(index, totals.shape[1])
            if grammar.advance(cursors[row], token).ended:
                finished.append((score, [*sequences[row], token]))
            else:
                live.append((score, row, token))
        if not live or max((s for s, _ in finished), default=float("-inf")) >= live[0][0]:
            break
        live += [(float("-inf"), *live[-1][1:])] * (beams - len(live))  # fill the spare rows
        rows = [row for _, row, _ in live]
        tokens = [token for _, _, token in live]
        scores = torch.tensor([score for score, _, _ in live], dtype=torch.float64, device=device)
        sequences = [[*sequences[row], token] for row, token in zip(rows, tokens, strict=True)]
        bars = [
            prompt.bar_position(grammar.sounds_at(cursors[row], token))
            for row, token in zip(rows, tokens, strict=True)
        ]
        cursors = [grammar.advance(cursors[r], t) for r, t in zip(rows, tokens, strict=True)]
        if step + 1 == config.length:
            full_length = list(zip(scores.tolist(), sequences, strict=True))
            break
        context.select(torch.tensor(rows, device=device))
        logits = context.feed(
            torch.tensor(tokens, device=device)[:, None], torch.tensor(bars, device=device)[:, None]
        )
    score, tokens = max(finished + full_length, key=lambda pair: pair[0])
    return Generation(tokens, score)
