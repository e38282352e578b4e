#!/usr/bin/env python
"""Train, validate, test or predict with acuzoo's LightningCLI.

python train.py fit --config configs/quickstart.yaml
python train.py fit --help
"""

from acuzoo.cli import main

if __name__ == "__main__":
    main()
