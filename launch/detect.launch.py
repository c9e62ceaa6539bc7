"""Start the keygrid detector (and optionally RViz).

    ros2 launch keygrid_ros detect.launch.py points:=/camera/depth/color/points target_frame:=base_link

Arguments left empty keep the value from the parameters file (``config/detect.yaml`` by default).
Works on Humble and Jazzy: only launch / launch_ros APIs present in both are used.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = (
    ('namespace', '', 'Namespace of the node and its topics.'),
    ('points', 'points', 'Input sensor_msgs/PointCloud2 topic (remaps the relative name "points").'),
    ('params_file', '', 'Parameters file (ROS layout). Empty: the package\'s config/detect.yaml.'),
    ('model', '', 'Model file (.safetensors); relative paths resolve against share/keygrid_ros. '
                  'Empty: keep the parameters file value.'),
    ('model_type', '', 'keygrid or useek: the network the model file holds (useek for the SE(3)-invariant '
                       'student). Empty: keep the parameters file value.'),
    ('device', '', "Inference device: auto, cpu, cuda:0 ... Empty: keep the parameters file value."),
    ('target_frame', '', 'Output frame (e.g. base_link). Empty: keep the parameters file value.'),
    ('robot_frames', '', "Robot frames to cut from the cloud (self_filter.frames), e.g. 'left_tool0 right_tool0'. "
                         'Empty: keep the parameters file value.'),
    ('use_sim_time', 'false', 'Use /clock (set true when replaying bags with --clock).'),
    ('rviz', 'false', 'Also start RViz with the package\'s display configuration.'),
    ('log_level', 'info', 'Logging level of the detector node.'),
)


def _detector(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    params_file = arg('params_file') or PathJoinSubstitution(
        [FindPackageShare('keygrid_ros'), 'config', 'detect.yaml']).perform(context)
    overrides = {'use_sim_time': arg('use_sim_time').lower() in ('true', '1', 'yes')}
    for launch_name, parameter in (('model', 'model_path'), ('model_type', 'model_type'), ('device', 'device'),
                                   ('target_frame', 'target_frame'), ('robot_frames', 'self_filter.frames')):
        if arg(launch_name):
            overrides[parameter] = arg(launch_name)
    return [Node(
        package='keygrid_ros',
        executable='detector',
        name='keygrid_detector',
        namespace=arg('namespace'),
        parameters=[params_file, overrides],
        remappings=[('points', arg('points'))],
        arguments=['--ros-args', '--log-level', arg('log_level')],
        output='screen',
        emulate_tty=True,
    )]


def generate_launch_description():
    declared = [DeclareLaunchArgument(name, default_value=default, description=description)
                for name, default, description in ARGUMENTS]
    rviz = Node(
        package='rviz2',
        executable='rviz2',
        name='keygrid_rviz',
        arguments=['-d', PathJoinSubstitution([FindPackageShare('keygrid_ros'), 'config', 'keygrid.rviz'])],
        condition=IfCondition(LaunchConfiguration('rviz')),
        output='log',
    )
    return LaunchDescription([*declared, OpaqueFunction(function=_detector), rviz])
