import sys

from garrison.detect.cli import main

sys.exit(main())
