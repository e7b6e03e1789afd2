from .heatmap import box_sigmas, gaussian_heatmap
from .volume import Volume, boxes_to_network, load_volume, thick_axis, to_file_orientation
from .dataset import CaseFiles, DatasetInfo, VerifyReport, load_dataset, verify_dataset
