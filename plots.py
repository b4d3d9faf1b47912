"""How every figure shows the methods: each method's name, colour and marker, each environment's
title, and the figure of per-episode curves (mean ± standard error over seeds) that summaries draw.
"""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import atomic_write  # noqa: E402

COLOURS = {"unconstrained": "tab:gray", "rrl": "tab:blue", "multitask": "tab:green", "mesa": "tab:red",
           "rrl_oracle": "tab:purple", "lr": "tab:olive", "sqrl": "tab:cyan",
           "rspo": "tab:pink", "rp": "tab:brown", "rcpo": "black", "carl": "tab:orange", "carl_offline": "gold",
           "mesa_authors": "darkred", "multitask_authors": "darkgreen"}
MARKERS = {"unconstrained": "s", "rrl": "^", "multitask": "D", "mesa": "o", "rrl_oracle": "v", "lr": "<",
           "sqrl": ">", "rspo": "P", "rp": "X", "rcpo": "*", "carl": "h", "carl_offline": "H",
           "mesa_authors": "p", "multitask_authors": "d"}
LABELS = {"unconstrained": "Unconstrained", "rrl": "RRL", "multitask": "Multi-Task", "mesa": "MESA",
          "rrl_oracle": "RRL-oracle", "lr": "LR", "sqrl": "SQRL", "rspo": "RSPO",
          "rp": "RP", "rcpo": "RCPO", "mesa_authors": "MESA (authors' variant)",
          "multitask_authors": "Multi-Task (authors' variant)", "carl": "CARL", "carl_offline": "CARL-Offline"}
TITLES = {"navigation1": "Navigation 1", "navigation2": "Navigation 2", "maze": "Maze",
          "cartpole": "Cartpole-Length", "halfcheetah": "HalfCheetah-Disabled", "ant": "Ant-Disabled"}


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing running mean over `window` episodes (shorter at the start)."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(0, idx - window)
    return (sums[idx] - sums[start]) / (idx - start)


def curves(runs: list[dict], key: str, window: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = min(len(r[key]) for r in runs)
    stacked = np.stack([smooth(r[key][:n], window) for r in runs])
    se = stacked.std(0, ddof=1) / np.sqrt(len(runs)) if len(runs) > 1 else np.zeros(n)
    return np.arange(1, n + 1), stacked.mean(0), se


def window_label(ylabel: str, window: int) -> str:
    """The y label with the running mean's window: "Return (running mean over 15 episodes)"."""
    if window <= 1:
        return ylabel
    if "(running mean)" in ylabel:
        return ylabel.replace("(running mean)", f"(running mean over {window} episodes)")
    return f"{ylabel} (running mean over {window} episodes)"


def draw_figure(by_method: dict, panels: list[tuple[str, str]], title: str, window: int = 1):
    """One panel per (episodes.csv column, y label), side by side; mean ± s.e. over each method's seeds.

    Every method's line has its own marker, placed at episodes staggered between methods, so that
    lines on top of each other (several methods with 0 violations) stay apart; the legend sits right
    of the panels, off the data; the y label gives a running mean's window.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 2.2, 3.6), squeeze=False,
                             layout="constrained")
    for ax, (key, ylabel) in zip(axes[0], panels):
        for i, (method, runs) in enumerate(by_method.items()):
            x, mean, se = curves(runs, key, window)
            every = max(1, len(x) // 8)
            ax.plot(x, mean, color=COLOURS.get(method), marker=MARKERS.get(method, "o"), markersize=5,
                    markevery=(i * every // len(by_method), every),
                    label=f"{LABELS.get(method, method)} ({len(runs)} seed{'s' * (len(runs) > 1)})")
            ax.fill_between(x, mean - se, mean + se, color=COLOURS.get(method), alpha=0.25, linewidth=0)
        ax.set(xlabel="Episode", ylabel=window_label(ylabel, window))
    fig.suptitle(title, fontsize=11)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside right center", frameon=False)
    return fig


def save_figure(path: str, by_method: dict, panels: list[tuple[str, str]], title: str, window: int = 1) -> None:
    """draw_figure as a PNG at path."""
    fig = draw_figure(by_method, panels, title, window)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
