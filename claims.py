"""The paper's claims about cumulative violations, and how each comparison of two methods is
decided (stats.compare: Fieller's interval of the ratio, P(fewer), the written rule) and shown.
"""
from __future__ import annotations

import stats
from plots import LABELS

# The paper's claims about cumulative violations (section 5): MESA has up to 2x fewer than every
# other method on the robots, and is about as good as Multi-Task and better than RRL and
# Unconstrained SAC on Navigation and Cartpole; Recovery RL's paper: RRL (given its own data, as
# RRL-oracle is) has fewer than Unconstrained SAC.
FEWER_BY_HALF = ("halfcheetah", "ant")
AS_GOOD_AS_MULTITASK = ("navigation1", "navigation2", "cartpole")


def paper_claim(env: str, a: str, b: str) -> tuple[str, float] | None:
    """(claim, the paper's factor) about rows a and b (stats.verdict), or None where it makes none.
    Rows named mesa_* (e.g. the authors' variant) carry MESA's claims."""
    if a.startswith("mesa") and env in FEWER_BY_HALF and b in ("unconstrained", "rrl", "multitask"):
        return "fewer", 0.5
    if a.startswith("mesa") and env in AS_GOOD_AS_MULTITASK and b in ("unconstrained", "rrl", "multitask"):
        return ("as_few", 1.0) if b == "multitask" else ("fewer", 1.0)
    if a in ("rrl", "rrl_oracle") and b == "unconstrained":
        return "fewer", 1.0
    return None


def comparison_pairs(rows) -> list[tuple[str, str]]:
    """Every MESA row against every other row, and RRL (and RRL-oracle) against Unconstrained SAC."""
    rows = list(rows)
    pairs = [(a, b) for a in rows if a.startswith("mesa") for b in rows if not b.startswith("mesa")]
    return pairs + [(rrl, "unconstrained") for rrl in ("rrl", "rrl_oracle") if rrl in rows and "unconstrained" in rows]


def comparisons(env: str, summary: dict) -> dict:
    """summary.json's "comparisons": per pair "a vs b", stats.compare on the per-seed final
    cumulative violations and final returns, with the paper's claim where it makes one."""
    out = {}
    for a, b in comparison_pairs(summary):
        sa, sb = summary[a]["per_seed"], summary[b]["per_seed"]
        claim = paper_claim(env, a, b)
        out[f"{a} vs {b}"] = stats.compare(sa["cumulative_violations"], sb["cumulative_violations"],
                                           sa["final_return"], sb["final_return"], *(claim or (None,)))
    return out


def interval_text(low, high, fmt: str = "{:.2f}") -> str:
    """[low, high] as text ("inf" for an unbounded end); "-" for no interval."""
    if low is None:
        return "-"
    return "[" + ", ".join("inf" if v == float("inf") else fmt.format(v) for v in (low, high)) + "]"


def comparisons_table(found: dict) -> str:
    """The comparisons as a markdown table: ratio of cumulative violations with its interval,
    P(fewer), difference of returns, the paper's claim, the verdict and the seeds needed."""
    claim_text = lambda c: "-" if "claim" not in c else (  # noqa: E731
        f"fewer (x{c['paper_effect']:g})" if c["claim"] == "fewer" and c["paper_effect"] < 1 else
        "fewer" if c["claim"] == "fewer" else f"as few (at most x{stats.AS_FEW_MARGIN:.2f})")
    lines = ["| comparison | seeds | cumulative violations a / b [95% CI] | P(a seed of a has fewer) | "
             "return a - b [95% CI] | paper's claim | verdict | seeds needed |", "|" + "---|" * 8]
    for pair, c in found.items():
        a, b = pair.split(" vs ")
        ratio = ratio_cell(c)
        diff = "-" if c.get("return_difference") is None else \
            f"{c['return_difference']:.1f} {interval_text(*c['return_difference_ci95'], fmt='{:.1f}')}"
        lines.append(f"| {LABELS.get(a, a)} vs {LABELS.get(b, b)} | {c['seeds'][0]} / {c['seeds'][1]} | {ratio} | "
                     f"{c['probability_fewer']:.2f} | {diff} | {claim_text(c)} | {c.get('verdict') or '-'} | "
                     f"{c.get('seeds_needed') or '-'} |")
    return "\n".join(lines)


def ratio_cell(comparison: dict) -> str:
    """A comparison's ratio of cumulative violations and its interval, e.g. "0.89 [0.49, 1.54]"."""
    if comparison["ratio"] is None:
        return "-"
    return f"{comparison['ratio']:.2f} {interval_text(*(comparison['ci95'] or [None, None]))}"
