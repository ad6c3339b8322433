"""The report, opened in a real headless Chromium, built from real inputs.

The inputs are what the stages before the report write: MIDI of real chorale notes, WAV
rendered with the soundfont, piano-roll PNGs, DVCLive training metrics (written by DVCLive),
evaluation metrics and baselines in the agreed JSON layout.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import io
import json
import math
import shutil
import wave
from pathlib import Path
from urllib.parse import unquote, urlparse

import jinja2
import numpy as np
import pytest
import symusic
from builders import shards_via_stages
from matplotlib.figure import Figure
from PIL import Image

from midigen.data.corpus import EncodeConfig
from midigen.errors import MidigenError
from midigen.evaluation.paired import (
    CELLS,
    CONTRASTS,
    REACH,
    SongCells,
    memory_effect,
    paired_difference,
    write_song_cells,
)
from midigen.generation.media import piano_roll, render_audio
from midigen.midi.files import Notes, write_midi
from midigen.params import load_params
from midigen.report.build import _environment, _plain_name
from midigen.report.verdict import (
    CACHE_CELLS,
    cache_outcome,
    effect_outcome,
    floor_verdict,
    format_interval,
    memory_verdict,
)
from midigen.stages import report as report_stage

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("vanilla", "xl", "xl_knn")
CHORALES = ("bach/bwv269", "bach/bwv347")
XSS = "<script>alert(1)</script>"
PROMPT_BARS, SONG_BARS = 2, 6
TEST_SONGS = 12
# Test inputs in which both memory variants are a little better everywhere (their level) and
# much better on the second copy of the repeat probe; xl_knn also on far repeats. Nats/token
# added to vanilla's NLL per cell.
LEVEL = {"vanilla": 0.0, "xl": -0.05, "xl_knn": -0.1}
MEMORY = {
    "vanilla": {},
    "xl": {"repeat_second": -0.8, "reach_xl": -0.4},
    "xl_knn": {"repeat_second": -1.1, "reach_xl": -0.4, "reach_beyond": -0.9},
}

CACHE_GAIN = {"repeat_second": -1.0, "reach_beyond": -0.5, "reach_xl": -0.3, "all": -0.05}

PAGE_FACTS = """(async () => {
  const ready = (audio) => new Promise((resolve) => {
    if (audio.readyState >= 1 || audio.error) return resolve();
    audio.addEventListener("loadedmetadata", resolve, {once: true});
    audio.addEventListener("error", resolve, {once: true});
    setTimeout(resolve, 20000);
  });
  const audios = [...document.querySelectorAll("audio")];
  await Promise.all(audios.map(ready));
  let played = null;
  if (audios.length) {
    await audios[0].play();
    await new Promise((resolve) => setTimeout(resolve, 400));
    played = audios[0].currentTime;
    audios[0].pause();
  }
  return {
    audio: audios.map((a) => ({
      src: a.currentSrc, duration: a.duration, error: a.error ? a.error.code : null,
    })),
    played: played,
    images: [...document.images].map((i) => ({src: i.currentSrc, width: i.naturalWidth})),
    midi: [...document.querySelectorAll("a[download]")].map((a) => a.href),
    links: [...document.querySelectorAll("a[href]")].map((a) => a.href),
    scripts: document.querySelectorAll("script").length,
    text: document.body.innerText,
    runs: [...document.querySelectorAll("#runs tbody tr")].map((tr) => tr.innerText),
  };
})()"""


# --- building real inputs ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sources() -> list[tuple[str, bytes]]:
    """Two chorales as MIDI files; the first one's track is named like an attack on the page."""
    from music21 import corpus
    from music21.midi.translate import streamToMidiFile

    files = []
    for name in CHORALES:
        score = symusic.Score.from_midi(streamToMidiFile(corpus.parse(name)).writestr())
        if not files:
            score.tracks[0].name = XSS
        files.append((name, score.dumps_midi()))
    return files


def _title(midi: bytes, source: str) -> str:
    """What generate shows: the first non-empty track name of the source MIDI, or the source."""
    names = [t.name for t in symusic.Score.from_midi(midi).tracks if t.name.strip()]
    return names[0] if names else source


def _slice(notes: Notes, keep: np.ndarray, shift_steps: int = 0, transpose: int = 0) -> Notes:
    return Notes(
        notes.onset[keep] + shift_steps,
        notes.program[keep],
        notes.pitch[keep] + transpose,
        notes.duration[keep],
    )


def _concat(a: Notes, b: Notes) -> Notes:
    columns = ("onset", "program", "pitch", "duration")
    return Notes(*(np.concatenate([getattr(a, c), getattr(b, c)]) for c in columns))


def _write_sample(folder: Path, stem: str, notes: Notes, title: str, prompt_steps: int) -> dict:
    """MIDI, WAV and piano roll of one sample, as generate writes them."""
    spb = 4
    midi = write_midi(notes, spb)
    (folder / f"{stem}.mid").write_bytes(midi)
    assert render_audio(midi, folder / f"{stem}.wav") is None
    piano_roll(notes, folder / f"{stem}.png", spb, title=title, prompt_steps=prompt_steps)
    return {"mid": f"{stem}.mid", "wav": f"{stem}.wav", "png": f"{stem}.png"}


