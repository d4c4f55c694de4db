"""The report: ``ablation.md`` (setup, per table the results with paired statistics, the long-tail buckets, the
convergence of every run and the per-seed values), ``ablation.csv`` (one row per variant and seed) and the charts.
"""
import csv
import logging
from pathlib import Path

from yolo.ablate.buckets import describe_edges
from yolo.ablate.execute import duration
from yolo.ablate.plots import write_bucket_chart, write_curves_chart, write_map_chart
from yolo.ablate.spec import METRIC, Ablation
from yolo.ablate.stats import ALPHA, CONFIDENCE, POWER, wilcoxon_floor
from yolo.ablate.tables import CONVERGED_GAIN, CSV_COLUMNS

logger = logging.getLogger(__name__)

SELECTION_TEXT = {
    "final": "`final`: the last epoch's weights (its EMA weights when trained with train.ema)",
    "best_val": "`best_val`: the epoch with the best VOC07 mAP@0.5 on data.val ({val}; never the test split)",
}


def describe_setup(ablation: Ablation, runs: list, results: dict, failures: dict, *, command: str,
                   wall_s: float, stale: list, running: dict | None = None) -> dict:
    """The report header's facts: command, times, machines, devices, rules, and the runs without results (failed,
    still running as a cluster job (``running``: {run key: job state}), or not run)."""
    variants = ablation.variants()
    done = [results[r.key] for r in runs if r.key in results]
    running = running or {}
    missing = [f"{' = '.join(r.variants)} seed {r.seed}"
               + (f" (failed: {failures[r.key]})" if r.key in failures else
                  f" ({running[r.key]})" if r.key in running else " (not run)")
               for r in runs if r.key not in results]
    train_s, grid_wall_s = training_time(done)
    members = sorted({(c, n) for result in done for c, n in result["class_images"].items()}, key=lambda x: -x[1])
    return {
        "name": ablation.name, "command": command, "wall_s": wall_s, "seeds": ablation.seeds,
        "train_s": train_s, "num_runs": len(runs), "num_finished": len(done), "grid_wall_s": grid_wall_s,
        "missing": missing, "stale": [str(p) for p in stale],
        "machines": sorted({result["machine"] for result in done}),
        "devices": sorted({f"{result['device']}, {result['precision']}" for result in done}),
        "revisions": sorted({result["code_revision"] for result in done}),
        "selection": SELECTION_TEXT[ablation.selection].format(
            val=", ".join(sorted({v.cfg.data.val for v in variants.values()}))),
        "test": ", ".join(sorted({v.cfg.data.test for v in variants.values()})),
        "train": ", ".join(sorted({v.cfg.data.train for v in variants.values()})),
        "buckets": describe_edges(ablation.buckets), "class_images": dict(members),
        "has_reference": any(v.reference is not None for v in variants.values()),
        "tuned": {v.label: v.tuned for v in variants.values() if v.tuned},
    }


def training_time(results: list[dict]) -> tuple[float, float]:
    """(seconds summed over the results' ``train_s``, about the wall time they took): runs that trained N at a time
    (``--jobs N``, recorded as ``runs_at_once``) shared the machine, so each counts 1/N of its time as wall time."""
    return (sum(r["train_s"] for r in results), sum(r["train_s"] / r.get("runs_at_once", 1) for r in results))


def format_markdown(summary: list[dict], setup: dict) -> str:
    """``ablation.md``: the header, then per table its results, buckets, convergence and per-seed values."""
    lines = [f"# Ablation `{setup['name']}`", "", *_header(setup)]
    for table in summary:
        lines += ["", f"## {table['title']}", "", *_results_table(table), "", *_verdict_sentences(table), "",
                  f"### {table['title']}: AP by class frequency", "", *_bucket_table(table), "",
                  f"### {table['title']}: convergence", "", *_convergence_table(table), "",
                  f"### {table['title']}: mAP per seed", "", *_per_seed_table(table)]
    return "\n".join(lines) + "\n"


