"""Training: YAML configs, method curricula and the generic (optionally distributed) trainer.

Entry points: :func:`load_config` and :func:`train` (``streamtmr train`` on the command line).
"""

from streamtmr.train.config import Config, ConfigError, load_config
from streamtmr.train.curriculum import Curriculum, Stage
from streamtmr.train.trainer import Trainer, TrainError, train

__all__ = ["Config", "ConfigError", "Curriculum", "Stage", "TrainError", "Trainer",
           "load_config", "train"]
