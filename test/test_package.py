"""The package as colcon, ROS 2 and pip users see it: manifest, install layout, docs in sync."""

from __future__ import annotations

import ast
from pathlib import Path
import re
import runpy
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import setuptools

import keygrid_ros
from keygrid_ros import params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def setup_kwargs(monkeypatch_module):
    captured = {}
    monkeypatch_module.setattr(setuptools, 'setup', lambda **kwargs: captured.update(kwargs))
    monkeypatch_module.chdir(ROOT)
    runpy.run_path(str(ROOT / 'setup.py'))
    return captured


@pytest.fixture(scope='module')
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope='module')
def manifest():
    return ET.parse(ROOT / 'package.xml').getroot()


def test_manifest_is_format_3_with_every_runtime_dependency(manifest):
    assert manifest.get('format') == '3'
    assert manifest.findtext('name') == 'keygrid_ros'
    assert manifest.findtext('license') == 'Apache-2.0'
    assert manifest.find('export/build_type').text == 'ament_python'
    exec_deps = {e.text for e in manifest.findall('exec_depend')}
    for dependency in ('rclpy', 'sensor_msgs', 'geometry_msgs', 'visualization_msgs', 'std_msgs', 'tf2_ros',
                       'diagnostic_updater', 'launch', 'launch_ros'):
        assert dependency in exec_deps, dependency
    test_deps = {e.text for e in manifest.findall('test_depend')}
    assert {'python3-pytest', 'ament_flake8', 'ament_pep257', 'ament_copyright'} <= test_deps
    assert manifest.find('maintainer').get('email')


def test_versions_agree(manifest, setup_kwargs):
    assert manifest.findtext('version') == setup_kwargs['version'] == keygrid_ros.__version__


def test_data_files_install_every_launch_config_and_model_file(setup_kwargs):
    installed = {}
    for destination, files in setup_kwargs['data_files']:
        for path in files:
            installed[path] = destination
    assert installed['resource/keygrid_ros'] == 'share/ament_index/resource_index/packages'
    assert installed['package.xml'] == 'share/keygrid_ros'
    for folder in ('launch', 'config', 'models'):
        for path in sorted((ROOT / folder).rglob('*')):
            if path.is_file():
                relative = path.relative_to(ROOT).as_posix()
                assert relative in installed, f'{relative} is not installed by setup.py'
                assert installed[relative] == f'share/keygrid_ros/{Path(relative).parent.as_posix()}'
    assert any(path.endswith('detect.launch.py') for path in installed)


def test_console_scripts_point_at_real_functions(setup_kwargs):
    scripts = dict(item.split(' = ') for item in setup_kwargs['entry_points']['console_scripts'])
    assert scripts['keygrid'] == 'keygrid_ros.cli:main'
    module, function = scripts['keygrid'].split(':')
    assert callable(getattr(__import__(module, fromlist=[function]), function))
    assert 'detector' in scripts  # `ros2 run keygrid_ros detector`, used by the launch file
    assert (ROOT / 'setup.cfg').read_text().count('$base/lib/keygrid_ros') == 2


def test_launch_file_declares_the_documented_arguments():
    source = (ROOT / 'launch' / 'detect.launch.py').read_text()
    tree = ast.parse(source)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', '') == 'ARGUMENTS' for t in node.targets):
            names = {element.elts[0].value for element in node.value.elts}
    assert {'namespace', 'points', 'params_file', 'model', 'device', 'robot_frames', 'rviz'} <= names
    assert "executable='detector'" in source and 'generate_launch_description' in source


def test_shipped_config_is_the_schema_defaults():
    assert params.load_yaml(ROOT / 'config' / 'detect.yaml') == params.defaults()
    assert (ROOT / 'config' / 'detect.yaml').read_text() == params.to_yaml()


def test_every_parameter_is_described_and_its_default_valid():
    for spec in params.DETECT_PARAMS:
        assert len(spec.description) > 20, spec.name
        assert spec.check(spec.default) is None, spec.name
        assert re.fullmatch(r'[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*', spec.name), spec.name


def test_readme_documents_every_parameter_and_the_two_commands():
    readme = (ROOT / 'README.md').read_text()
    assert params.markdown_table() in readme, 'README parameter table is stale: regenerate it'
    assert 'make demo' in readme and 'make test' in readme
    assert 'ros2 launch keygrid_ros detect.launch.py' in readme
    assert 'make test' in (ROOT / '.ci' / 'run').read_text()


def test_no_pickle_based_loading_anywhere():
    offenders = []
    for path in (ROOT / 'keygrid_ros').rglob('*.py'):
        text = path.read_text()
        if re.search(r'\bpickle\b|torch\.load\((?![^)]*weights_only=True)', text):
            offenders.append(path.relative_to(ROOT).as_posix())
    assert not offenders, offenders


def test_cli_help_lists_the_contract_subcommands():
    out = subprocess.run([sys.executable, '-m', 'keygrid_ros.cli', '--help'], capture_output=True, text=True,
                         check=True).stdout
    for command in ('simulate', 'render', 'train', 'evaluate', 'predict', 'detect', 'bench'):
        assert command in out