def _header(setup: dict) -> list[str]:
    n = setup["seeds"]
    lines = [f"- Command: `{setup['command']}`",
             f"- Runs: {setup['num_finished']} of {setup['num_runs']} with a result; their training took "
             f"{duration(setup['train_s'])} summed over the runs (as recorded when each ran), about "
             f"{duration(setup['grid_wall_s'])} of wall time (a run trained N at a time counts 1/N); this "
             f"invocation took {duration(setup['wall_s'])}",
             f"- Machine: {'; '.join(setup['machines']) or '—'}; device and precision: "
             f"{'; '.join(setup['devices']) or '—'}; code: {', '.join(setup['revisions']) or '—'}",
             f"- Data: trained on {setup['train']}; checkpoint {setup['selection']}, fixed before any test score; "
             f"scored once on {setup['test']}",
             f"- mAP = VOC07 11-point mAP@0.5; mean ± sample std (ddof=1) over {n} seeds; {CONFIDENCE:.0%} CI = "
             f"Student t (scipy.stats). Δ = the paired per-seed difference to the baseline (same seed = same "
             f"initialisation, data order and augmentation) with its t CI; p = two-sided paired t-test, "
             f"Holm-corrected over the table's comparisons; \"better\" / \"worse\" when the corrected p < {ALPHA}; "
             f"wins = seeds where the variant is higher; MDE = the smallest true Δ this many seeds detect with "
             f"{POWER:.0%} power at the observed spread (noncentral t).",
             f"- At {n} seeds only the t-test can reach significance: an exact Wilcoxon signed-rank test cannot "
             f"go below p = {wilcoxon_floor(n):.4f} even when every seed agrees, and a bootstrap of {n} values has "
             f"too few distinct resamples for a trustworthy interval." if n <= 5 else
             f"- Seeds: {n}.",
             f"- Long tail: classes bucketed by training images holding them ({setup['buckets']}; LVIS's APr / "
             f"APc / APf idea with edges that fit this dataset); bucket AP = mean VOC07 AP of its classes.",
             f"- Converged: val mAP gained less than {CONVERGED_GAIN} over the last quarter of the epochs (the value at "
             f"3/4 of the epochs read off the line between the two evaluations around it)."]
    if setup["tuned"]:
        rows = [f"{label}: trial {t['trial']} (val mAP {t['value']:.4f}), "
                + ", ".join(f"{k} {param_text(v)}" for k, v in t["params"].items())
                for label, t in setup["tuned"].items()]
        lines.append("- Tuned (yolo.tune, `best.yaml`): each row trains at its best trial's values, chosen on val at "
                     "the tuning seed: " + "; ".join(rows))
    if setup["has_reference"]:
        lines.append("- Reference: the single-run numbers of the reference experiment (VOC07 test), beside ours.")
    if setup["missing"]:
        lines.append(f"- Runs without a result ({len(setup['missing'])} of {setup['num_runs']}, left out of the "
                     f"statistics): " + "; ".join(setup["missing"]))
    if setup["stale"]:
        lines.append(f"- {len(setup['stale'])} result file(s) of other configs or protocol versions are ignored: "
                     + ", ".join(Path(p).name for p in setup["stale"]))
    return lines


def param_text(value) -> str:
    """A hyper-parameter's value as the reports print it: 4 significant digits, None as YAML's null."""
    return f"{value:.4g}" if isinstance(value, float) else "null" if value is None else str(value)


def _results_table(table: dict) -> list[str]:
    header = (f"| {table['column']} | reference mAP | mAP (mean ± std) | 95% CI | seeds | COCO AP | COCO AP50 | "
              f"Δ vs {table['baseline_label']} | 95% CI of Δ | p (Holm) | wins | MDE | verdict |")
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for row in table["rows"]:
        paired = row.get("paired", {}).get(METRIC)
        comparison = ["(baseline)", "—", "—", "—", "—", "—"] if row["is_baseline"] else [
            signed(paired["mean"]), interval(paired, signed_values=True), p_text(paired), _wins(paired),
            plain(paired["min_detectable"]), paired["verdict"]]
        cells = [row["label"], plain(row["reference"]), mean_std(row[METRIC]), interval(row[METRIC]),
                 str(row[METRIC]["n"]), mean_std(row["coco_ap"]), mean_std(row["coco_ap50"]), *comparison]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _verdict_sentences(table: dict) -> list[str]:
    lines = []
    for row in table["rows"]:
        if not row["is_baseline"]:
            paired = row["paired"][METRIC]
            numbers = "" if paired["n"] < 2 else (
                f" (Δ = {signed(paired['mean'])}, 95% CI {interval(paired, signed_values=True)}, "
                f"p = {p_text(paired)} after Holm, {_wins(paired)} seeds higher)")
            lines.append(f"- {row['label']} vs {table['baseline_label']}: {paired['verdict']}{numbers}.")
    return lines


