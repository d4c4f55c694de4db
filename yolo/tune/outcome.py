"""What the tuning changed (``tuned.md``, written by the seeds stage): the winner's curse on val, and the tuned rows
against the same rows at their defaults on test.

Selection on val: each row's best trial was the best of its budget at the tuning seed, so its val mAP is biased
upwards. The seeds stage retrains the same values with fresh seeds; their val mAP (the same metric on the same
split: the val score of the selected checkpoint) measures that optimism.

Against the defaults: ``tune.defaults`` names a results folder holding the same rows trained at their declared
(untuned) values by ``yolo.ablate``. A result file there counts only if its key is the config hash of a row at its
declared values (same protocol, data, epochs, everything but the tuned knobs), so a folder of other runs is never
compared by mistake. The two sides train different seeds (the defaults from ``train.seed``, the tuned rows from
``train.seed + first_seed``), so they are not paired: Welch's t interval and test (``scipy.stats.ttest_ind`` with
``equal_var=False``), Holm-corrected over the table's rows. A row's gap is its paired per-seed difference to the
baseline on each side; the change of the gap is Welch's test on those per-seed gaps (an interaction: does tuning
move this loss more than the baseline?).
"""
import copy
import dataclasses
from pathlib import Path

from yolo.ablate.execute import cached_results
from yolo.ablate.plan import DataFingerprints, make_run, plan_runs
from yolo.ablate.report import interval, mean_std, p_text, param_text, signed
from yolo.ablate.spec import METRIC, Ablation
from yolo.ablate.stats import ALPHA, CONFIDENCE, holm, independent_difference, summarize
from yolo.ablate.tables import collect_rows, summarize_tables

REPORT = "tuned.md"


def declared_ablation(ablation: Ablation, seeds: int) -> Ablation:
    """``ablation``'s rows at their declared values (no search, nothing tuned), ``seeds`` seeds from train.seed."""
    tables = [dataclasses.replace(t, variants=[dataclasses.replace(v, search={}, tuned={}) for v in t.variants])
              for t in ablation.tables]
    return dataclasses.replace(copy.copy(ablation), tables=tables, seeds=seeds, tune=None)


def default_summary(ablation: Ablation, output_dir, defaults_dir: Path) -> list[dict]:
    """``summarize_tables`` of the rows at their declared values, from every result file in ``defaults_dir/runs``
    whose key is such a row's config at some seed (and that holds the score the row needs)."""
    fingerprints = DataFingerprints()
    offsets = [0]
    for variant in ablation.variants().values():
        probe = make_run(variant.name, variant.cfg, fingerprints(variant.cfg), output_dir, defaults_dir)
        offsets += [int(p.stem.rsplit("-seed", 1)[1]) - variant.cfg.train.seed
                    for p in (Path(defaults_dir) / "runs").glob(f"{probe.config_hash}-seed*.json")]
    declared = declared_ablation(ablation, seeds=max(offsets) + 1)
    runs = plan_runs(declared, output_dir, defaults_dir)
    return summarize_tables(declared, collect_rows(declared, runs, cached_results(runs, declared.selection)))


def compare(tuned: list[dict], defaults: list[dict]) -> list[dict]:
    """Per table (matched by title), per row: its default and tuned VOC07 mAP summaries, ``change`` (tuned minus
    default, :func:`independent_difference`) and, for the rows other than the baseline, ``gap_default`` /
    ``gap_tuned`` (the paired differences to the baseline) and ``gap_change`` (Welch on the per-seed gaps). The
    p-values are Holm-corrected over the table's rows (``p_holm``)."""
    by_title = {t["title"]: t for t in defaults}
    tables = []
    for table in tuned:
        default_rows = {r["variant"]: r for r in by_title.get(table["title"], {"rows": []})["rows"]}
        empty = {"per_seed": {}, METRIC: summarize([])}
        rows = [_compare_row(row, default_rows.get(row["variant"], empty), table, default_rows)
                for row in table["rows"]]
        for key in ("change", "gap_change"):
            present = [r for r in rows if key in r]
            for row, adjusted in zip(present, holm([r[key]["p_value"] for r in present])):
                row[key]["p_holm"] = adjusted
        tables.append({**{k: table[k] for k in ("title", "column", "baseline", "baseline_label")}, "rows": rows})
    return tables


