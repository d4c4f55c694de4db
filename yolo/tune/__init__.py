"""Tuning with an equal budget: every row of an ablation file gets the same number of trials on val, then each
row's best configuration is retrained with fresh seeds and scored once on test.

    python -m yolo.tune --config configs/ablation/shapes_cls_tune.yaml --jobs 2      # tune, then the seeds stage
    python -m yolo.tune --config configs/ablation/shapes_cls_tune.yaml --stage seeds
    python -m yolo.tune --config configs/ablation/shapes_cls_tune.yaml --report-only
    python -m yolo.tune --config ... --launcher slurm --workers 8 --slurm-partition gpu   # workers share the journal

The loss is the scientific hyper-parameter, everything a row's ``search`` declares is a nuisance one, tuned per
row with the same number of trials (Google's tuning playbook; Dodge et al. 2019; Bouthillier et al. 2021), so a
loss with more knobs spends the same compute. The objective is the run's best val mAP, never a test score.

    space.py     search spaces in the ablation file -> Optuna distributions; a trial's values -> a config
    study.py     one study per row in RESULTS/tune.journal (Optuna JournalStorage); claiming trials, heartbeats
    worker.py    the worker loop; --jobs processes; submitit jobs (local / slurm)
    report.py    tuning.md, best.yaml (read by the seeds stage), expected best after n trials and its chart
    outcome.py   tuned.md: the best trials' optimism on val, the tuned rows against their defaults on test
    cli.py       the command: stages tune, seeds, all

Every trial is an ordinary ablation run: its result file lands in RESULTS/runs/ under its config's key, the same
as ``python -m yolo.ablate`` writes, and the seeds stage is ``yolo.ablate``'s runner and report.
"""