def _bucket_table(table: dict) -> list[str]:
    buckets = [m for m in table["metrics"] if m.startswith("ap_")]
    header = f"| {table['column']} | " + " | ".join(
        f"{b[3:]} AP | Δ {b[3:]} [95% CI], p (Holm)" for b in buckets) + " |"
    lines = [header, "|---|" + "---|---|" * len(buckets)]
    for row in table["rows"]:
        cells = [row["label"]]
        for bucket in buckets:
            cells.append(mean_std(row[bucket]))
            paired = row.get("paired", {}).get(bucket)
            cells.append("(baseline)" if paired is None else
                         f"{signed(paired['mean'])} {interval(paired, signed_values=True)}, {p_text(paired)}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _convergence_table(table: dict) -> list[str]:
    lines = [f"| {table['column']} | val mAP gain over the last quarter (per seed) | largest | converged |",
             "|---|---|---|---|"]
    for row in table["rows"]:
        gains = row["gains"]
        worst = max(gains.values()) if gains else None
        cells = [row["label"], ", ".join(f"{signed(g)}" for _, g in sorted(gains.items())) or "—", signed(worst),
                 "—" if worst is None else ("yes" if worst < CONVERGED_GAIN else "**no**")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _per_seed_table(table: dict) -> list[str]:
    seeds = sorted({s for row in table["rows"] for s in row["per_seed"]})
    lines = [f"| {table['column']} | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for row in table["rows"]:
        lines.append(f"| {row['label']} | " + " | ".join(plain(row["per_seed"].get(s)) for s in seeds) + " |")
    return lines


def mean_std(stats: dict) -> str:
    if stats["mean"] is None:
        return "—"
    return f"{stats['mean']:.4f}" if stats["std"] is None else f"{stats['mean']:.4f} ± {stats['std']:.4f}"


def interval(stats: dict, signed_values: bool = False) -> str:
    if stats["ci_low"] is None:
        return "— (1 seed)" if stats["n"] == 1 else "—"
    fmt = signed if signed_values else plain
    return f"[{fmt(stats['ci_low'])}, {fmt(stats['ci_high'])}]"


def p_text(paired: dict) -> str:
    """A Holm-corrected p-value as the reports print it (— where there is none)."""
    p = paired.get("p_holm")
    return "—" if p is None else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def _wins(paired: dict) -> str:
    return f"{paired['wins']}/{paired['n']}" if paired["n"] else "—"


def plain(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def signed(value) -> str:
    return "—" if value is None else f"{value:+.4f}"


def write_csv(rows: list[dict], buckets: dict, path: Path):
    """One line per variant and seed: ``CSV_COLUMNS`` and the AP of each frequency bucket."""
    columns = list(CSV_COLUMNS) + [f"ap_{name}" for name in buckets]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_report(output_dir, summary: list[dict], rows: list[dict], setup: dict, buckets: dict) -> dict:
    """Writes the report (markdown, csv and the three charts) into ``output_dir``; returns their paths.

    Its name is ``ablation``, unless an ``ablation.csv`` there holds a (table, variant, seed) result this report
    lacks: a run of some of the files, or of fewer seeds, then writes its own ``ablation-<name>`` report (and
    ``ablation-<name>-<n>runs`` if even that one covers more) instead of replacing a larger one.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = report_stem(output_dir, rows, setup["name"])
    paths = {"md": output_dir / f"{stem}.md", "csv": output_dir / f"{stem}.csv",
             "png": output_dir / f"{stem}.png", "curves": output_dir / f"{stem}_curves.png",
             "buckets": output_dir / f"{stem}_buckets.png"}
    paths["md"].write_text(format_markdown(summary, setup))
    write_csv(rows, buckets, paths["csv"])
    write_map_chart(summary, paths["png"])
    write_curves_chart(summary, rows, paths["curves"])
    write_bucket_chart(summary, paths["buckets"])
    return paths


def report_stem(output_dir: Path, rows: list[dict], name: str) -> str:
    """The first of ``ablation``, ``ablation-<name>`` whose csv covers no result that ``rows`` lack; else a name
    of its own with the number of results."""
    covered = _coverage(rows)
    for stem in ("ablation", f"ablation-{name}"):
        previous = output_dir / f"{stem}.csv"
        if not previous.is_file():
            return stem
        with open(previous, newline="") as f:
            missing = _coverage(csv.DictReader(f)) - covered
        if not missing:
            return stem
        logger.warning("%s holds %d result(s) this report lacks (%s first): it is kept, this report is written "
                       "under another name", previous, len(missing), " ".join(sorted(missing)[0]))
    return f"ablation-{name}-{len(covered)}runs"


def _coverage(rows) -> set:
    """(table, variant, seed) of the rows that hold a test score."""
    return {(r["table"], r["variant"], str(r["seed"])) for r in rows if r.get("voc07_map50") not in (None, "")}
