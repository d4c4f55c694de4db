"""Benchmarks: ``python -m yolo.bench {step,gemm,profile,targets,data,train,eval,gpu,autotune} ...``.

Each part prints one line per variant (median over timed iterations after a warm-up) with the device, dtype and
settings, e.g.::

    python -m yolo.bench step --device cpu --batch 16 --size 128 --channels-last on   # + GFLOP/image, GFLOP/s
    python -m yolo.bench gemm --device cpu                                           # the machine's matmul rate
    python -m yolo.bench profile --device cpu --batch 16 --size 128                  # torch.profiler, top 15 ops
    python -m yolo.bench targets --device cpu --batch 64
    python -m yolo.bench data --data-root ../shared/voc-sample --data 2012:trainval --workers 0 1 2
    python -m yolo.bench train --config configs/shapes.yaml --steps 30               # end to end vs step alone
    python -m yolo.bench eval --config configs/shapes.yaml --split shapes:val
    python -m yolo.bench gpu                                                         # every GPU figure, <= 10 min
    python -m yolo.bench autotune                                    # the cached decisions of amp / channels_last auto
    python -m yolo.bench autotune --config configs/shapes.yaml --refresh             # time that run's candidates again

``--json FILE`` also writes every measurement. These are measurements, not tests: nothing here asserts a speed.

    common.py    machine line, timing, peak memory, synthetic batch
    step.py      the step alone (with FLOPs), the GEMM rate, the profiler
    targets.py   target assignment against the per-box loop
    pipeline.py  the data pipeline, training end to end, evaluation
    gpu.py       the all-in-one GPU script;  autotune.py: the cache of yolo.autotune;  cli.py: the command line
"""
