from synthaug.train.loop import TrainConfig, predict, train_classifier
from synthaug.train.losses import LOSSES, create_loss
from synthaug.train.mixing import MIXING, make_batches
from synthaug.train.models import ModelConfig, create_classifier, load_classifier, parameter_counts

__all__ = ["LOSSES", "MIXING", "ModelConfig", "TrainConfig", "create_classifier", "create_loss", "load_classifier",
           "make_batches", "parameter_counts", "predict", "train_classifier"]
