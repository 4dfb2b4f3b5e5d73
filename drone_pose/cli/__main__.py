"""`python -m drone_pose.cli ...` (torchrun's -m form): the same as `drone-pose ...`."""

import sys

from drone_pose.cli import main

if __name__ == "__main__":
    sys.exit(main())
