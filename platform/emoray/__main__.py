from emoray.cli import main
import sys
sys.exit(main())