def _write_samples(samples: Path, sources: list[tuple[str, bytes]], params: dict) -> None:
    """samples/V/ for every variant: the same prompts, real continuations, own continuations."""
    config = EncodeConfig.from_params(params["encode"])
    songs = [(name, midi, (song := config.read(midi)).notes, song.meter) for name, midi in sources]
    for k, variant in enumerate(VARIANTS):
        folder = samples / variant
        folder.mkdir(parents=True)
        prompts = []
        for i, (name, midi, notes, meter) in enumerate(songs):
            bar = int(meter.length[0])
            prompt_steps, end = PROMPT_BARS * bar, SONG_BARS * bar
            title = _title(midi, name)
            prompt = _slice(notes, notes.onset < prompt_steps)
            real = _slice(notes, notes.onset < end)
            # A "generated" continuation: real notes of the other chorale, transposed per variant.
            other = songs[1 - i][2]
            later = (other.onset >= prompt_steps) & (other.onset < end)
            generated = _concat(prompt, _slice(other, later, transpose=k))
            files = {
                kind: _write_sample(folder, f"{i:02d}_{kind}", n, f"{title} ({kind})", prompt_steps)
                for kind, n in (("prompt", prompt), ("real", real), ("generated", generated))
            }
            prompts.append(
                {
                    "id": f"{i:02d}",
                    "song": hashlib.sha256(midi).hexdigest(),
                    "source": name,
                    "title": title,
                    "prompt_steps": prompt_steps,
                    "bar_steps": bar,
                    "tokens": {"prompt": [1], "real": [2], "generated": [2]},
                    "files": files,
                }
            )
        samples_json = {
            "variant": variant,
            "scheme": "index",
            "renderer": None,
            "steps_per_beat": 4,
            "seconds": 1.5,
            "tokens_per_s": 100.0 + 10 * k,
            "length": 512,
        }
        (folder / "samples.json").write_text(json.dumps({**samples_json, "prompts": prompts}))


def _write_train_metrics(metrics: Path) -> None:
    """metrics/train/V/ written by DVCLive itself, as the trainer does."""
    from dvclive import Live

    for k, variant in enumerate(VARIANTS):
        live = Live(
            str(metrics / "train" / variant), dvcyaml=False, save_dvc_exp=False, report=None
        )
        for step in range(40):
            live.log_metric("train_loss", 5.0 * math.exp(-step / 15) + 1.5 - 0.1 * k)
            if step % 10 == 9:
                live.log_metric("val_loss", 5.0 * math.exp(-step / 15) + 1.6 - 0.1 * k)
            live.next_step()
        live.end()


def song_cells(variant: str, cached: bool = False) -> SongCells:
    """plots/eval/V/songs.csv: vanilla's per-song NLL varies by song; a variant adds its level
    and memory gains to every token of a cell, plus a little per-song noise. `cached`: the
    same with the copy cache's gains (plots/eval/V/cache/songs.csv)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 300, (TEST_SONGS, len(CELLS)))
    vanilla = rng.normal(2.0, 0.2, tokens.shape)
    noise = np.random.default_rng(len(variant)).normal(0, 0.02, tokens.shape)
    gain = np.array([MEMORY[variant].get(cell, 0.0) for cell in CELLS])
    per_token = vanilla + (LEVEL[variant] + gain + noise if variant != "vanilla" else 0)
    per_token += np.array([CACHE_GAIN.get(cell, 0.0) for cell in CELLS]) if cached else 0
    songs = tuple(hashlib.sha256(bytes([i])).hexdigest() for i in range(TEST_SONGS))
    return SongCells(songs, per_token * tokens, tokens)


def eval_metrics(variant: str) -> dict:
    """metrics/eval/V.json in the agreed layout, its NLLs summed from songs.csv as evaluate's."""
    table = song_cells(variant)
    nll = table.mean("all")
    buckets = ["0-127", "128-255", "256-511", "512-1023", "1024+"]
    music = {"mean": 0.9, "low": 0.8, "high": 0.95}
    return {
        "nll": nll,
        "perplexity": math.exp(nll),
        "bits_per_note": nll * 2 / math.log(2),
        "bits_per_note_interval": {"mean": nll * 2 / math.log(2), "low": 5.0, "high": 6.5},
        "tokens_per_note": 2.0,
        "bits_per_second": nll * 4 / math.log(2),  # two notes a second
        "songs": {  # a note every two tokens of a song
            "sha256": list(table.songs),
            "nll_sum": table.cell("all").nll_sum.tolist(),
            "notes": (table.cell("all").tokens / 2).tolist(),
        },
        "accuracy": 0.45,
        "loss_by_type": {"note": 2.3, "duration": 1.1, "separator": 0.9, "eos": 0.2},
        "nll_by_position": {b: nll + 0.3 - 0.1 * j for j, b in enumerate(buckets)},
        "early_nll": table.mean("early"),
        "late_nll": table.mean("late"),
        "late_from": 256,
        "repeat": {"first": table.mean("repeat_first"), "second": table.mean("repeat_second")},
        "repeat_ngram": 8,
        "xl_mem_len": 128,
        "copy_cache": {
            "order": 8,
            "weight": 0.35,
            "val_nll": 1.5,
            "nll": song_cells(variant, cached=True).mean("all"),
            "bits_per_note": song_cells(variant, cached=True).mean("all") * 2 / math.log(2),
        },
        "seeds": [{"seed": 0, "folder": "", "nll": nll}],
        "repeat_by_reach": {
            r: {
                "nll": table.mean(f"reach_{r}"),
                "tokens": int(table.cell(f"reach_{r}").tokens.sum()),
            }
            for r in REACH
        },
        "music": {
            "prompts": 2,
            "generated": {"pitch_class_entropy": music, "scale_consistency": music},
            "real": {"pitch_class_entropy": music, "scale_consistency": music},
            "overlap": {"pitch": music, "duration": music, "ioi": music, "polyphony": music},
            "checks": {
                "real": {"copied_span": {"mean": 12.0, "low": 9.0, "high": 15.0}},
                "generated": {"copied_span": {"mean": 31.0, "low": 20.0, "high": 44.0}},
            },
        },
    }


