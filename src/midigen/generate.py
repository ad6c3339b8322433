"""Continue songs with a trained model: a key/value cache that mirrors training, sampling
controls, a grammar mask and beam search; and the samples the generate stage writes.

Every query sees what it saw in training. Segments of `segment_len` tokens start at the song's
first token; a query at position i of a segment sees the `xl_mem_len` tokens before the segment
through the XL memory plus the segment up to i, and the kNN memory holds every earlier token of
the song before the segment (written when a segment is complete). `KVCache` feeds tokens one at
a time under exactly those contexts: the XL memory grows into a cache of the current segment and
shrinks back to `xl_mem_len` when the segment is complete, which is also when that segment goes
into the kNN memory. So xl and xl_knn run past their context by pushing the oldest segment into
memory. Vanilla has no memory: its cache keeps the last segment_len - 1 tokens, a sliding window
(beyond the first window the cached keys were computed with their own, older context, as in XL;
re-encoding the window instead would cost a whole forward per token). `Recompute` runs the
current context again for every token, without a cache: the reference for tests and benchmark.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import symusic
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from midigen.atomic import atomic_dir
from midigen.corpus import load_shard
from midigen.download import read_manifest
from midigen.encodings import Cursor, Grammar, Scheme, decode_song, whole_rows
from midigen.encodings.catalog import load_scheme
from midigen.errors import MidigenError
from midigen.lstm import MusicLSTM
from midigen.media import piano_roll, render_audio
from midigen.memory import MemoryState
from midigen.midi import Meter, Notes, write_midi
from midigen.model import MusicTransformer, SegmentTrace
from midigen.params import default
from midigen.samples import PIECES, PieceFiles, SamplePrompt, Samples


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


# ---- prompts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """The opening of a song to continue (from <sos>, whole rows), the bar position of each of
    its tokens, and the bar grid on which the continuation's bar positions are counted."""

    tokens: np.ndarray
    bar_pos: np.ndarray
    bar_steps: int
    bar_start: int = 0  # a step where a bar begins (the grid's phase)

    def bar_position(self, step: int) -> int:
        return (step - self.bar_start) % self.bar_steps


def bar_steps_of(times: np.ndarray, bar_pos: np.ndarray, steps_per_beat: int) -> int:
    """A song's bar length in steps: the most common distance between the starts of the bars
    its tokens fall in (a meter change or a bar without a token does not move it)."""
    starts = np.unique(np.asarray(times, np.int64) - np.asarray(bar_pos, np.int64))
    if len(starts) < 2:  # all in one bar: at least as long as what it holds
        return max(4 * steps_per_beat, int(np.max(bar_pos)) + 1)
    lengths, counts = np.unique(np.diff(starts), return_counts=True)
    return int(lengths[counts.argmax()])


def split_song(
    tokens: np.ndarray,
    times: np.ndarray,
    bar_pos: np.ndarray,
    bars: int,
    steps_per_beat: int,
    grammar: Grammar | None = None,
) -> tuple[Prompt, np.ndarray]:
    """A song's first `bars` bars as a prompt (the tokens before step bars * bar_steps, never
    <eos>; with the scheme's `grammar`, cut back to where the song could end, for schemes
    whose tokens at one step may leave a row unfinished: merged ones) and the rest of the
    song, its real continuation."""
    bar_steps = bar_steps_of(times, bar_pos, steps_per_beat)
    n = min(int(np.searchsorted(times, bars * bar_steps)), len(tokens) - 1)
    if grammar is not None:
        head = np.asarray(tokens[:n]).tolist()
        n = 1 + len(whole_rows(grammar, grammar.parse(head[:1]), head[1:]))
    bar_start = int(times[n - 1]) - int(bar_pos[n - 1])
    prompt = Prompt(np.asarray(tokens[:n]), np.asarray(bar_pos[:n]), bar_steps, bar_start)
    return prompt, np.asarray(tokens[n:])


# ---- contexts: what the model sees while a sequence grows --------------------------------------


class Context(Protocol):
    """How generation runs the model: logits after the tokens fed so far, rows reordered."""

    def feed(self, tokens: Tensor, bar_pos: Tensor) -> Tensor:
        """(B, n) tokens and bar positions -> the next-token logits (B, V) after the last one."""
        ...

    def select(self, rows: Tensor) -> None:
        """Row r continues row rows[r] (beam search)."""
        ...


