"""Key-Grid (NeurIPS 2024) in plain PyTorch: encoder, grid heatmap, decoder, losses, model files, inference.

Read in this order: ``config`` (every number), ``encoder`` (keypoints), ``heatmap`` (the grid),
``decoder`` (reconstruction), ``keygrid`` (the model and its losses), ``io`` (files), ``inference`` (the node's
wrapper). The point-cloud ops are in :mod:`keygrid_ros.ops`.
"""

from .config import ARCHITECTURE_FIELDS, KeyGridConfig
from .inference import KeypointDetector, KeypointModel, Prediction, export_detector, resolve_device
from .io import ModelFileError, load_model, read_metadata, save_model
from .keygrid import KeyGrid, KeyGridOutput

__all__ = [
    'ARCHITECTURE_FIELDS', 'KeyGrid', 'KeyGridConfig', 'KeyGridOutput', 'KeypointDetector', 'KeypointModel',
    'ModelFileError', 'Prediction', 'export_detector', 'load_model', 'read_metadata', 'resolve_device', 'save_model',
]
