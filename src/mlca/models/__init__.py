"""MAY: MobileNetV3-small + attention backbone, YOLOv5 PAN neck and Detect head."""

from .head import DEFAULT_ANCHORS, Detect
from .info import model_info
from .may import MAY, build_may, build_may_from_yaml
from .mobilenetv3 import MAY_BLOCKS, BlockSetting, InvertedResidual, MobileNetV3Backbone
from .neck import PAN

__all__ = [
    "MAY", "build_may", "build_may_from_yaml", "model_info", "Detect", "DEFAULT_ANCHORS", "PAN",
    "MobileNetV3Backbone", "InvertedResidual", "BlockSetting", "MAY_BLOCKS",
]