class KVCache:
    """Feeds tokens under their training contexts, keeping every past key/value it may need."""

    def __init__(self, model: MusicTransformer):
        self.model = model
        config = model.config
        self.segment, self.mem_len = config.segment_len, config.xl_mem_len
        self.memory = model.keeps_memory
        self.state: MemoryState | None = None

    @property
    def fed(self) -> int:
        return 0 if self.state is None else self.state.offset

    def feed(self, tokens: Tensor, bar_pos: Tensor) -> Tensor:
        """(B, n) tokens and bar positions -> the next-token logits (B, V) after the last one."""
        start = 0
        while start < tokens.shape[1]:
            take = min(tokens.shape[1] - start, self._room())
            logits = self._forward(
                tokens[:, start : start + take], bar_pos[:, start : start + take]
            )
            start += take
        return logits[:, -1]

    def select(self, rows: Tensor) -> None:
        """Row r continues row rows[r] (beam search)."""
        self.state = self.state.select(rows)

    def _room(self) -> int:
        """How many tokens one forward may take with every query still in its context."""
        if self.memory:  # up to the end of the current segment
            return self.segment - self.fed % self.segment
        cached = 0 if self.state is None or self.state.xl is None else len(self.state.xl.pos)
        return max(1, self.segment - cached)  # vanilla: no query sees more than segment_len

    def _forward(self, tokens: Tensor, bar_pos: Tensor) -> Tensor:
        filled = self.fed % self.segment + tokens.shape[1]  # of the current segment, after this
        keep = self.mem_len + filled if self.memory else self.segment - 1
        if self.memory and self.state is not None and self.state.xl is not None:
            # room for the rest of the segment: tokens are then written into it, not copied
            xl = self.state.xl.with_room(self.mem_len + self.segment)
            if xl is not self.state.xl:
                self.state = dataclasses.replace(self.state, xl=xl)
        logits, trace = self.model.read(tokens, bar_pos, state=self.state)
        self.state = trace.cached(keep)
        if self.memory and filled == self.segment:
            self._end_segment()
        return logits

    def _end_segment(self) -> None:
        """The complete segment, all in the cache, goes to the memories as in training."""
        xl = self.state.xl
        own = xl.doc[:, -self.segment :]
        self.state = self.model.remember(
            SegmentTrace(self.state, xl.keys, xl.values, xl.pos, xl.doc, own)
        )


class Recompute:
    """No key/value cache: every call runs the whole current context again. Memory models keep
    the state left by the song's complete segments (training's segment-by-segment forward) and
    re-run the current segment; vanilla re-runs its last segment_len tokens."""

    def __init__(self, model: MusicTransformer):
        self.model = model
        self.segment = model.config.segment_len
        self.memory = model.keeps_memory
        self.state: MemoryState | None = None  # memory models: after the complete segments
        self.tokens: Tensor | None = None  # the current segment (vanilla: window) so far
        self.bar_pos: Tensor | None = None

    def feed(self, tokens: Tensor, bar_pos: Tensor) -> Tensor:
        """(B, n) tokens and bar positions -> the next-token logits (B, V) after the last one."""
        if self.tokens is not None:
            tokens, bar_pos = (
                torch.cat([self.tokens, tokens], 1),
                torch.cat([self.bar_pos, bar_pos], 1),
            )
        if not self.memory:
            self.tokens, self.bar_pos = tokens[:, -self.segment :], bar_pos[:, -self.segment :]
            return self.model(self.tokens, self.bar_pos)[0][:, -1]
        while tokens.shape[1] >= self.segment:  # complete segments go into memory for good
            logits, _, self.state = self.model(
                tokens[:, : self.segment], bar_pos[:, : self.segment], state=self.state
            )
            tokens, bar_pos = tokens[:, self.segment :], bar_pos[:, self.segment :]
        self.tokens, self.bar_pos = tokens, bar_pos
        if tokens.shape[1]:
            logits = self.model.read(tokens, bar_pos, state=self.state)[0]
        return logits[:, -1]

    def select(self, rows: Tensor) -> None:
        """Row r continues row rows[r] (beam search)."""
        if self.state is not None:
            self.state = self.state.select(rows)
        self.tokens, self.bar_pos = self.tokens[rows], self.bar_pos[rows]


class Carried:
    """The LSTM's context: its state after the tokens fed so far (one song: one id)."""

    def __init__(self, model: MusicLSTM):
        self.model, self.state = model, None

    def feed(self, tokens: Tensor, bar_pos: Tensor) -> Tensor:
        """(B, n) tokens and bar positions -> the next-token logits (B, V) after the last one."""
        logits, _, self.state = self.model(tokens, bar_pos, torch.zeros_like(bar_pos), self.state)
        return logits[:, -1]

    def select(self, rows: Tensor) -> None:
        """Row r continues row rows[r] (beam search)."""
        self.state = self.state.select(rows)


