"""`python -m lab up|down|status`: the test lab from the command line, apart from `shoal`.

The lab is how shoal is tested and demonstrated, not part of the product: the `shoal` command
does not import it, so an installation of shoal needs none of it.
"""

from lab.cli import lab_app

lab_app(prog_name="python -m lab")
