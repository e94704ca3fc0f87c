"""Run `sdbuild` in this process with coremltools' clock reading FAKE_DATE.

    python tests/fake_clock_build.py FAKE_DATE [overrides...]

coremltools stamps `date.today()` into every model it converts; this shows that the clock
cannot reach sdbuild's output.
"""

import datetime
import sys


def fake_coremltools_date(fake: datetime.date) -> None:
    """coremltools stamps `date.today()` into every model; make that clock read ``fake``."""
    from sdbuild.quiet import import_coremltools

    import_coremltools()
    import coremltools.converters._converters_entry as entry

    class FakeDate(datetime.date):
        @classmethod
        def today(cls):
            return fake

    entry.date = FakeDate


def main() -> int:
    fake_coremltools_date(datetime.date.fromisoformat(sys.argv[1]))
    from sdbuild.cli import main as sdbuild_main

    return sdbuild_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