# ---- choosing tokens ---------------------------------------------------------------------------


def sample(logits: Tensor, allowed: Tensor, config: GenerateConfig, generator: torch.Generator):
    """One token per row (B,), drawn from the allowed tokens after temperature, top-k, top-p;
    with rows of fields (B, F, V), each field drawn on its own (B, F), as the heads predict."""
    if logits.dim() == 3:
        fields = sample(logits.flatten(0, 1), allowed.flatten(0, 1), config, generator)
        return fields.view(logits.shape[:2])
    if config.temperature != 1:
        logits = logits / config.temperature
    logits = logits.float().masked_fill(~allowed, float("-inf"))
    if config.top_k:
        kth = logits.topk(min(config.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if config.top_p == 1:
        return _draw(probs, generator)
    ranked, order = probs.sort(dim=-1, descending=True)
    ranked = ranked.masked_fill(ranked.cumsum(-1) - ranked >= config.top_p, 0)  # nucleus full
    return order.gather(-1, _draw(ranked, generator)[:, None])[:, 0]


def _draw(weights: Tensor, generator: torch.Generator) -> Tensor:
    """One index per row, in proportion to its (unnormalised) weights: the exponential race,
    argmax of w / Exp(1), which is multinomial's own method for one draw, without its per-call
    input checks (they cost a tenth of a cached generation step)."""
    noise = torch.empty_like(weights).exponential_(generator=generator).clamp_min_(1e-30)
    return (weights / noise).argmax(-1)


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


@torch.inference_mode()
@_without_onednn()
def generate(
    model: nn.Module,
    prompt: Prompt,
    scheme: Scheme,
    config: GenerateConfig,
    seed: int | None = None,
    context: Callable[[nn.Module], Context] | None = None,
) -> Generation:
    """Continue `prompt` for at most config.length tokens: sampled, or by beam search when
    config.beams > 1. The transformers feed a `KVCache` (`context=Recompute` runs the whole
    context again for every token), the LSTM its `Carried` state."""
    model.eval()
    device = model.tok_emb.weight.device
    grammar = DeviceGrammar(scheme.grammar, device)
    cursor = grammar.parse(prompt.tokens.tolist())
    if context is None:
        context = Carried if isinstance(model, MusicLSTM) else KVCache
    context = context(model)
    logits = context.feed(
        torch.as_tensor(np.asarray(prompt.tokens, np.int64), device=device)[None],
        torch.as_tensor(np.asarray(prompt.bar_pos, np.int64), device=device)[None],
    )
    if config.beams > 1:
        if logits.dim() == 3:
            raise MidigenError("generate.beams > 1 needs one token per step (not codebook rows)")
        return _beam_search(context, logits, cursor, grammar, prompt, config)
    generator = torch.Generator(device=device).manual_seed(config.seed if seed is None else seed)
    tokens, drawn_from = [], []  # the tokens, and the (logits, allowed) each was drawn from
    for _ in range(config.length):
        allowed = grammar.allowed([cursor], eos=len(tokens) >= config.min_length)
        drawn = sample(logits, allowed, config, generator)[0]
        token = int(drawn) if drawn.dim() == 0 else tuple(drawn.tolist())
        tokens.append(token)
        drawn_from.append((logits, allowed))
        bar = prompt.bar_position(grammar.sounds_at(cursor, token))
        cursor = grammar.advance(cursor, token)
        if cursor.ended or len(tokens) == config.length:
            break
        logits = context.feed(
            torch.tensor([[token]], device=device), torch.tensor([[bar]], device=device)
        )
    if not tokens:  # length 0
        return Generation(tokens, 0.0)
    # scored once at the end, all steps together: per token it would cost a twentieth of a step
    log_probs = _log_probs(*(torch.cat(column) for column in zip(*drawn_from, strict=True)))
    chosen = torch.tensor(tokens, device=device)[..., None]  # (N, 1), or (N, F, 1) for rows
    return Generation(tokens, float(log_probs.gather(-1, chosen).sum()))


def _log_probs(logits: Tensor, allowed: Tensor) -> Tensor:
    """Log-probabilities of the model renormalised over the allowed tokens (B, V), in float64."""
    return F.log_softmax(logits.double().masked_fill(~allowed, float("-inf")), dim=-1)


def _beam_search(
    context: Context,
    logits: Tensor,
    cursor: Cursor,
    grammar: DeviceGrammar,
    prompt: Prompt,
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


# ---- the generate stage ------------------------------------------------------------------------


def song_title(midi_file: Path | None, fallback: str) -> str:
    """The first non-empty track name of a MIDI file (what its author called it), else
    `fallback`."""
    if midi_file is None:
        return fallback
    try:
        tracks = symusic.Score.from_midi(midi_file.read_bytes()).tracks
    except Exception:  # the file was encoded once, but a title is not worth failing over
        return fallback
    return next((t.name.strip() for t in tracks if t.name.strip()), fallback)


def write_samples(
    model: nn.Module,
    variant: str,
    shards: Path,
    raw: Path,
    out: Path,
    config: GenerateConfig,
    steps_per_beat: int,
) -> Samples:
    """Continue the first `config.prompts` test songs; write OUT/ (MIDI, WAV and piano roll of
    prompt, real and generated piece, and samples.json) atomically; return what it records."""
    scheme, shard = load_scheme(shards), load_shard(shards, "test")
    grammar = scheme.grammar
    if config.prompts > len(shard.songs):
        raise MidigenError(
            f"generate.prompts is {config.prompts} but the test split has only "
            f"{len(shard.songs)} songs (lower generate.prompts)"
        )
    files = {row["sha256"]: raw / row["path"] for row in read_manifest(raw / "manifest.csv")}
    prompts, renderer = [], None
    with atomic_dir(out) as tmp:
        for k in range(config.prompts):
            song, span = shard.songs[k], shard.song(k)
            times = np.asarray(shard.times[span])
            prompt, real = split_song(
                np.asarray(shard.tokens[span], np.int64),
                times,
                np.asarray(shard.bar_pos[span]),
                config.prompt_bars,
                steps_per_beat,
                grammar,
            )
            started = time.perf_counter()
            generation = generate(model, prompt, scheme, config, seed=config.seed + k)
            seconds = time.perf_counter() - started
            after_prompt = grammar.parse(prompt.tokens.tolist())
            head = prompt.tokens.tolist()  # ints, or rows of them (codebook)
            tokens = {
                "prompt": head,
                "real": real.tolist(),
                "generated": whole_rows(grammar, after_prompt, generation.tokens),
            }
            title = song_title(files.get(song["sha256"]), song["source"])
            heading = song["source"] if title == song["source"] else f"{title} ({song['source']})"
            piece_files = {}
            for piece in PIECES:
                body = [] if piece == "prompt" else tokens[piece]
                continuation = None if piece == "prompt" else int(times[len(head)])
                piece_files[piece], reason = _write_piece(
                    tmp / f"{k:02d}_{piece}",
                    decode_song(scheme, [*head, *body]),
                    f"{heading}: {piece}",
                    prompt.bar_steps,
                    continuation,
                    config.sample_rate,
                    steps_per_beat,
                )
                renderer = renderer or reason
            prompts.append(
                SamplePrompt(
                    id=f"{k:02d}",
                    song=song["sha256"],
                    source=song["source"],
                    title=title,
                    prompt_steps=int(times[len(head)]),
                    bar_steps=prompt.bar_steps,
                    tokens=tokens,
                    files=piece_files,
                    seconds=seconds,
                    tokens_per_s=len(generation.tokens) / seconds,
                )
            )
        samples = Samples(variant, scheme.name, renderer, steps_per_beat, tuple(prompts))
        samples.write(tmp)
    return samples


def _write_piece(
    stem: Path,
    notes: Notes,
    heading: str,
    bar_steps: int,
    continuation: int | None,
    sample_rate: int,
    steps_per_beat: int,
) -> tuple[PieceFiles, str | None]:
    """One piece as STEM.mid, .wav and .png (the piano roll, the continuation marked where it
    starts): its file names, and why there is no WAV, if not."""
    midi = write_midi(notes, steps_per_beat, Meter(np.array([0]), np.array([bar_steps])))
    stem.with_suffix(".mid").write_bytes(midi)
    reason = render_audio(midi, stem.with_suffix(".wav"), sample_rate)
    piano_roll(notes, stem.with_suffix(".png"), steps_per_beat, heading, continuation)
    wav = None if reason else f"{stem.name}.wav"
    return PieceFiles(f"{stem.name}.mid", f"{stem.name}.png", wav), reason
