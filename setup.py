"""ament_python package definition; also a plain `pip install -e .` package.

Every launch, config, model and sample file is listed in ``data_files`` so that
``colcon build`` (with or without ``--symlink-install``) installs it into
``share/keygrid_ros`` where the node and the launch file look for it.
Python dependencies are declared here once; ``constraints.txt`` pins the versions CI installs.
"""

from glob import glob
import os

from setuptools import find_packages, setup

PACKAGE = 'keygrid_ros'


def share_files(pattern):
    """Files matching ``pattern`` (relative to the package root), sorted, regular files only."""
    return sorted(path for path in glob(pattern, recursive=True) if os.path.isfile(path))


def share_tree(folder):
    """One data_files entry per sub-folder of ``folder`` so that its layout survives install."""
    entries = []
    for root, _dirs, files in os.walk(folder):
        paths = sorted(os.path.join(root, name) for name in files)
        if paths:
            entries.append((os.path.join('share', PACKAGE, root), paths))
    return sorted(entries)


setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        (os.path.join('share', PACKAGE), ['package.xml', 'README.md']),
        (os.path.join('share', PACKAGE, 'launch'), share_files('launch/*.launch.py')),
        (os.path.join('share', PACKAGE, 'config'), share_files('config/*')),
        *share_tree('models'),
        *share_tree('data/samples'),
    ],
    python_requires='>=3.10',
    install_requires=[
        'numpy>=1.24',
        'scipy>=1.10',
        'torch>=2.1',
        'fpsample>=0.3.3',
        'pyyaml>=6.0',
        'safetensors>=0.4',
        'rosbags>=0.10.4',
        'matplotlib>=3.7',
        'tqdm>=4.60',
        'threadpoolctl>=3.1',  # one BLAS thread for the tracker's small matrices (keygrid_ros/blas.py)
    ],
    extras_require={
        # Talk to a ROS 2 graph without ROS 2 installed (keygrid detect --transport dds).
        'dds': ['cyclonedds==11.0.1'],
        # Cloth simulation and garment meshing (keygrid simulate).
        'sim': ['newton>=1.8.0', 'warp-lang>=1.17.0', 'triangle>=20230923', 'shapely>=2.0'],
        # Training logs (keygrid train).
        'train': ['tensorboard>=2.14'],
        'test': ['pytest>=7.0', 'hypothesis>=6.80', 'ruff>=0.5'],
    },
    zip_safe=True,
    maintainer='keygrid_ros maintainers',
    maintainer_email='maintainers@keygrid-ros.dev',
    description='Garment keypoints from depth point clouds with Key-Grid, as a ROS 2 node and offline tools.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'keygrid = keygrid_ros.cli:main',
            # `ros2 run keygrid_ros detector` / launch: the rclpy node.
            'detector = keygrid_ros.ros.rclpy_node:main',
        ],
    },
)
