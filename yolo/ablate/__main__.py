import sys

# The importable module's main, so log names and what --jobs processes unpickle say yolo.ablate, not __main__.
from yolo.ablate.cli import main

sys.exit(main())
