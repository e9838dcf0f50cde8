import sys

from streamtmr.cli import main

sys.exit(main())