def _write_eval(metrics: Path, plots: Path) -> None:
    (metrics / "eval").mkdir(parents=True)
    for variant in VARIANTS:
        data = eval_metrics(variant)
        (metrics / "eval" / f"{variant}.json").write_text(json.dumps(data))
        (plots / "eval" / variant).mkdir(parents=True)
        write_song_cells(plots / "eval" / variant / "songs.csv", song_cells(variant))
        (plots / "eval" / variant / "cache").mkdir()
        write_song_cells(
            plots / "eval" / variant / "cache" / "songs.csv", song_cells(variant, True)
        )
        for png, values in (
            ("nll_by_position.png", list(data["nll_by_position"].values())),
            ("histograms.png", [o["mean"] for o in data["music"]["overlap"].values()]),
        ):
            fig = Figure(figsize=(4, 3), dpi=60)
            fig.add_subplot().plot(values, "o-")
            fig.savefig(plots / "eval" / variant / png)
    interval = {"mean": 6.9, "low": 6.5, "high": 7.3}
    baselines = {
        "unigram": {"nll": 3.2, "bits_per_note": 9.1, "perplexity": math.exp(3.2)},
        "ngram": {"order": 4, "nll": 2.4, "bits_per_note": 6.9, "perplexity": math.exp(2.4)},
    }
    for values in baselines.values():
        values |= {"bits_per_note_interval": interval, "tokens_per_note": 2.0}
    (metrics / "baselines.json").write_text(json.dumps(baselines))


@pytest.fixture(scope="module")
def base_inputs(tmp_path_factory, sources) -> Path:
    """metrics/, plots/, samples/ for the three variants (built once; tests copy them)."""
    root = tmp_path_factory.mktemp("inputs")
    params = _params()
    _write_samples(root / "samples" / "index", sources, params)  # the branch of one scheme
    _write_train_metrics(root / "metrics" / "index")
    _write_eval(root / "metrics" / "index", root / "plots" / "index")
    (root / "corpus").mkdir()
    for name, midi in sources:
        (root / "corpus" / f"{name.replace('/', '_')}.mid").write_bytes(midi)
    shards = shards_via_stages(root / "data", source="dir", dir=str(root / "corpus"))
    shards.rename(root / "data" / "index")
    (root / "data" / "shards").mkdir()
    (root / "data" / "index").rename(root / "data" / "shards" / "index")
    return root


@pytest.fixture
def inputs(base_inputs, tmp_path) -> Path:
    return Path(shutil.copytree(base_inputs, tmp_path / "inputs"))


def _params() -> dict:
    params = load_params(ROOT / "params.yaml")
    params["train"]["variants"] = list(VARIANTS)
    return params


def build(inputs: Path, params: dict) -> str:
    """Run the report stage on `inputs`, writing inputs/reports."""
    args = argparse.Namespace(
        out=inputs / "reports",
        metrics=inputs / "metrics",
        plots=inputs / "plots",
        samples=inputs / "samples",
        shards=inputs / "data" / "shards",  # each with the branch of the one scheme, index
    )
    return report_stage.run(args, params)


# --- checking pages in the browser -----------------------------------------------------------


def _path(url: str) -> Path:
    parsed = urlparse(url)
    assert parsed.scheme == "file", f"page refers outside the report: {url}"
    return Path(unquote(parsed.path))


def check_page(page, html: Path, inside: Path) -> dict:
    """Open `html`; no console error, and every audio, image and MIDI link works from `inside`."""
    page.open(html.as_uri())
    facts = page.evaluate(PAGE_FACTS)
    assert page.errors == []
    assert page.dialogs == []
    assert facts["scripts"] == 0
    for audio in facts["audio"]:
        path = _path(audio["src"])
        assert path.is_relative_to(inside) and path.is_file()
        with wave.open(str(path)) as wav:
            seconds = wav.getnframes() / wav.getframerate()
        assert audio["error"] is None
        assert audio["duration"] == pytest.approx(seconds, abs=0.05)
    if facts["audio"]:
        assert facts["played"] > 0.1, "the first audio element did not play"
    for image in facts["images"]:
        assert _path(image["src"]).is_relative_to(inside)
        assert image["width"] > 0, f"broken image {image['src']}"
    for href in facts["midi"]:
        path = _path(href)
        assert path.is_relative_to(inside)
        assert symusic.Score.from_midi(path.read_bytes()).note_num() > 0
    for href in facts["links"]:
        assert _path(href.split("#")[0]).exists(), f"dead link {href}"
    return facts


