import sys

from pet_operator.cli import main

sys.exit(main())
