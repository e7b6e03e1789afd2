from .segmentation import (LITS_CLASSES, SegmentationResult, classes_from_labels, dice, evaluate_arrays,
                           evaluate_segmentation)
from .detection import (FROC_RATES, Detection, FROCResult, case_findings, evaluate_detection, froc,
                        non_max_suppression, plot_froc, radius_from_mm, read_boxes_json, read_detections_csv,
                        write_detections_csv)
