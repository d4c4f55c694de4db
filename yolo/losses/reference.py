"""The reference tables and picture: ``python -m yolo.losses table`` and ``python -m yolo.losses plot OUT.png``.

Every loss is shown at the config's default hyper-parameters (``LossConfig``); the stateful ones with the
statistics named in their row.
"""
import argparse

import torch

from yolo.config import LossConfig
from yolo.losses.classification import CLS_LOSSES, hard_truncated_ce, soft_truncated_ce, softmax_focal
from yolo.losses.detection import cls_hparams, conf_hparams, get_loss
from yolo.losses.objectness import BINARY_CONF_LOSSES, CONF_LOSSES

TABLE_GAMMAS = (0, 0.5, 1, 2, 3, 4, 5, 6, 7, 8, 16)
PLOT_GAMMAS = (0, 0.5, 1, 2, 5)
TABLE_PROBS = (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99)
CONF_TABLE_TARGETS = (1.0, 0.6, 0.0)      # a positive cell, a positive cell with IoU 0.6, a negative cell


def focal_table(gammas=TABLE_GAMMAS, num_classes: int = 11) -> torch.Tensor:
    """Softmax focal loss (alpha = None) for logits [0, 0.1, ..., 1.0], each class taken in turn as the ground
    truth: (len(gammas), num_classes); the gamma = 0 row is cross-entropy."""
    logits = (torch.arange(num_classes, dtype=torch.float64) / 10).expand(num_classes, -1)
    targets = torch.arange(num_classes)
    return torch.stack([softmax_focal(logits, targets, alpha=None, gamma=g) for g in gammas])


def _statistics(num_classes: int) -> dict:
    """{row label: (loss name, statistics)}: every class loss, the stateful ones with named statistics."""
    c = torch.arange(num_classes, dtype=torch.float64)
    rows = {name: (name, {}) for name in CLS_LOSSES if name not in ("seesaw", "efl")}
    rows["seesaw, equal counts"] = ("seesaw", {"class_counts": torch.ones(num_classes, dtype=torch.float64)})
    rows["seesaw, N_c = 2^(10-c)"] = ("seesaw", {"class_counts": 2.0 ** (num_classes - 1 - c)})
    rows["efl, no statistics"] = ("efl", {"pos_grad": torch.zeros_like(c), "neg_grad": torch.zeros_like(c)})
    rows["efl, g_c = 1 - c/10"] = ("efl", {"pos_grad": 1 - c / (num_classes - 1), "neg_grad": torch.ones_like(c)})
    return rows


def cls_table(num_classes: int = 11) -> dict:
    """{row label: (num_classes,) loss} of every classification loss at the config's defaults, for logits
    [0, 0.1, ..., 1.0] with each class taken in turn as the ground truth."""
    logits = (torch.arange(num_classes, dtype=torch.float64) / 10).expand(num_classes, -1)
    targets = torch.arange(num_classes)
    hparams = cls_hparams(LossConfig())
    return {label: get_loss(CLS_LOSSES, name, **hparams, **stats)(logits, targets)
            for label, (name, stats) in _statistics(num_classes).items()}


def conf_table(probs=TABLE_PROBS) -> dict:
    """{(target, loss name): (len(probs),) loss or None} of every confidence loss at the config's defaults with
    obj_weight = noobj_weight = 1, at p = sigmoid(logit) = ``probs``; None where a loss takes 0/1 targets only."""
    logits = torch.logit(torch.tensor(probs, dtype=torch.float64))
    hparams = {**conf_hparams(LossConfig()), "pos_weight": 1.0, "neg_weight": 1.0}
    table = {}
    for target in CONF_TABLE_TARGETS:
        for name in CONF_LOSSES:
            binary_only = name in BINARY_CONF_LOSSES and target not in (0.0, 1.0)
            table[target, name] = None if binary_only else get_loss(CONF_LOSSES, name, **hparams)(
                logits, torch.full_like(logits, target))
    return table


def print_tables():
    table = focal_table()
    print("softmax focal loss, logits [0, 0.1, ..., 1.0]; columns: ground-truth class; rows: gamma")
    print("gamma " + "".join(f"{c:>9d}" for c in range(table.shape[1])))
    for gamma, row in zip(TABLE_GAMMAS, table):
        print(f"{gamma:>5} " + "".join(f"{v:9.4f}" for v in row.tolist()))
    d = LossConfig()
    print(f"\nevery classification loss at the defaults (alpha {d.alpha}, gamma {d.gamma}, margin {d.margin}, k {d.k}, "
          f"poly_epsilon {d.poly_epsilon}, seesaw_p {d.seesaw_p}, seesaw_q {d.seesaw_q}, efl_scale {d.efl_scale}); "
          f"logits [0, 0.1, ..., 1.0]; columns: ground-truth class")
    rows = cls_table()
    print(f"{'loss':<24}" + "".join(f"{c:>8d}" for c in range(11)))
    for label, values in rows.items():
        print(f"{label:<24}" + "".join(f"{v:8.4f}" for v in values.tolist()))
    print(f"\nevery confidence loss at the defaults (conf_alpha {d.conf_alpha}, conf_gamma {d.conf_gamma} = QFL's "
          f"beta, conf_k {d.conf_k}, vfl_alpha {d.vfl_alpha}), obj_weight = noobj_weight = 1; columns: p = "
          f"sigmoid(logit)")
    print(f"{'target':<8}{'loss':<16}" + "".join(f"{p:>8}" for p in TABLE_PROBS))
    for (target, name), values in conf_table().items():
        cells = "".join(f"{'-':>8}" for _ in TABLE_PROBS) if values is None else \
            "".join(f"{v:8.4f}" for v in values.tolist())
        print(f"{target:<8}{name:<16}{cells}")