def _compare_row(row: dict, default: dict, table: dict, default_rows: dict) -> dict:
    out = {"variant": row["variant"], "label": row["label"], "is_baseline": row["is_baseline"],
           "default": default[METRIC], "tuned": row[METRIC], "default_seeds": sorted(default["per_seed"]),
           "tuned_seeds": sorted(row["per_seed"]),
           "change": independent_difference(row["per_seed"].values(), default["per_seed"].values())}
    if not row["is_baseline"]:
        tuned_base = next(r for r in table["rows"] if r["is_baseline"])["per_seed"]
        default_base = default_rows.get(table["baseline"], {"per_seed": {}})["per_seed"]
        out["gap_tuned"] = row["paired"][METRIC]
        out["gap_default"] = default.get("paired", {}).get(METRIC) or summarize([])
        out["gap_change"] = independent_difference(_gaps(row["per_seed"], tuned_base),
                                                   _gaps(default["per_seed"], default_base))
    return out


def _gaps(values: dict, baseline: dict) -> list[float]:
    """Per seed that both hold: the row's value minus the baseline's."""
    return [values[s] - baseline[s] for s in sorted(set(values) & set(baseline))]


def reading(difference: dict, alpha: float = ALPHA) -> str:
    """The plain reading of an unpaired difference (higher is better) after the Holm correction."""
    n_ours, n_theirs = difference["n"]
    if min(n_ours, n_theirs) == 0:
        return "no results on one side"
    p = difference.get("p_holm")
    if p is not None and p < alpha:
        return "higher" if difference["mean"] > 0 else "lower"
    return f"not distinguishable at {n_ours} and {n_theirs} seeds"


def selection_on_val(best: dict, rows: list[dict]) -> dict:
    """{row: {"trial", "value", "retrained", "optimism"}} for the rows tuned (in ``best``): ``retrained`` is
    :func:`summarize` of the val mAP of the seeds stage's runs (``rows``: its ``collect_rows``), ``optimism`` the
    trial's val mAP minus their mean (None without a retrained run)."""
    out = {}
    for name, entry in best.items():
        retrained = summarize(r["val_voc07_map50"] for r in rows
                              if r["variant"] == name and r["val_voc07_map50"] is not None)
        optimism = None if retrained["mean"] is None else entry["value"] - retrained["mean"]
        out[name] = {"trial": entry["trial"], "value": entry["value"], "retrained": retrained, "optimism": optimism}
    return out


def _selection_table(ablation: Ablation, selected: dict) -> list[str]:
    variants = ablation.variants()
    lines = [f"| row | best trial | its val mAP (tuning seed) | val mAP retrained (mean ± std) | {CONFIDENCE:.0%} CI "
             f"| seeds | optimism (trial − retrained) |", "|---" * 7 + "|"]
    for name, entry in selected.items():
        retrained = entry["retrained"]
        lines.append(f"| {variants[name].label} | {entry['trial']} | {entry['value']:.4f} | {mean_std(retrained)} | "
                     f"{interval(retrained)} | {retrained['n']} | {signed(entry['optimism'])} |")
    return lines


