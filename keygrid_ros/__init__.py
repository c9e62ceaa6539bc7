"""keygrid_ros: garment keypoints from depth point clouds (Key-Grid, NeurIPS 2024) for ROS 2."""

__version__ = '0.1.0'
