import sys

from yolo.bench.cli import main

sys.exit(main())