def format_outcome(tuning, best: dict, selected: dict, tables: list[dict] | None, defaults_dir: Path | None,
                   command: str) -> str:
    """``tuned.md``: the selection on val, then (with a defaults folder) per table the change of each row and of
    its gap to the baseline."""
    spec = tuning.spec
    lines = [f"# What the tuning changed: {tuning.ablation.name}", "",
             f"- Command: `{command}`" if command else "- Command: —",
             f"- Tuned: each row's best of {spec.trials} trials on val at the tuning seed (`best.yaml`), retrained "
             f"with fresh seeds (train.seed + {spec.first_seed} ...) and scored once on the test split "
             f"(`ablation.md`).",
             "", "## Selection on val: each best trial retrained", "",
             "The best of several trials at one seed is biased upwards. The same values trained at fresh seeds, "
             "scored on the same split by the same rule (the val mAP of the selected checkpoint), show how much: "
             "optimism = the trial's val mAP − the fresh seeds' mean.", "",
             *_selection_table(tuning.ablation, selected)]
    if tables is None:
        lines += ["", "No defaults to compare with: `tune: {defaults: <results folder>}` names the results of the same "
                      "rows trained at their declared values (`python -m yolo.ablate`)."]
        return "\n".join(lines) + "\n"
    lines += ["", "## Against the defaults", "",
              f"- Defaults: the same rows at their declared values, from `{defaults_dir}`: only result files whose "
              f"run key is such a row's config (protocol, data and every other setting the same) count.",
              f"- The two sides train different seeds, so they are not paired: Δ = tuned − default mean test VOC07 "
              f"mAP with Welch's {CONFIDENCE:.0%} t interval and two-sided test (scipy.stats.ttest_ind, "
              f"equal_var=False), Holm-corrected over the table's rows; \"higher\" / \"lower\" when the corrected "
              f"p < {ALPHA}.",
              "- Gap = a row's paired per-seed difference to the table's baseline, on each side; its change = tuned "
              "gap − default gap, Welch's test on the per-seed gaps (does tuning move this row more than the "
              "baseline?)."]
    for table in tables:
        lines += ["", f"### {table['title']}", "", *_change_table(table, tuning.ablation, tuning.spaces, best), "",
                  f"#### Gap to {table['baseline_label']}", "", *_gap_table(table)]
    return "\n".join(lines) + "\n"


def _values(variant, space: dict, params: dict | None) -> str:
    """The row's values of its searched knobs: from ``params`` (tuned) or its config (declared)."""
    if not space:
        return "as declared"
    if params is None:
        params = {name: getattr(getattr(variant.cfg, name.split(".")[0]), name.split(".")[1]) for name in space}
    return ", ".join(f"{name} {param_text(params.get(name))}" for name in space)


def _change_table(table: dict, ablation: Ablation, spaces: dict, best: dict) -> list[str]:
    variants = ablation.variants()
    lines = [f"| {table['column']} | default values | default mAP | seeds | tuned values | tuned mAP | seeds | "
             f"Δ tuned − default | {CONFIDENCE:.0%} CI of Δ | p (Holm) | reading |", "|---" * 11 + "|"]
    for row in table["rows"]:
        variant, space = variants[row["variant"]], spaces.get(row["variant"], {})
        tuned_params = best.get(row["variant"], {}).get("params") if space else None
        cells = [row["label"], _values(variant, space, None), mean_std(row["default"]), _seeds(row["default_seeds"]),
                 _values(variant, space, tuned_params), mean_std(row["tuned"]),
                 _seeds(row["tuned_seeds"]), *_difference_cells(row["change"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _gap_table(table: dict) -> list[str]:
    lines = [f"| {table['column']} | gap at the defaults [{CONFIDENCE:.0%} CI] | gap tuned [{CONFIDENCE:.0%} CI] | "
             f"change of the gap | {CONFIDENCE:.0%} CI | p (Holm) | reading |", "|---" * 7 + "|"]
    for row in table["rows"]:
        if not row["is_baseline"]:
            gaps = ["—" if row[k]["mean"] is None else f"{signed(row[k]['mean'])} {interval(row[k], True)}"
                    for k in ("gap_default", "gap_tuned")]
            lines.append("| " + " | ".join([row["label"], *gaps, *_difference_cells(row["gap_change"])]) + " |")
    return lines


def _difference_cells(difference: dict) -> list[str]:
    return [signed(difference["mean"]), interval(difference, signed_values=True), p_text(difference),
            reading(difference)]


def _seeds(seeds: list) -> str:
    return ", ".join(map(str, seeds)) or "—"


def write_outcome(tuning, seeds: dict, best: dict, command: str = "") -> Path:
    """Write ``tuned.md`` beside the seeds stage's report and return its path. ``seeds``: what the seeds stage's
    ``run_ablation`` returned (its ``rows`` and ``summary``)."""
    selected = selection_on_val(best, seeds["rows"])
    defaults_dir, tables = tuning.spec.defaults, None
    if defaults_dir is not None:
        defaults = default_summary(tuning.ablation, tuning.output_dir, defaults_dir)
        tables = compare(seeds["summary"], defaults)
        defaults_dir = defaults_dir.relative_to(Path.cwd()) if defaults_dir.is_relative_to(Path.cwd()) else defaults_dir
    path = tuning.results_dir / REPORT
    path.write_text(format_outcome(tuning, best, selected, tables, defaults_dir, command))
    return path
