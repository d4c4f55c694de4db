"""What a tuning produced: every trial, each row's best configuration (``best.yaml``, which the seeds stage reads),
the expected best val mAP after n trials (Dodge et al. 2019) and its chart, and the seeds stage's ablation.

``tuning.md`` lists per row its trials (values, best val mAP, state) and the expected-max curve; rows only get a
``best.yaml`` entry once all of their ``trials`` have finished, so the seeds stage never starts from a partial
search.
"""
import copy
import dataclasses
import json
from pathlib import Path

import optuna
import yaml

from yolo.ablate.execute import duration
from yolo.ablate.plan import result_path
from yolo.ablate.report import param_text, plain, training_time
from yolo.ablate.spec import Ablation
from yolo.ablate.stats import expected_max
from yolo.tune.space import with_params
from yolo.tune.study import FINISHED, TRIALS, Tuning

BEST = "best.yaml"


def row_trials(tuning: Tuning) -> dict:
    """{row: [{"number", "state", "params", "value", "run", "error", "train_s", "runs_at_once"}]} in trial order;
    the times come from the trial's result file (None while it has none)."""
    return {row: [_trial_row(tuning, t) for t in study.get_trials(deepcopy=False)]
            for row, study in tuning.studies.items()}


def _trial_row(tuning: Tuning, trial: optuna.trial.FrozenTrial) -> dict:
    run = trial.user_attrs.get("run")
    path = result_path(tuning.results_dir / TRIALS, run)
    result = json.loads(path.read_text()) if run and path.is_file() else {}
    return {"number": trial.number, "state": trial.state.name, "params": trial.params, "value": trial.value,
            "run": run, "error": trial.user_attrs.get("error"), "train_s": result.get("train_s"),
            "runs_at_once": result.get("runs_at_once", 1)}


def best_trials(tuning: Tuning) -> dict:
    """{row: {"trial", "value", "params"}} for the rows whose budget has finished (COMPLETE or FAIL)."""
    best = {}
    for row, study in tuning.studies.items():
        finished = study.get_trials(deepcopy=False, states=FINISHED)
        complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
        if len(finished) >= tuning.spec.trials and complete:
            top = max(complete, key=lambda t: (t.value, -t.number))     # ties: the earlier trial
            best[row] = {"trial": top.number, "value": float(top.value), "params": dict(top.params)}
    return best


def write_best(tuning: Tuning, best: dict) -> Path:
    path = tuning.results_dir / BEST
    header = ("# Each row's best trial (objective: best val VOC07 mAP@0.5), written by python -m yolo.tune;\n"
              "# the seeds stage retrains these values with fresh seeds and scores them on the test split.\n")
    path.write_text(header + yaml.safe_dump(best, sort_keys=False))
    return path


def read_best(results_dir: Path) -> dict:
    path = Path(results_dir) / BEST
    return yaml.safe_load(path.read_text()) or {} if path.is_file() else {}


def seeds_ablation(ablation: Ablation, tune_spec, best: dict, seeds: int | None = None) -> Ablation:
    """The ablation of the seeds stage: every row at its best trial's values, seeds ``train.seed + first_seed``
    onwards (fresh: the trials trained at ``train.seed``), ``seeds`` (default ``tune_spec.seeds``) of them, each
    carrying its ``best`` entry (``Variant.tuned``) for the report. Rows without a search space train as
    declared."""
    tables = []
    for table in ablation.tables:
        variants = []
        for variant in table.variants:
            params = best[variant.name]["params"] if variant.search else {}
            cfg = with_params(variant.cfg, params, f"{BEST}: {variant.name}")
            cfg.train.seed += tune_spec.first_seed
            variants.append(dataclasses.replace(variant, cfg=cfg, search={},
                                                tuned=best[variant.name] if variant.search else {}))
        tables.append(dataclasses.replace(table, variants=variants))
    return dataclasses.replace(copy.copy(ablation), tables=tables, seeds=seeds or tune_spec.seeds, tune=None)


