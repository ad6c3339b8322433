"""What a run's numbers say, in words and one picture: the answer on the report's first screen
(a sentence per variant and a forest plot of its paired differences), the memory verdict and
the floor the baselines set. Pure functions of the run's summary (build.summarize)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from midigen.evaluation.paired import CONTRASTS
from midigen.registry import REFERENCE

CELL_LABELS = {  # the probe cells of songs.csv, as the report names them
    "all": "all tokens",
    "early": "early positions (in the song's first segment)",
    "late": "late positions (after the song's first segment)",
    "repeat_first": "repeat probe: first copy",
    "repeat_second": "repeat probe: second copy",
    "reach_none": "context never occurred before in the song",
    "reach_segment": "context occurred inside the segment",
    "reach_xl": "context occurred within XL's reach, before the segment",
    "reach_beyond": "context occurred only beyond XL's reach",
}
CACHE_CELLS = ("all", "reach_beyond", "repeat_second")  # where memory is held to the cache

CONTRAST_LABELS = {  # memory effects: (what memory can reach against what it cannot, short name)
    "late_vs_early": ("late positions against early ones", "late positions"),
    "second_vs_first": ("repeat probe: second copy against first", "repeat probe"),
    "beyond_vs_none": ("context beyond XL's reach against no earlier context", "far repeats"),
    "xl_vs_none": ("context within XL's reach against no earlier context", "XL-reach repeats"),
}


def format_interval(value: dict[str, float | None] | None, signed: bool = True) -> str:
    """'+0.012 [-0.003, +0.027]': a value and its 95% interval ('\u2014' where undefined)."""
    if not value or value["mean"] is None:
        return "\u2014"
    sign = "+" if signed else ""
    bounds = (
        "" if value["low"] is None else f" [{value['low']:{sign}.3f}, {value['high']:{sign}.3f}]"
    )
    return f"{value['mean']:{sign}.3f}{bounds}"


def effect_outcome(effect: dict[str, float | None]) -> str:
    """What a memory-effect interval says: only one that excludes zero is an effect."""
    if effect["low"] is None or effect["high"] is None:
        return "not measurable (no tokens)"
    if effect["high"] < 0:
        return "helped"
    if effect["low"] > 0:
        return "hurt"
    return "no detectable effect"


def memory_verdict(summary: dict[str, Any]) -> tuple[str, list[str]]:
    """(headline, sentences with the numbers): did memory help where it can reach?

    Only memory effects count (`midigen.evaluation.paired.CONTRASTS`: a variant's difference
    from vanilla where memory can reach minus where it cannot), and only where their 95%
    interval over songs excludes zero; a variant that is better or worse everywhere has no
    memory effect.
    """
    compared = summary["vs_vanilla"]
    if not compared:
        names = ", ".join(summary["variants"]) or "no variants"
        return (
            "Cannot tell whether memory helped: the comparison needs vanilla and xl or xl_knn "
            f"(this run has {names}).",
            [],
        )
    level = "; ".join(f"{n} {format_interval(c['cells']['all'])}" for n, c in compared.items())
    sentences = [
        f"All tokens, variant \u2212 vanilla: {level} nats/token. A variant's overall level says "
        "nothing about memory; the memory effects below compare it where memory can reach "
        "against where it cannot (negative: memory helped; 95% intervals over songs)."
    ]
    found: dict[str, list[str]] = {"helped": [], "hurt": []}
    for contrast, (reach, out_of_reach) in CONTRASTS.items():
        label, short = CONTRAST_LABELS[contrast]
        parts = []
        for name, c in compared.items():
            outcome = effect_outcome(c["effects"][contrast])
            if outcome in found:
                found[outcome].append(f"{name} on {short}")
            parts.append(
                f"{name} {format_interval(c['effects'][contrast])} "
                f"({format_interval(c['cells'][reach])} minus "
                f"{format_interval(c['cells'][out_of_reach])}): {outcome}"
            )
        sentences.append(f"Memory effect, {label}: {'; '.join(parts)}.")
    sentences.append(cache_sentence(summary))
    helped, hurt = ", ".join(found["helped"]), ", ".join(found["hurt"])
    if helped and hurt:
        headline = f"Mixed: memory helped ({helped}) and hurt ({hurt})."
    elif helped:
        headline = f"Yes: memory helped where it can reach ({helped})."
    elif hurt:
        headline = f"No: memory hurt where it can reach ({hurt}) and helped nowhere."
    else:
        headline = "No detectable effect of memory: every memory-effect interval includes zero."
    return headline, sentences


def cache_sentence(summary: dict[str, Any]) -> str:
    """Each memory variant against vanilla plus a copy cache, on all tokens and beyond XL's
    reach: a memory that only beats vanilla has not yet beaten the obvious reference."""
    cache = summary["copy_cache"]
    parts = []
    for name, c in summary["vs_vanilla"].items():
        cells = c["vs_cache"]
        words = [f"{CELL_LABELS[cell]} {format_interval(cells[cell])}" for cell in CACHE_CELLS]
        parts.append(f"{name} {', '.join(words)} ({cache_outcome(cells['reach_beyond'])})")
    return (
        f"Against vanilla + a copy cache (order {cache['order']}, weight {cache['weight']}, fit "
        f"on the validation split; {cache['nll']:.3f} nats/token), variant \u2212 that: "
        f"{'; '.join(parts)}."
    )


def cache_outcome(difference: dict[str, float | None]) -> str:
    """Beyond XL's reach, where only the kNN memory or the cache can look back."""
    outcome = effect_outcome(difference)
    return {"helped": "beats the cache", "hurt": "the cache is better"}.get(outcome, outcome)


