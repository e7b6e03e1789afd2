"""Whole-volume inference: sliding windows, outputs in the input's geometry, detection NMS."""

from .predictor import Prediction, Predictor, find_cases, save_nifti_like
from .run import predict

__all__ = ["Prediction", "Predictor", "find_cases", "predict", "save_nifti_like"]
