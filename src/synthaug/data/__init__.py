from synthaug.data.longtail import longtail_counts, longtail_subsample
from synthaug.data.schema import LabeledImages, LabelGroup, LabelSchema
from synthaug.data.sources import DataError, DataSplits, load_source
from synthaug.data import attributes as _attributes  # noqa: F401  (registers "deepfashion-attributes")
from synthaug.data import cifar as _cifar  # noqa: F401  (registers "cifar10", "cifar100")
from synthaug.data import lists as _lists  # noqa: F401  (registers "image-list", "inaturalist")
from synthaug.data import hf as _hf  # noqa: F401  (registers "hf-dataset")
from synthaug.data.stats import ClassStats, ShotThresholds

__all__ = [
    "ClassStats", "DataError", "DataSplits", "LabeledImages", "LabelGroup", "LabelSchema", "ShotThresholds",
    "load_source", "longtail_counts", "longtail_subsample",
]
