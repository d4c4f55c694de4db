"""``python -m yolo.bench autotune``: the decisions ``train.amp: auto`` / ``train.channels_last: auto`` took on this
machine (``yolo.autotune``'s cache); with a config (``--config`` or config flags), that run's decision (timed where
the cache has none, or again with ``--refresh``)."""
from yolo.autotune import Choice, cache_path, choose, describe, read_cache


def entry_line(entry: dict) -> str:
    """One cached decision: where, what it was measured for, what it chose and the figures."""
    key = entry["key"]
    device = key["device"]
    where = device["name"] + (f", {device['threads']} threads" if "threads" in device else "")
    choice = Choice(entry["choice"]["amp"], entry["choice"]["channels_last"], "measured", entry["figures"])
    model = key["model"]
    return (f"{where}, torch {key['torch']}: {model['neck']} {model['channels']} ch"
            f"{', decoupled head' if model.get('decoupled_head') else ''}, {key['num_classes']} classes, "
            f"{key['image_size']} px, batch {key['batch_size']} -> {describe(choice)} ({entry['measured']})")


def run_autotune(args) -> list[dict]:
    from yolo.bench.pipeline import _config, _device
    from yolo.fit import prepare_data
    if args.config is None and not any(name.startswith("cfg:") for name in vars(args)):   # no run named
        entries = read_cache()
        print(f"autotune cache {cache_path()}: {len(entries)} decisions", flush=True)
        for entry in entries.values():
            print(f"  {entry_line(entry)}", flush=True)
        return [{"part": "autotune", **entry} for entry in entries.values()]
    cfg = _config(args)
    device = _device(cfg.train.device)
    _, classes = prepare_data(cfg)
    choice = choose(cfg, device, len(classes), cfg.train.batch_size, refresh=args.refresh)
    print(f"autotune {args.config} on {device}, batch {cfg.train.batch_size}, {cfg.data.img_size} px: "
          f"{describe(choice)}; cache {cache_path()}", flush=True)
    return [{"part": "autotune", "config": args.config, **choice.record()}]