def test_report_loads_in_chromium_with_working_media(browser_page, inputs):
    build(inputs, _params())
    reports = inputs / "reports"
    (run_dir,) = (reports / "runs").iterdir()
    n_prompts, rows = len(CHORALES), 2 + len(VARIANTS)  # prompt, real, one per variant
    for html, inside in ((reports / "index.html", run_dir), (run_dir / "index.html", run_dir)):
        facts = check_page(browser_page, html, inside)
        # every piece of every prompt, and the first prompt's continuations again up front
        featured = rows - 1
        assert len(facts["midi"]) == n_prompts * rows
        assert len(facts["audio"]) == n_prompts * rows + featured
        # loss, NLL-by-position and forest charts, a histogram chart per variant, the rolls
        assert len(facts["images"]) == 3 + len(VARIANTS) + n_prompts * rows + featured
        for word in ("unigram baseline", "ngram baseline (order 4)", *VARIANTS):
            assert word in facts["text"]
        assert "src_sha256" not in facts["text"]  # the hash itself is shown, not a key name
        assert json.loads((run_dir / "run.json").read_text())["code"]["src_sha256"] in facts["text"]
    assert len(facts["runs"]) == 0  # a run's own page has no history table


FIRST_SCREEN = (1280, 800)  # a laptop's browser window, in CSS pixels
ON_FIRST_SCREEN = """(() => {
  const box = (selector) => {
    const element = document.querySelector(selector);
    if (!element) return null;
    const r = element.getBoundingClientRect();
    return {top: r.top, bottom: r.bottom, width: r.width, loaded: element.naturalWidth ?? null};
  };
  return {
    height: window.innerHeight, answer: box("ul.answer"), verdict: box("#answer .verdict"),
    forest: box("#forest img"), player: box("#featured audio"),
  };
})()"""


def test_the_first_screen_holds_the_answer_the_forest_plot_and_a_player(browser_page, inputs):
    """What a reader sees before scrolling, in a 1280 x 800 window: the verdict, a sentence per
    variant, the forest plot (drawn) and a player of the first prompt; a screenshot of it."""
    build(inputs, _params())
    width, height = FIRST_SCREEN
    browser_page.call(
        "Emulation.setDeviceMetricsOverride",
        width=width, height=height, deviceScaleFactor=1, mobile=False,
    )  # fmt: skip
    browser_page.open((inputs / "reports" / "index.html").as_uri())
    seen = browser_page.evaluate(ON_FIRST_SCREEN)
    assert seen["height"] == height
    for part in ("verdict", "answer", "forest", "player"):
        assert seen[part] is not None, f"no {part} on the page"
        assert seen[part]["top"] >= 0 and seen[part]["bottom"] <= height, (part, seen[part])
    assert seen["forest"]["loaded"] > 0 and seen["forest"]["width"] >= 400
    shot = base64.b64decode(browser_page.call("Page.captureScreenshot", format="png")["data"])
    with Image.open(io.BytesIO(shot)) as image:
        assert image.size == FIRST_SCREEN
        assert len(image.getcolors(2**16) or range(2**16)) > 64  # drawn, not a blank screen


def test_report_states_plainly_whether_memory_helped(browser_page, inputs):
    summary = build(inputs, _params())
    helped = "xl on repeat probe, xl_knn on repeat probe, xl_knn on far repeats, "
    helped += "xl on XL-reach repeats, xl_knn on XL-reach repeats"
    assert f"Yes: memory helped where it can reach ({helped})." in summary
    page_text = check_page(browser_page, inputs / "reports" / "index.html", inputs)["text"]
    assert "Yes: memory helped where it can reach" in page_text
    vanilla = song_cells("vanilla")
    for variant in ("xl", "xl_knn"):
        effect = memory_effect(song_cells(variant), vanilla, "second_vs_first").as_dict()
        assert effect["high"] < 0
        assert f"{variant} {format_interval(effect)} (" in page_text
        far = memory_effect(song_cells(variant), vanilla, "beyond_vs_none").as_dict()
        outcome = "helped" if variant == "xl_knn" else "no detectable effect"
        assert f"{variant} {format_interval(far)} (" in page_text
        assert (far["high"] < 0) == (variant == "xl_knn")
        assert f"{format_interval(far)}\n{outcome}" in page_text  # the memory-effect table
    # Repeat by reach: token counts and every variant's NLL per bucket.
    for r in REACH:
        tokens = int(vanilla.cell(f"reach_{r}").tokens.sum())
        nlls = "\t".join(f"{song_cells(v).mean(f'reach_{r}'):.3f}" for v in VARIANTS)
        assert f"\t{tokens}\t{nlls}" in page_text
    assert "0.900 [0.800, 0.950]" in page_text  # musical metrics with their interval


def test_memory_is_held_to_vanilla_plus_a_copy_cache(browser_page, inputs):
    """The sceptic's reference: each memory variant against vanilla's cached scores, paired by
    song, in the verdict and in its own table; and the cache's row among the baselines."""
    build(inputs, _params())
    page_text = check_page(browser_page, inputs / "reports" / "index.html", inputs)["text"]
    cached = song_cells("vanilla", cached=True)
    # xl_knn's far-repeat gain (-0.9) beats the cache's (-0.5); xl's (none) does not
    for variant, outcome in (("xl", "the cache is better"), ("xl_knn", "beats the cache")):
        beyond = paired_difference(
            song_cells(variant).cell("reach_beyond"), cached.cell("reach_beyond")
        ).as_dict()
        assert cache_outcome(beyond) == outcome
        assert f"{format_interval(beyond)}\n{outcome}" in page_text  # the table
        assert f"context occurred only beyond XL's reach {format_interval(beyond)}" in page_text
    assert "Against vanilla + a copy cache (order 8, weight 0.35, fit on the validation split" in (
        page_text
    )
    assert "vanilla + copy cache (order 8, weight 0.35)" in page_text


