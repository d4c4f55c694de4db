import sys

from yolo.tune.cli import main

sys.exit(main())
