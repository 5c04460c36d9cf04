"""``python -m course_lib.grading``: the command line of :mod:`course_lib.grading.cli`.

``main`` lives in ``cli`` rather than here so that the package can re-export it without
importing ``__main__`` (runpy warns when ``-m`` finds ``__main__`` already imported)."""

import sys

from course_lib.grading.cli import main

if __name__ == "__main__":
    sys.exit(main())