def test_midi_track_name_is_shown_as_text(browser_page, inputs):
    build(inputs, _params())
    index = inputs / "reports" / "index.html"
    facts = check_page(browser_page, index, inputs)  # no script element, no alert
    assert f"Prompt 00: {XSS}" in facts["text"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in index.read_text()


def test_midi_track_name_is_escaped_in_the_html(inputs):
    """Without a browser too: the track name reaches the page as text, never as markup."""
    build(inputs, _params())
    for page in (
        inputs / "reports" / "index.html",
        *(inputs / "reports" / "runs").glob("*/index.html"),
    ):
        html = page.read_text()
        assert "Prompt 00: &lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert XSS not in html and "<script" not in html


def test_the_data_section_shows_what_encoding_did_to_the_notes(inputs):
    """The counts of shard's stats.json, by cause and as a share of the notes read."""
    build(inputs, _params())
    stats = json.loads((inputs / "data" / "shards" / "index" / "stats.json").read_text())
    read, by_cause = stats["notes"]["read"], stats["notes"]["by_cause"]
    assert read > 0 and by_cause["duplicate"] > 0  # the chorales' voices meet in unisons
    html = (inputs / "reports" / "index.html").read_text()
    assert f"Of {read} notes read, {stats['notes']['kept']} kept" in html
    row = "<tr><th>same tick, key and instrument as another: dropped</th>"
    share = 100 * by_cause["duplicate"] / read
    assert f"{row}<td>{by_cause['duplicate']}</td><td>{share:.1f}%</td></tr>" in html
    run = json.loads(next((inputs / "reports" / "runs").glob("*/run.json")).read_text())
    assert run["summary"]["data"]["notes"]["by_cause"] == by_cause
    assert "Every file followed the rules of the MIDI format." in html


def test_schemes_are_compared_by_bits_per_note_paired_by_song(inputs):
    """A second scheme whose models spend 10% more NLL on every song's notes, and which lost one
    test song: its rows say +10% bits per note against index, by hand, on the songs both hold."""
    for kind in ("metrics", "plots", "samples"):
        shutil.copytree(inputs / kind / "index", inputs / kind / "events")
    shutil.copytree(inputs / "data/shards/index", inputs / "data/shards/events")
    for variant in VARIANTS:
        path = inputs / "metrics" / "events" / "eval" / f"{variant}.json"
        metrics = json.loads(path.read_text())
        songs = metrics["songs"]
        songs["nll_sum"] = [1.1 * x for x in songs["nll_sum"][1:]]
        songs["sha256"], songs["notes"] = songs["sha256"][1:], songs["notes"][1:]
        path.write_text(json.dumps(metrics))
    params = _params()
    params["encode"]["schemes"] = ["index", "events"]
    build(inputs, params)
    run = json.loads(next((inputs / "reports" / "runs").glob("*/run.json")).read_text())
    rows = {(r["scheme"], r["name"]): r for r in run["summary"]["schemes"]}
    assert len(rows) == 2 * (len(VARIANTS) + 1)  # and one baseline per scheme
    for variant in VARIANTS:
        assert rows[("index", variant)]["vs_first"] is None
        index = json.loads((inputs / "metrics/index/eval" / f"{variant}.json").read_text())
        nll, notes = (np.array(index["songs"][k][1:]) for k in ("nll_sum", "notes"))
        by_hand = 0.1 * nll.sum() / math.log(2) / notes.sum()
        compared = rows[("events", variant)]["vs_first"]
        assert compared["mean"] == pytest.approx(by_hand)
        assert 0 < compared["low"] < by_hand < compared["high"]
    assert rows[("events", "ngram baseline")]["bits_per_note"] == 6.9
    html = (inputs / "reports" / "index.html").read_text()
    assert "<h2>Token schemes</h2>" in html and "<th>vs index (bits/note)</th>" in html
    assert "<th>vs vanilla (bits/note)</th>" in html


def test_variants_are_compared_with_vanilla_in_each_scheme_paired_by_song(inputs):
    """Each model's bits per note against vanilla's in the same scheme, on the same songs: the
    mean is the difference of the summed NLLs over the summed notes, by hand."""
    build(inputs, _params())
    run = json.loads(next((inputs / "reports" / "runs").glob("*/run.json")).read_text())
    rows = {(r["scheme"], r["name"]): r for r in run["summary"]["schemes"]}
    vanilla = json.loads((inputs / "metrics/index/eval/vanilla.json").read_text())["songs"]
    assert rows[("index", "vanilla")]["vs_reference"] is None
    for variant in VARIANTS[1:]:
        songs = json.loads((inputs / f"metrics/index/eval/{variant}.json").read_text())["songs"]
        assert songs["sha256"] == vanilla["sha256"]
        nll = np.array(songs["nll_sum"]) - np.array(vanilla["nll_sum"])
        by_hand = nll.sum() / math.log(2) / np.sum(vanilla["notes"])
        compared = rows[("index", variant)]["vs_reference"]
        assert compared["mean"] == pytest.approx(by_hand)
        assert compared["low"] <= by_hand <= compared["high"]


def test_files_that_lost_many_notes_or_were_repaired_are_shown(inputs):
    path = inputs / "data" / "shards" / "index" / "stats.json"
    stats = json.loads(path.read_text())
    worst = {"source": XSS, "sha256": "0" * 64, "read": 10, "dropped": 6, "causes": "drums 6"}
    stats["notes"].update(flagged=1, flagged_worst=[worst])
    stats["repairs"]["clipped_bytes"] = {"files": 2, "count": 7}
    path.write_text(json.dumps(stats))
    build(inputs, _params())
    html = (inputs / "reports" / "index.html").read_text()
    assert "<tr><th>data bytes above 127 clipped</th><td>2</td><td>7</td></tr>" in html
    assert "1 files lost more than 20.0% of their notes" in html
    assert "<li>&lt;script&gt;alert(1)&lt;/script&gt;: 6 of 10 notes dropped (drums 6)</li>" in html


def test_missing_audio_shows_the_reason(browser_page, inputs):
    reason = "no synthesizer installed (pip install midirenderer)"
    for variant in VARIANTS:
        samples_json = inputs / "samples" / "index" / variant / "samples.json"
        samples = json.loads(samples_json.read_text())
        samples["renderer"] = reason
        for prompt in samples["prompts"]:
            for files in prompt["files"].values():
                (inputs / "samples" / "index" / variant / files["wav"]).unlink()
                files["wav"] = None
        samples_json.write_text(json.dumps(samples))
    build(inputs, _params())
    facts = check_page(browser_page, inputs / "reports" / "index.html", inputs)
    assert facts["audio"] == []
    every_piece, featured = len(CHORALES) * (2 + len(VARIANTS)), 1 + len(VARIANTS)
    assert facts["text"].count(f"no audio: {reason}") == every_piece + featured


def _files(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_second_run_is_kept_beside_the_first_and_the_index_lists_both(browser_page, inputs):
    params = _params()
    build(inputs, params)
    runs = inputs / "reports" / "runs"
    (first,) = runs.iterdir()
    first_files = _files(first)

    changed = copy.deepcopy(params)
    changed["generate"]["temperature"] = 0.7
    xl = eval_metrics("xl") | {"nll": 1.65}
    xl_before = eval_metrics("xl")["nll"]
    (inputs / "metrics" / "index" / "eval" / "xl.json").write_text(json.dumps(xl))
    build(inputs, changed)

    second = next(p for p in runs.iterdir() if p != first)
    assert sorted(p.name for p in runs.iterdir()) == [first.name, second.name]  # sorts by time
    assert _files(first) == first_files  # never rewritten
    recorded = json.loads((second / "run.json").read_text())
    assert recorded["id"] == second.name
    assert recorded["params"]["generate"]["temperature"] == 0.7
    assert recorded["summary"]["variants"]["xl"]["nll"] == 1.65

    facts = check_page(browser_page, inputs / "reports" / "index.html", inputs / "reports")
    newest, oldest = facts["runs"]
    assert newest.startswith(second.name) and oldest.startswith(first.name)
    assert "generate.temperature: 1.0 \u2192 0.7" in newest
    assert f"xl: NLL {xl_before:.3f} \u2192 1.650 ({1.65 - xl_before:+.3f})" in newest
    assert "vanilla: unchanged" in newest
    assert "first run" in oldest
    # The second run's own page tells what changed since the first.
    own = check_page(browser_page, second / "index.html", second)["text"]
    assert "generate.temperature: 1.0 \u2192 0.7" in own


def _add_seed(inputs: Path, variant: str, seed: int, shift: float) -> None:
    """A further training seed of `variant`: its songs.csv is the main one's, every token's
    NLL moved by `shift`, in plots/eval/V/seed-S as evaluate writes it."""
    table = song_cells(variant)
    moved = SongCells(table.songs, table.nll_sum + shift * table.tokens, table.tokens)
    (inputs / "plots" / "index" / "eval" / variant / f"seed-{seed}").mkdir()
    write_song_cells(
        inputs / "plots" / "index" / "eval" / variant / f"seed-{seed}" / "songs.csv", moved
    )
    path = inputs / "metrics" / "index" / "eval" / f"{variant}.json"
    metrics = json.loads(path.read_text())
    entry = {"seed": seed, "folder": f"seed-{seed}", "nll": metrics["nll"] + shift}
    path.write_text(json.dumps(metrics | {"seeds": [*metrics["seeds"], entry]}))


def test_report_shows_each_seeds_difference_from_vanillas_model_of_that_seed(inputs):
    """train.seeds 2: per cell, the difference of each seed against vanilla's of the same seed
    (seed 1 of xl is 0.25 worse everywhere than its seed 0, vanilla's seed 1 0.05 better), next
    to the song-bootstrap interval of the main seed."""
    for variant, shift in (("vanilla", -0.05), ("xl", 0.25), ("xl_knn", 0.0)):
        _add_seed(inputs, variant, 1, shift)
    build(inputs, _params())
    (run,) = (inputs / "reports" / "runs").iterdir()
    compared = json.loads((run / "run.json").read_text())["summary"]["vs_vanilla"]
    assert compared["xl"]["seeds"] == [0, 1]
    xl, vanilla = song_cells("xl"), song_cells("vanilla")
    main = xl.mean("late") - vanilla.mean("late")
    assert compared["xl"]["seed_cells"]["late"] == pytest.approx([main, main + 0.30])
    assert compared["xl_knn"]["seed_cells"]["all"][1] == pytest.approx(
        xl_knn_all := song_cells("xl_knn").mean("all") - vanilla.mean("all") + 0.05
    )
    html = (run / "index.html").read_text()
    assert "the difference of each training seed (0, 1)" in html
    assert f"seeds: {main:+.3f} / {main + 0.30:+.3f}" in html
    assert f"/ {xl_knn_all:+.3f}</span>" in html


def test_one_seed_shows_no_seed_spread(inputs):
    build(inputs, _params())
    (run,) = (inputs / "reports" / "runs").iterdir()
    html = (run / "index.html").read_text()
    assert "muted seeds" not in html and "each training seed" not in html


def _edit_samples(inputs: Path, variant: str, edit) -> None:
    path = inputs / "samples" / "index" / variant / "samples.json"
    samples = json.loads(path.read_text())
    edit(samples["prompts"][0])
    path.write_text(json.dumps(samples))


def _rename_media(prompt: dict) -> None:
    prompt["files"]["real"]["png"] = "../../../outside.png"


def _other_song(prompt: dict) -> None:
    prompt["song"] = "0" * 64


def _other_songs(inputs: Path, variant: str) -> None:
    table = song_cells(variant)
    other = SongCells(("0" * 64, *table.songs[1:]), table.nll_sum, table.tokens)
    write_song_cells(inputs / "plots" / "index" / "eval" / variant / "songs.csv", other)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (
            lambda i: (i / "metrics/index/eval/xl_knn.json").unlink(),
            r"missing .*metrics/index/eval/xl_knn\.json",
        ),
        (
            lambda i: (i / "metrics/index/train/xl").rename(i / "gone"),
            r"missing .*train/xl/metrics\.json",
        ),
        (
            lambda i: (i / "samples/index/xl/01_real.wav").unlink(),
            r"missing .*samples/index/xl/01_real\.wav",
        ),
        (lambda i: _edit_samples(i, "xl", _rename_media), r"bad media file name '\.\./"),
        (
            lambda i: _edit_samples(i, "xl", _other_song),
            r"samples/index/xl/samples.json continues other",
        ),
        (
            lambda i: (i / "plots/index/eval/xl/songs.csv").unlink(),
            r"missing .*plots/index/eval/xl/songs\.csv",
        ),
        (lambda i: _other_songs(i, "xl_knn"), r"eval/xl_knn/songs.csv scores other songs than"),
    ],
    ids=["eval", "train", "audio", "media-name", "prompts", "songs", "other-songs"],
)
def test_bad_inputs_are_named_and_nothing_is_written(inputs, breakage, message):
    breakage(inputs)
    with pytest.raises(MidigenError, match=message):
        build(inputs, _params())
    assert not (inputs / "reports").exists()


