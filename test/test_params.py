"""The parameter schema: ROS-layout files, validation messages, overrides."""

from __future__ import annotations

import pytest

from keygrid_ros import params
from keygrid_ros.perception.preprocess import PreprocessConfig


def write(tmp_path, text):
    path = tmp_path / 'params.yaml'
    path.write_text(text)
    return path


def test_node_section_overrides_the_wildcard_section(tmp_path):
    path = write(tmp_path, '''
/**:
  ros__parameters:
    voxel_size: 0.01
    table: {distance_threshold: 0.008}
keygrid_detector:
  ros__parameters:
    voxel_size: 0.002
other_node:
  ros__parameters:
    voxel_size: 0.03
''')
    values = params.load_yaml(path)
    assert values['voxel_size'] == 0.002
    assert values['table.distance_threshold'] == 0.008
    assert values['cluster.tolerance'] == params.defaults()['cluster.tolerance']


def test_every_problem_is_named_at_once(tmp_path):
    path = write(tmp_path, '''
/**:
  ros__parameters:
    voxel_size: -1.0
    cluster: {select: biggest, min_points: 2.5}
    crop: {min: [0, 0, 0], max: [1, -1, 1]}
    not_a_parameter: 3
''')
    with pytest.raises(params.ParameterError) as error:
        params.load_yaml(path)
    message = str(error.value)
    for fragment in ('voxel_size: -1.0 is below the minimum 0.0', "cluster.select: 'biggest' is not one of",
                     'cluster.min_points: expected int, got float', 'crop.min [0.0, 0.0, 0.0] must be below crop.max',
                     'not_a_parameter: unknown parameter', str(path)):
        assert fragment in message


@pytest.mark.parametrize('text', ['- a list', '/**: {no_ros_parameters: 1}', '/**: {ros__parameters: {a: [}'])
def test_malformed_files_are_clear_errors(tmp_path, text):
    with pytest.raises(params.ParameterError):
        params.load_yaml(write(tmp_path, text))


def test_integer_written_for_a_float_is_accepted():
    assert params.validate({'voxel_size': 0})['voxel_size'] == 0.0
    assert isinstance(params.validate({'crop.min': [0, 0, 0]})['crop.min'][0], float)


def test_booleans_are_not_numbers():
    with pytest.raises(params.ParameterError, match='expected int'):
        params.validate({'num_points': True})


def test_non_finite_values_are_refused():
    with pytest.raises(params.ParameterError, match='finite'):
        params.validate({'tf_timeout_s': float('nan')})
    with pytest.raises(params.ParameterError, match='finite'):
        params.validate({'crop.max': [1.0, float('inf'), 1.0]})


def test_overrides_use_ros_syntax_and_are_validated():
    values = params.apply_overrides(params.defaults(), ['voxel_size:=0.01', 'crop.max:=[1, 1, 2]'])
    assert values['voxel_size'] == 0.01 and values['crop.max'] == [1.0, 1.0, 2.0]
    with pytest.raises(params.ParameterError):
        params.apply_overrides(params.defaults(), ['voxel_size:=big'])
    with pytest.raises(params.ParameterError, match='name:=value'):
        params.apply_overrides(params.defaults(), ['voxel_size'])


def test_preprocess_config_follows_the_parameters():
    values = params.apply_overrides(params.defaults(), ['cluster.select:=nearest_center', 'table.enabled:=false'])
    config = PreprocessConfig.from_params(values)
    assert config.cluster_select == 'nearest_center' and not config.table_enabled
    assert PreprocessConfig.from_params() == PreprocessConfig.from_params(params.defaults())
    # The dataclass defaults are the schema defaults (one source of truth, checked).
    assert PreprocessConfig() == PreprocessConfig.from_params()
