"""From run results to the numbers of the report: one row per variant and seed, then per table and variant the
summaries, the paired comparisons with the baseline (Holm-corrected within the table), the long-tail buckets and
the convergence of the val curve.
"""
from yolo.ablate.buckets import assign_buckets, bucket_ap, lvis_buckets
from yolo.ablate.results import score_key
from yolo.ablate.spec import METRIC, Ablation, Table, Variant
from yolo.ablate.stats import holm, paired_difference, summarize, verdict

CSV_COLUMNS = ("table", "variant", "label", "seed", "run", "key", "selection", "scoring", "checkpoint", "epoch",
               "weights", "split", "voc07_map50", "voc_map50", "coco_ap", "coco_ap50", "coco_ap75",
               "val_voc07_map50", "last_quarter_gain", "precision", "train_s", "eval_s")
SUMMARIZED = (METRIC, "coco_ap", "coco_ap50")
CONVERGED_GAIN = 0.01   # a run has converged when val mAP gained less than this over its last quarter of epochs


def last_quarter_gain(history: list[dict], epochs: int) -> float | None:
    """Val mAP at the last epoch minus val mAP at 3/4 of the epochs (None without both).

    With evaluations every few epochs, 3/4 of the epochs may fall between two of them: the value there is read
    off the straight line between those two (an evaluation exactly at 3/4 is taken as is), so the gain covers
    the last quarter and not more.
    """
    curve = [(h["epoch"], h[METRIC]) for h in history if h[METRIC] is not None]
    final = [v for e, v in curve if e == epochs]
    start = 0.75 * epochs
    before = [(e, v) for e, v in curve if e <= start]
    after = [(e, v) for e, v in curve if e >= start]
    if not final or not before:
        return None
    (e0, v0), (e1, v1) = before[-1], after[0]
    at_start = v0 if e1 == e0 else v0 + (v1 - v0) * (start - e0) / (e1 - e0)
    return final[0] - at_start


def collect_rows(ablation: Ablation, runs: list, results: dict) -> list[dict]:
    """One row per variant and seed with a result (``CSV_COLUMNS``, ``ap_<bucket>`` for each frequency bucket, and
    ``history`` / ``per_class`` for the charts); a run shared by two variants gives each its row."""
    rows = []
    for table in ablation.tables:
        for variant in table.variants:
            for run in sorted((r for r in runs if variant.name in r.variants), key=lambda r: r.seed):
                score = results.get(run.key, {}).get("scores", {}).get(
                    score_key(ablation.selection, variant.scoring_name))
                if score is not None:
                    rows.append(_row(ablation, table, variant, run, results[run.key], score))
    return rows


def _row(ablation: Ablation, table: Table, variant: Variant, run, result: dict, score: dict) -> dict:
    test = score["test"]
    row = {"table": table.title, "variant": variant.name, "label": variant.label, "seed": run.seed,
           "run": run.name, "key": run.key, "selection": ablation.selection, "scoring": variant.scoring_name,
           **{k: score[k] for k in ("checkpoint", "epoch", "weights", "split", "val_voc07_map50", "eval_s")},
           **{k: test[k] for k in ("voc07_map50", "voc_map50", "coco_ap", "coco_ap50", "coco_ap75")},
           "last_quarter_gain": last_quarter_gain(result["history"], result["config"]["train"]["epochs"]),
           "precision": result["precision"], "train_s": result["train_s"],
           "history": result["history"], "per_class": test["per_class"]}
    members = (lvis_buckets(result["class_frequency"], ablation.buckets) if "class_frequency" in result
               else assign_buckets(result["class_images"], ablation.buckets))
    row.update({f"ap_{name}": ap for name, ap in bucket_ap(test["per_class"], members).items()})
    return row


def summarize_tables(ablation: Ablation, rows: list[dict]) -> list[dict]:
    """Per table: its rows with the summaries over seeds of VOC07 mAP, COCO AP, AP50 and each bucket's AP, the
    convergence gains, and (except for the baseline) the paired comparison of mAP and of each bucket's AP with
    the table's baseline: interval, t-test p-value, its Holm adjustment over the table's comparisons, verdict."""
    metrics = SUMMARIZED + tuple(f"ap_{name}" for name in ablation.buckets)
    values: dict = {}
    for row in rows:
        for metric in metrics + ("last_quarter_gain",):
            if row.get(metric) is not None:
                values.setdefault((row["variant"], metric), {})[row["seed"]] = row[metric]
    variants = ablation.variants()
    return [_summarize_table(table, values, metrics, variants) for table in ablation.tables]


def _summarize_table(table: Table, values: dict, metrics: tuple, variants: dict) -> dict:
    entries = []
    for variant in table.variants:
        entry = {"variant": variant.name, "label": variant.label, "reference": variant.reference,
                 "is_baseline": variant.name == table.baseline,
                 "per_seed": values.get((variant.name, METRIC), {}),
                 "gains": values.get((variant.name, "last_quarter_gain"), {}),
                 **{metric: summarize(values.get((variant.name, metric), {}).values()) for metric in metrics}}
        if not entry["is_baseline"]:
            entry["paired"] = {metric: paired_difference(values.get((variant.name, metric), {}),
                                                         values.get((table.baseline, metric), {}))
                               for metric in metrics}
        entries.append(entry)
    compared = [e for e in entries if not e["is_baseline"]]
    for metric in metrics:       # one family of comparisons per metric: the table's rows against its baseline
        for entry, adjusted in zip(compared, holm([e["paired"][metric]["p_value"] for e in compared])):
            entry["paired"][metric]["p_holm"] = adjusted
            entry["paired"][metric]["verdict"] = verdict(entry["paired"][metric], adjusted)
    return {"title": table.title, "column": table.column, "baseline": table.baseline,
            "baseline_label": variants[table.baseline].label, "metrics": metrics, "rows": entries}
