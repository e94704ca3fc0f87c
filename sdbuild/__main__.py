import sys

from sdbuild.cli import main

sys.exit(main())
