import sys

from emoray.cli import main

sys.exit(main())
