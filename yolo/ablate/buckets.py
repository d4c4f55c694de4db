"""The long tail: classes grouped by how many training images hold them (LVIS's rare / common / frequent, with
edges an ablation file chooses to fit its dataset), and the AP of each group.

LVIS (Gupta et al., CVPR 2019) reports APr / APc / APf over classes in 1-10, 11-100 and > 100 training images. Focal
loss's claim concerns class imbalance, so the ablation reports its AP per bucket next to the mean. An LVIS dataset
states each category's ``frequency`` (r / c / f, counted on LVIS's full training set): those are its buckets.
"""

LVIS_BUCKETS = {"rare": "r", "common": "c", "frequent": "f"}


def bucket_of(num_images: int, buckets: dict) -> str:
    """The name of the bucket of a class held by ``num_images`` training images.

    ``buckets``: {name: exclusive upper bound on the number of images, the last one None (no bound)}, in order.
    """
    for name, bound in buckets.items():
        if bound is None or num_images < bound:
            return name
    raise ValueError(f"the last bucket of {buckets} must be unbounded (None)")


def assign_buckets(class_images: dict, buckets: dict) -> dict:
    """{bucket name: [class names]} for {class name: training images}, every bucket present (maybe empty)."""
    members = {name: [] for name in buckets}
    for cls, count in class_images.items():
        members[bucket_of(count, buckets)].append(cls)
    return members


def lvis_buckets(class_frequency: dict, buckets: dict) -> dict:
    """{bucket name: [class names]} from LVIS's ``frequency`` of each class ({class name: "r" / "c" / "f"}); the
    ablation's buckets must then be LVIS's three (rare, common, frequent)."""
    if list(buckets) != list(LVIS_BUCKETS):
        raise ValueError(f"the dataset states LVIS frequencies, so the buckets are {', '.join(LVIS_BUCKETS)}; the "
                         f"ablation file names {', '.join(buckets)}: leave frequency_buckets out")
    return {name: [c for c, f in class_frequency.items() if f == code] for name, code in LVIS_BUCKETS.items()}


def bucket_ap(per_class: dict, members: dict, key: str = "ap50_voc07") -> dict:
    """{bucket: mean AP of its classes} from an evaluation's ``per_class`` table; classes without ground truth
    on the test split (AP None) are left out, a bucket with none of its classes scored is None."""
    out = {}
    for bucket, classes in members.items():
        values = [per_class[c][key] for c in classes if per_class.get(c, {}).get(key) is not None]
        out[bucket] = sum(values) / len(values) if values else None
    return out


def describe_edges(buckets: dict) -> str:
    """``rare: < 300, common: 300-499, frequent: >= 500`` (training images holding the class)."""
    parts, low = [], 0
    for name, bound in buckets.items():
        if bound is None:
            parts.append(f"{name}: >= {low}")
        else:
            parts.append(f"{name}: < {bound}" if low == 0 else f"{name}: {low}-{bound - 1}")
            low = bound
    return ", ".join(parts)


def check_buckets(raw) -> dict:
    """Validate a ``frequency_buckets`` mapping; raises ValueError with what is expected."""
    if not isinstance(raw, dict) or not raw:
        raise ValueError("frequency_buckets must map bucket names to an exclusive upper bound on the number of "
                         "training images holding a class, the last one null, e.g. {rare: 300, common: 500, "
                         "frequent: null}")
    bounds = list(raw.values())
    finite = bounds[:-1]
    integers = all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in finite)
    if bounds[-1] is not None or not integers or finite != sorted(set(finite)):
        raise ValueError(f"frequency_buckets bounds must be increasing positive integers and the last one null, "
                         f"got {raw}")
    return {str(name): bound for name, bound in raw.items()}