def interval(mean: float, low: float, high: float) -> dict[str, float]:
    return {"mean": mean, "low": low, "high": high}


def compared(effects: dict[str, dict], level: dict | None = None) -> dict:
    """A summary's vs_vanilla entry: the given memory effects (others 0 [-0.01, +0.01]) and a
    paired difference `level` on every cell."""
    level = level or interval(0.0, -0.01, 0.01)
    none = interval(0.0, -0.01, 0.01)
    return {
        "cells": {cell: level for cell in CELLS},
        "effects": {c: effects.get(c, none) for c in CONTRASTS},
        "vs_cache": {cell: level for cell in CACHE_CELLS},
    }


def summary_with(**variants) -> dict:
    return {
        "variants": {"vanilla": {}, **{n: {} for n in variants}},
        "vs_vanilla": variants,
        "copy_cache": {"order": 8, "weight": 0.35, "nll": 1.5, "bits_per_note": 3.0},
    }


HELPED, HURT = interval(-0.4, -0.6, -0.2), interval(0.05, 0.01, 0.09)


@pytest.mark.parametrize(
    ("xl", "xl_knn", "headline"),
    [
        ({"second_vs_first": HELPED}, {}, "Yes: memory helped where it can reach (xl on repeat"),
        ({}, {"late_vs_early": HURT}, "No: memory hurt where it can reach (xl_knn on late"),
        ({"beyond_vs_none": HELPED}, {"xl_vs_none": HURT}, "Mixed: memory helped (xl on far"),
        ({}, {}, "No detectable effect of memory"),
        ({"second_vs_first": interval(-0.3, -0.6, 0.0)}, {}, "No detectable effect"),  # touches 0
    ],
)
def test_memory_verdict_follows_the_memory_effect_intervals(xl, xl_knn, headline):
    said, details = memory_verdict(summary_with(xl=compared(xl), xl_knn=compared(xl_knn)))
    assert said.startswith(headline)
    assert "xl +0.000 [-0.010, +0.010]" in details[0]  # the level, all tokens
    repeat = next(d for d in details if "repeat probe" in d)
    effect = format_interval(xl.get("second_vs_first", interval(0.0, -0.01, 0.01)))
    assert f"xl {effect} (+0.000 [-0.010, +0.010] minus +0.000 [-0.010, +0.010])" in repeat