def expected_max_curves(trials: dict, budget: int) -> dict:
    """{row: [(mean, std) of the best val mAP after n trials]} from each row's completed trials, for n = 1 up to
    the number completed (at most ``budget``): past it the estimate only repeats the best value seen, so a row
    still tuning shows no figure its trials have not earned."""
    curves = {}
    for row, items in trials.items():
        values = [t["value"] for t in items if t["state"] == "COMPLETE"]
        if values:
            curves[row] = [expected_max(values, n) for n in range(1, min(budget, len(values)) + 1)]
    return curves


def format_tuning(tuning: Tuning, trials: dict, best: dict, curves: dict, command: str) -> str:
    spec = tuning.spec
    lines = [f"# Tuning: {tuning.ablation.name}", "",
             f"Command: `{command}`" if command else "", "",
             f"Budget: {spec.trials} trials per row, sampler `{spec.sampler}` (seed {spec.sampler_seed}); "
             f"objective: the run's best val VOC07 mAP@0.5 (the test split is never read). The best trial of each "
             f"row is retrained with {spec.seeds} fresh seeds (train.seed + {spec.first_seed} ...): "
             f"`ablation.md`.", "", _time_line(trials), ""]
    for row, items in trials.items():
        finished = sum(t["state"] in ("COMPLETE", "FAIL") for t in items)
        lines += [f"## {row}: {finished} of {spec.trials} trials finished", "",
                  "| trial | " + " | ".join(tuning.spaces[row]) + " | best val mAP | train time | state |",
                  "|---" * (len(tuning.spaces[row]) + 4) + "|"]
        for t in items:
            mark = " **best**" if row in best and best[row]["trial"] == t["number"] else ""
            values = " | ".join(param_text(t["params"].get(name)) for name in tuning.spaces[row])
            state = t["state"].lower() + (f": {t['error']}" if t["error"] else "")
            train = "" if t["train_s"] is None else duration(t["train_s"])
            lines.append(f"| {t['number']} | {values} | {plain(t['value'])}{mark} | {train} | {state} |")
        lines.append("")
    if curves:
        budget = max(len(c) for c in curves.values())
        lines += ["## Expected best val mAP after n trials (Dodge et al. 2019; mean ± sd)", "",
                  "| n | " + " | ".join(curves) + " |", "|---" * (len(curves) + 1) + "|"]
        for n in range(budget):
            lines.append(f"| {n + 1} | " + " | ".join(f"{c[n][0]:.3f} ± {c[n][1]:.3f}" if n < len(c) else ""
                                                      for c in curves.values()) + " |")
        lines += ["", "![expected best val mAP](expected_max.png)", ""]
    return "\n".join(lines)


def _time_line(trials: dict) -> str:
    """The trials' training time, summed and as wall time, counted as in the ablation report."""
    timed = [t for items in trials.values() for t in items if t["train_s"] is not None]
    summed, wall = training_time(timed)
    return (f"Time: the {len(timed)} trials with a result file trained {duration(summed)} summed over the trials "
            f"(as recorded when each ran), about {duration(wall)} of wall time (a trial trained N at a time counts "
            f"1/N).")


def write_expected_max_chart(curves: dict, path: Path):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    for row, curve in curves.items():
        n = range(1, len(curve) + 1)
        means, stds = [c[0] for c in curve], [c[1] for c in curve]
        line, = ax.plot(n, means, marker=".", label=row)
        ax.fill_between(n, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                        color=line.get_color(), alpha=0.15)
    ax.set(xlabel="trials n", ylabel="expected best val VOC07 mAP@0.5 (± sd)",
           title="Expected best after n trials (Dodge et al. 2019)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_tuning_report(tuning: Tuning, command: str = "") -> dict:
    """Write ``tuning.md``, ``expected_max.png`` and (for the rows whose budget has finished) ``best.yaml``."""
    trials, best = row_trials(tuning), best_trials(tuning)
    curves = expected_max_curves(trials, tuning.spec.trials)
    paths = {"md": tuning.results_dir / "tuning.md"}
    if best:
        paths["best"] = write_best(tuning, best)
    if curves:
        paths["chart"] = tuning.results_dir / "expected_max.png"
        write_expected_max_chart(curves, paths["chart"])
    paths["md"].write_text(format_tuning(tuning, trials, best, curves, command))
    return {"trials": trials, "best": best, "curves": curves, "paths": paths}
