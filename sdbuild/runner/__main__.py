import sys

from sdbuild.runner.cli import main

sys.exit(main())