def test_a_variant_better_everywhere_is_no_evidence_for_memory():
    """Lower on the first copy as much as on the second: a level, not memory."""
    lower = interval(-0.02, -0.03, -0.01)
    said, details = memory_verdict(summary_with(xl=compared({}, level=lower)))
    assert said.startswith("No detectable effect")
    assert "xl -0.020 [-0.030, -0.010]" in details[0]


def test_memory_verdict_without_vanilla_says_it_cannot_tell():
    said, details = memory_verdict({"variants": {"xl": {}}, "vs_vanilla": {}})
    assert said.startswith("Cannot tell") and details == []
    assert "this run has xl" in said


def test_floor_verdict_names_the_best_baseline_and_who_beats_it():
    summary = {
        "baselines": {
            "unigram": {"bits_per_note": 10.9},
            "4-gram": {"bits_per_note": 5.47},
            "8-gram": {"bits_per_note": 4.63},
        },
        "variants": {"vanilla": {"bits_per_note": 4.34}, "xl": {"bits_per_note": 4.70}},
    }
    said = floor_verdict(summary)
    assert said.startswith("Best baseline: 8-gram, 4.63 bits per note")
    assert "vanilla 4.34 (beats it)" in said and "xl 4.70 (does not beat it)" in said
    assert floor_verdict({"baselines": {}, "variants": summary["variants"]}) is None


