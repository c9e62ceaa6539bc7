"""Sequence readers: our npz, Key-Grid text files, per-frame OBJ folders, and the errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest

from keygrid_ros.data.meshes import write_obj
from keygrid_ros.data.sequences import (
    Sequence,
    SequenceFormatError,
    fingerprint,
    load_keygrid_txt,
    load_npz,
    load_obj_frames,
    load_sequence,
    obj_frame_files,
    save_sequence,
)

from conftest import require


def _seq(rng, t=4, v=30):
    verts = rng.normal(size=(t, v, 3)).astype(np.float32)
    faces = np.array([[0, 1, 2], [2, 3, 4]], dtype=np.int32)
    kp = verts[:, [0, 5]]
    return Sequence(verts, faces, 'tshirt', 'fold', kp, ['a', 'b'], {'seconds': 1.5})


def test_npz_round_trip_follows_the_contract(tmp_path, rng):
    seq = _seq(rng)
    path = save_sequence(tmp_path / 'sub' / 's.npz', seq)
    with np.load(path) as raw:  # the contract, read without our loader
        assert raw['vertices'].dtype == np.float32 and raw['vertices'].shape == (4, 30, 3)
        assert raw['faces'].dtype == np.int32 and str(raw['garment']) == 'tshirt' and str(raw['motion']) == 'fold'
        assert raw['keypoints'].shape == (4, 2, 3)
    back = load_sequence(path)
    assert np.array_equal(back.vertices, seq.vertices) and np.array_equal(back.faces, seq.faces)
    assert back.keypoint_names == ['a', 'b'] and back.info == {'seconds': 1.5} and back.motion == 'fold'
    assert not list(tmp_path.glob('sub/*.tmp*'))


def test_fingerprint_follows_the_content_not_the_file(tmp_path, rng):
    seq = _seq(rng)
    first = fingerprint(seq)
    assert len(first) == 16 and int(first, 16) >= 0
    # The same data saved elsewhere, read back, or with other run notes in info is the same data.
    copy = load_sequence(save_sequence(tmp_path / 'elsewhere' / 'copy.npz', seq))
    assert fingerprint(copy) == first
    assert fingerprint(Sequence(seq.vertices.copy(), seq.faces, 'tshirt', 'fold', seq.keypoints, ['a', 'b'],
                                {'seconds': 99.0}, 'other.npz')) == first
    # Anything scored changes it: one vertex by a micrometre, the faces, the labels, the ground truth.
    moved = seq.vertices.copy()
    moved[2, 7, 1] += 1e-6
    changed = [Sequence(moved, seq.faces, 'tshirt', 'fold', seq.keypoints, ['a', 'b']),
               Sequence(seq.vertices, seq.faces[::-1].copy(), 'tshirt', 'fold', seq.keypoints, ['a', 'b']),
               Sequence(seq.vertices, None, 'tshirt', 'fold', seq.keypoints, ['a', 'b']),
               Sequence(seq.vertices, seq.faces, 'pants', 'fold', seq.keypoints, ['a', 'b']),
               Sequence(seq.vertices, seq.faces, 'tshirt', 'drag', seq.keypoints, ['a', 'b']),
               Sequence(seq.vertices, seq.faces, 'tshirt', 'fold', None, None),
               Sequence(seq.vertices, seq.faces, 'tshirt', 'fold', seq.keypoints, ['b', 'a'])]
    prints = [fingerprint(c) for c in changed]
    assert first not in prints and len(set(prints)) == len(prints)


def test_npz_errors_name_the_file(tmp_path, rng):
    seq = _seq(rng)
    seq.vertices[2, 3, 1] = np.nan
    np.savez(tmp_path / 'nan.npz', vertices=seq.vertices)
    with pytest.raises(SequenceFormatError, match=r'nan\.npz.*frame\(s\) \[2\]'):
        load_npz(tmp_path / 'nan.npz')
    np.savez(tmp_path / 'flat.npz', vertices=np.zeros((4, 30)))
    with pytest.raises(SequenceFormatError, match=r'flat\.npz.*\(T, V, 3\)'):
        load_npz(tmp_path / 'flat.npz')
    np.savez(tmp_path / 'faces.npz', vertices=np.zeros((2, 3, 3)), faces=np.array([[0, 1, 5]]))
    with pytest.raises(SequenceFormatError, match=r'faces\.npz'):
        load_npz(tmp_path / 'faces.npz')
    np.savez(tmp_path / 'kp.npz', vertices=np.zeros((2, 3, 3)), keypoints=np.zeros((3, 1, 3)))
    with pytest.raises(SequenceFormatError, match=r'kp\.npz.*keypoints'):
        load_npz(tmp_path / 'kp.npz')
    (tmp_path / 'junk.npz').write_bytes(b'not a zip')
    with pytest.raises(SequenceFormatError, match=r'junk\.npz'):
        load_npz(tmp_path / 'junk.npz')


def test_keygrid_text_layout(tmp_path, rng):
    frames = rng.normal(size=(3, 2048, 3))
    path = tmp_path / 'pant_seqdata.txt'
    np.savetxt(path, frames.reshape(-1, 3))  # exactly how the released code writes it
    seq = load_sequence(path)
    assert seq.vertices.shape == (3, 2048, 3) and seq.faces is None
    assert np.allclose(seq.vertices, frames, atol=1e-6)
    np.savetxt(tmp_path / 'short.txt', frames.reshape(-1, 3)[:-1])
    with pytest.raises(SequenceFormatError, match=r'short\.txt.*6143 rows'):
        load_keygrid_txt(tmp_path / 'short.txt')
    bad = frames.reshape(-1, 3).copy()
    bad[5000, 0] = np.nan
    np.savetxt(tmp_path / 'nan.txt', bad)
    with pytest.raises(SequenceFormatError, match=r'nan\.txt.*\[2\]'):
        load_keygrid_txt(tmp_path / 'nan.txt')
    np.savetxt(tmp_path / 'cols.txt', rng.normal(size=(2048, 4)))
    with pytest.raises(SequenceFormatError, match=r'cols\.txt.*3 columns'):
        load_keygrid_txt(tmp_path / 'cols.txt')


def test_obj_frame_folder_is_ordered_by_time_step(tmp_path, rng):
    faces = np.array([[0, 1, 2]])
    steps = [0, 20, 100, 40]  # written out of order; 100 must come last, not after 0 as text sorts
    for t in steps:
        write_obj(tmp_path / f'056_fix_timestep_{t}.obj', np.full((3, 3), float(t)), faces)
    (tmp_path / 'notes.obj').write_text('v 0 0 0\n')  # not a frame
    assert [p.name for p in obj_frame_files(tmp_path)] == [f'056_fix_timestep_{t}.obj' for t in (0, 20, 40, 100)]
    seq = load_obj_frames(tmp_path, units='m', up='z')
    assert seq.vertices[:, 0, 0].tolist() == [0, 20, 40, 100] and seq.faces.tolist() == [[0, 1, 2]]
    assert load_obj_frames(tmp_path, units='m', up='z', stride=2).frames == 2
    write_obj(tmp_path / '056_fix_timestep_60.obj', np.zeros((4, 3)), faces)
    with pytest.raises(SequenceFormatError, match=r'timestep_60\.obj: 4 vertices'):
        load_obj_frames(tmp_path)
    with pytest.raises(SequenceFormatError, match='no'):
        load_obj_frames(tmp_path / 'empty' if (tmp_path / 'empty').mkdir() is None else tmp_path)


def test_real_diffcloth_frame_folder(shared_data):
    folder = require(shared_data / 'diffcloth' / 'tshirt_wind_frames')
    seq = load_sequence(folder)
    assert seq.vertices.shape == (3, 1426, 3) and seq.info['files'] == ['0.obj', '125.obj', '250.obj']
    assert seq.info['units'] == 'dm'
    # z up after conversion: the wind lifts the shirt, so later frames reach higher.
    assert seq.vertices[2, :, 2].max() > seq.vertices[0, :, 2].max()


def test_unknown_format(tmp_path):
    (tmp_path / 'x.ply').write_text('ply')
    with pytest.raises(SequenceFormatError, match=r'x\.ply'):
        load_sequence(tmp_path / 'x.ply')
    with pytest.raises(FileNotFoundError):
        load_sequence(tmp_path / 'missing.npz')
