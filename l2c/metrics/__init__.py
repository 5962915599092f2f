from .fid import feature_statistics, frechet_distance
from .scores import class_accuracy, inception_score, paired_metrics, precision_recall

__all__ = [
    "feature_statistics",
    "frechet_distance",
    "class_accuracy",
    "inception_score",
    "paired_metrics",
    "precision_recall",
]