def test_the_page_templates_show_missing_numbers_as_a_dash_and_refuse_unknown_names():
    """The filters the page uses, and a template naming a value the page was not given stops
    the report instead of leaving a blank cell."""
    env = _environment()
    num, signed, percent = (env.filters[f] for f in ("num", "signed", "percent"))
    assert (num(None), num(1.23456), num(2.5, 1)) == ("\u2014", "1.235", "2.5")
    assert (signed(None), signed(0.25), signed(-0.0625)) == ("\u2014", "+0.250", "-0.062")
    assert (percent(None), percent(0.1234)) == ("\u2014", "12.3%")
    with pytest.raises(jinja2.UndefinedError, match="'missing' is undefined"):
        env.from_string("{{ missing }}").render()
    assert env.from_string("{{ x }}").render(x="<b>") == "&lt;b&gt;"


def test_the_whole_verdict_text_by_hand():
    """Every sentence of a two-variant verdict, word for word."""
    xl = compared({"second_vs_first": HELPED})
    xl_knn = compared({"late_vs_early": HURT, "second_vs_first": HELPED})
    said, details = memory_verdict(summary_with(xl=xl, xl_knn=xl_knn))
    assert said == (
        "Mixed: memory helped (xl on repeat probe, xl_knn on repeat probe) and hurt "
        "(xl_knn on late positions)."
    )
    zero = "+0.000 [-0.010, +0.010]"
    assert details[0] == (
        f"All tokens, variant \u2212 vanilla: xl {zero}; xl_knn {zero} nats/token. A variant's "
        "overall level says nothing about memory; the memory effects below compare it where "
        "memory can reach against where it cannot (negative: memory helped; 95% intervals "
        "over songs)."
    )
    assert details[1] == (
        f"Memory effect, late positions against early ones: xl {zero} ({zero} minus {zero}): "
        f"no detectable effect; xl_knn +0.050 [+0.010, +0.090] ({zero} minus {zero}): hurt."
    )
    said, _ = memory_verdict({"variants": {}, "vs_vanilla": {}})
    assert said == (
        "Cannot tell whether memory helped: the comparison needs vanilla and xl or xl_knn "
        "(this run has no variants)."
    )
    said, _ = memory_verdict({"variants": {"xl": {}, "xl_knn": {}}, "vs_vanilla": {}})
    assert said.endswith("(this run has xl, xl_knn).")


def test_intervals_and_outcomes_at_their_edges():
    assert format_interval(None) == format_interval({"mean": None}) == "\u2014"
    assert format_interval({"mean": 0.5, "low": None, "high": None}) == "+0.500"
    assert format_interval(interval(0.5, 0.25, 0.75), signed=False) == "0.500 [0.250, 0.750]"
    assert effect_outcome({"mean": 0.1, "low": None, "high": 0.2}) == "not measurable (no tokens)"
    assert effect_outcome({"mean": 0.1, "low": 0.1, "high": None}) == "not measurable (no tokens)"
    assert effect_outcome(interval(0.1, 0.0, 0.2)) == "no detectable effect"  # touches zero
    assert effect_outcome(interval(0.1, 0.01, 0.2)) == "hurt"
    assert effect_outcome(interval(-0.1, -0.2, -0.01)) == "helped"


def test_a_variant_level_with_the_best_baseline_does_not_beat_it():
    summary = {
        "baselines": {"8-gram": {"bits_per_note": 4.5}, "unigram": {"bits_per_note": None}},
        "variants": {"vanilla": {"bits_per_note": 4.5}, "xl": {"bits_per_note": 4.25}},
    }
    assert floor_verdict(summary) == (
        "Best baseline: 8-gram, 4.50 bits per note; vanilla 4.50 (does not beat it); "
        "xl 4.25 (beats it). Lower is better."
    )


@pytest.mark.parametrize("name", [None, 3, "", "../x.wav", "a/x.wav", ".x.wav", "."])
def test_media_names_that_could_leave_their_folder_are_refused(name):
    with pytest.raises(MidigenError) as error:
        _plain_name(name, Path("samples/xl/samples.json"))
    assert str(error.value) == f"samples/xl/samples.json: bad media file name {name!r}"
    assert _plain_name("x.wav", Path("s.json")) == "x.wav"