def floor_verdict(summary: dict[str, Any]) -> str | None:
    """One sentence: does each variant beat the best baseline in bits per note?"""
    baselines = {
        name: b["bits_per_note"]
        for name, b in summary["baselines"].items()
        if b.get("bits_per_note") is not None
    }
    if not baselines or not summary["variants"]:
        return None
    best = min(baselines, key=baselines.get)
    parts = []
    for name, values in summary["variants"].items():
        word = "beats" if values["bits_per_note"] < baselines[best] else "does not beat"
        parts.append(f"{name} {values['bits_per_note']:.2f} ({word} it)")
    return (
        f"Best baseline: {best}, {baselines[best]:.2f} bits per note; "
        f"{'; '.join(parts)}. Lower is better."
    )


def answer_sentences(summary: dict[str, Any]) -> list[str]:
    """One plain sentence per variant against vanilla on the same test tokens: helped, no
    detectable effect or hurt (only an interval that excludes zero says either), by how much
    in percent of vanilla's loss, overall and on passages that return from beyond XL's reach;
    and whether vanilla with a copy cache does better."""
    vanilla = summary["variants"].get(REFERENCE, {})
    sentences = []
    for name, compared in summary["vs_vanilla"].items():
        overall = compared["cells"]["all"]
        parts = [f"{name}: {effect_outcome(overall)}: {_relative(overall, vanilla.get('nll'))}"]
        beyond = compared["cells"]["reach_beyond"]
        if beyond["mean"] is not None:
            parts.append(
                "on passages that return from beyond XL's reach, "
                + _relative(beyond, vanilla.get("reach_beyond_nll"))
            )
        cache = compared["vs_cache"]["all"]
        if cache["mean"] is not None:
            better = "better" if cache["mean"] < 0 else "worse"
            parts.append(
                f"against vanilla with a copy cache it is {better} by "
                f"{abs(cache['mean']):.3f} nats/token ({format_interval(cache)}: "
                f"{cache_outcome(cache)})"
            )
        sentences.append("; ".join(parts) + ".")
    return sentences


def _relative(difference: dict[str, float | None], reference: float | None) -> str:
    """'3.5% lower loss than vanilla (-0.041 [-0.063, -0.020] nats/token)'."""
    mean = difference["mean"]
    if mean is None:
        return "not measurable (no tokens)"
    way = "lower" if mean < 0 else "higher"
    share = f"{100 * abs(mean) / reference:.1f}% " if reference else ""
    return f"{share}{way} loss than vanilla ({format_interval(difference)} nats/token)"


FOREST_ROWS = (  # (label, where in a vs_vanilla entry)
    ("all tokens, vs vanilla", ("cells", "all")),
    ("beyond XL's reach, vs vanilla", ("cells", "reach_beyond")),
    *((f"memory effect: {CONTRAST_LABELS[c][1]}", ("effects", c)) for c in CONTRASTS),
    ("all tokens, vs vanilla + cache", ("vs_cache", "all")),
    ("beyond XL's reach, vs vanilla + cache", ("vs_cache", "reach_beyond")),
)


def plot_forest(summary: dict[str, Any], out: Path) -> None:
    """The paired differences and memory effects of every variant with their 95% intervals,
    one row per comparison, a dot per variant; left of zero the variant predicts better."""
    compared = summary["vs_vanilla"]
    fig = Figure(figsize=(6.4, 4.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    spread = 0.6 / max(len(compared), 1)
    for i, (name, entry) in enumerate(compared.items()):
        for row, (_, (group, key)) in enumerate(FOREST_ROWS):
            value = entry[group].get(key)
            if not value or value["mean"] is None:
                continue
            y = row + (i - (len(compared) - 1) / 2) * spread
            low, high = value["low"], value["high"]
            if low is not None:
                ax.plot([low, high], [y, y], color=f"C{i}", linewidth=2)
            ax.plot([value["mean"]], [y], "o", color=f"C{i}", label=name if row == 0 else None)
    ax.axvline(0, color="#444", linewidth=0.8)
    ax.set_yticks(range(len(FOREST_ROWS)), [label for label, _ in FOREST_ROWS], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("nats/token, 95% interval over songs (left of 0: better)")
    ax.grid(axis="x", alpha=0.3)
    if compared:
        ax.legend(fontsize=8, loc="best")
    fig.savefig(out, format="png")
