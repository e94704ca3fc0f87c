from sdbuild.mixed_bit.cli import main

raise SystemExit(main())
