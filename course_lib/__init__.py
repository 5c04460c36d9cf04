"""course_lib: the tested code behind the *Scores to Flows* course.

Each chapter of the course imports the module that matches its topic and shows the
source of the functions it teaches with :func:`course_lib.show.show`.
"""

from course_lib.config import Config, get_config, seed_everything
from course_lib.show import show

__all__ = ["Config", "get_config", "seed_everything", "show"]
__version__ = "0.1.0"
