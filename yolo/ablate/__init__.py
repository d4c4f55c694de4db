"""Multi-seed ablations: every variant x seed trained with ``fit``, its checkpoint chosen by a rule fixed in
advance, scored on the test split, and summarised with confidence intervals and paired comparisons to a baseline.

    python -m yolo.ablate --config configs/ablation/shapes_conf_loss.yaml configs/ablation/shapes_cls_loss.yaml
    python -m yolo.ablate --config configs/ablation/voc_cls_loss.yaml --seeds 5 --jobs 2 --devices cuda:0,cuda:1
    python -m yolo.ablate --config configs/ablation/voc_cls_loss.yaml --launcher slurm --slurm-partition gpu
    tensorboard --logdir runs/ablation/shapes_conf_loss+shapes_cls_loss/tb

Where each concern lives:

    spec.py      ablation files: variants, tables, selection rule, results folder, frequency buckets; their checks
    plan.py      runs: one per distinct (training config, seed), the cache key, PROTOCOL_VERSION
    results.py   the committed result file of each run (what makes a fresh clone continue where it stopped)
    execute.py   training and scoring the runs, in this process or --jobs processes
    launch.py    --launcher inprocess | local | slurm: the runs as submitit jobs (docs/cluster.md)
    stats.py     t intervals, paired t-test, Holm correction, smallest detectable difference (scipy.stats)
    buckets.py   the long tail: classes by training-image frequency, AP per bucket
    tables.py    rows per variant and seed, then the per-table summaries and comparisons
    report.py    ablation.md and ablation.csv;  plots.py: the charts
    cli.py       the command line

Each run trains in ``OUT/runs/<variant>-s<seed>-<hash8>`` (checkpoints; TensorBoard in ``OUT/tb/``) and its result
goes to ``RESULTS/runs/<hash12>-seed<seed>.json`` as soon as it is scored, with the report next to it in RESULTS
(an ablation file's ``results`` folder, e.g. docs/ablations/shapes, committed with the code). Runs with a result
are not trained again, on this clone or a fresh one; an interrupted run resumes from its ``last.pt``; identical
configs (e.g. the MSE + CE row of both reference tables) are trained once.
"""