def plot(out: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = torch.linspace(1e-3, 1 - 1e-3, 500, dtype=torch.float64)
    fig, axes = plt.subplots(1, 3, figsize=(19, 5.5))
    _plot_softmax(axes[0], p)
    _plot_sigmoid(axes[1], p)
    _plot_conf(axes[2], p)
    for ax in axes:
        ax.set(ylim=(0, 5), xlim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def _plot_softmax(ax, p_t):
    # Two classes with logits (z, 0): p_t = sigmoid(z) sweeps (0, 1) and every softmax loss is exact.
    logits = torch.stack([torch.logit(p_t), torch.zeros_like(p_t)], dim=-1)
    targets = torch.zeros(len(p_t), dtype=torch.long)
    hparams = cls_hparams(LossConfig())
    for gamma in PLOT_GAMMAS:
        ax.plot(p_t, softmax_focal(logits, targets, alpha=None, gamma=gamma), label=f"focal, gamma={gamma}"
                if gamma else "cross-entropy (gamma=0)")
    ax.plot(p_t, hard_truncated_ce(logits, targets), "--", label="hard truncated CE, margin=0.6")
    for k in (10, 30):
        ax.plot(p_t, soft_truncated_ce(logits, targets, k=k), ":", label=f"soft truncated CE, margin=0.6, k={k}")
    ax.plot(p_t, get_loss(CLS_LOSSES, "poly1", **hparams)(logits, targets), "-.", label="poly1, epsilon=1")
    for counts, label in (((1.0, 1.0), "seesaw, equal counts"), ((10.0, 1.0), "seesaw, true class 10x more "
                                                                               "frequent")):
        stats = {"class_counts": torch.tensor(counts, dtype=torch.float64)}
        ax.plot(p_t, get_loss(CLS_LOSSES, "seesaw", **hparams, **stats)(logits, targets), "-.", label=label)
    ax.set(xlabel="softmax probability of the ground-truth class (2 classes)", ylabel="loss",
           title="Softmax class losses")


def _plot_sigmoid(ax, p):
    # One class, the target: each sigmoid loss is its positive term at p.
    logits, targets = torch.logit(p)[:, None], torch.zeros(len(p), dtype=torch.long)
    defaults = LossConfig()
    hparams = cls_hparams(defaults)
    for name in ("sigmoid_focal", "poly1_focal"):
        ax.plot(p, get_loss(CLS_LOSSES, name, **hparams)(logits, targets),
                label=f"{name} (alpha {defaults.alpha}, gamma {defaults.gamma:g})")
    for ratio in (1.0, 0.5, 0.0):
        stats = {"pos_grad": torch.tensor([ratio], dtype=torch.float64), "neg_grad": torch.ones(1, dtype=torch.float64)}
        gamma_j = defaults.gamma + defaults.efl_scale * (1 - ratio)
        ax.plot(p, get_loss(CLS_LOSSES, "efl", **hparams, **stats)(logits, targets), "--",
                label=f"efl, g = {ratio:g} (gamma_j = {gamma_j:g})" + (" = sigmoid_focal" if ratio == 1 else ""))
    ax.set(xlabel="sigmoid probability of the ground-truth class", title="Sigmoid class losses (positive term)")


def _plot_conf(ax, p):
    logits = torch.logit(p)
    hparams = {**conf_hparams(LossConfig()), "pos_weight": 1.0, "neg_weight": 1.0}
    for target, style in ((1.0, "-"), (0.6, "--"), (0.0, ":")):
        for colour, name in enumerate(("mse", "bce", "focal", "qfl", "vfl")):
            if name in BINARY_CONF_LOSSES and target not in (0.0, 1.0):
                continue
            ax.plot(p, get_loss(CONF_LOSSES, name, **hparams)(logits, torch.full_like(logits, target)), style,
                    color=f"C{colour}", label=f"{name}, target {target:g}")
    ax.set(xlabel="p = sigmoid(objectness logit)",
           title="Confidence losses (weights 1): target 1 solid, IoU 0.6 dashed, 0 dotted")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m yolo.losses", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("table", help="print the reference tables: softmax focal by gamma, every class and "
                                 "confidence loss at its defaults")
    plot_parser = sub.add_parser("plot", help="draw every loss against the probability of its target")
    plot_parser.add_argument("out", help="output image, e.g. losses.png")
    args = parser.parse_args(argv)
    if args.command == "table":
        print_tables()
    else:
        plot(args.out)
