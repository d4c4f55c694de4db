"""Download, verify and extract PASCAL VOC 2007 trainval/test and 2012 trainval (see yolo/data/download.py).

    python data/download_voc.py --root data [--mirror URL] [--delete-archives]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without installing

from yolo.data.download import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
