"""``keygrid export-model IN OUT [--weights-dtype float16] [--softmax-temperature T]``: copy a model file,
re-storing its weights.

Works on both model formats (Key-Grid and USEEK student). The input is loaded with every check the node
applies (format, metadata, checksum, architecture) before anything is written; the output keeps all of the
metadata, records the new ``weights_dtype`` and a checksum of the stored tensors, and is written atomically.
``float16`` halves the file (the shipped student: 112 MB -> 56 MB); loading widens the weights back to
float32, so inference still runs in float32 with weights rounded to 11 significant bits.

``--softmax-temperature`` (students only) records how sharply the student's keypoints are read from its
logits (:func:`~keygrid_ros.model.sprin.keypoints_from_logits`); every later reader (node, evaluate, predict)
uses it. Choose it on held-out sequences (docs/results.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('source', help='model file to read (.safetensors)')
    parser.add_argument('out', help='model file to write (.safetensors); may not be the source')
    parser.add_argument('--weights-dtype', default='float16', choices=('float16', 'float32'),
                        help='how the output stores floating-point weights (default: float16, half the size)')
    parser.add_argument('--softmax-temperature', type=float, default=None, metavar='T',
                        help="USEEK students only: the softmax temperature of the keypoints' weights, recorded in "
                             'the file (default: keep the source\'s; 1 as released)')


def export_model(source: Path, out: Path, weights_dtype: str, softmax_temperature: float | None = None
                 ) -> dict[str, object]:
    """Check ``source`` fully, then write it to ``out`` with its weights in ``weights_dtype`` (and, for a
    student, ``softmax_temperature`` when given); a summary dict."""
    from .io import checksum, read_safetensors, stored_weights, write_model_file
    from .student import FORMAT as STUDENT_FORMAT
    from .student import load_keypoint_model, valid_temperature

    if source.resolve() == out.resolve():
        raise ValueError('the output must be another file than the source (it is written while the source is read)')
    load_keypoint_model(source, device='cpu', compile=False)  # every check the node makes, or ModelFileError
    raw, tensors = read_safetensors(source, load_tensors=True)
    extra = {}
    if softmax_temperature is not None:
        if raw.get('format') != STUDENT_FORMAT:
            raise ValueError('--softmax-temperature applies to USEEK student files only')
        if not valid_temperature(softmax_temperature):
            raise ValueError(f'--softmax-temperature must be a positive number, got {softmax_temperature}')
        extra['softmax_temperature'] = json.dumps(float(softmax_temperature))
    # Widen first so that float16 -> float32 -> float16 is exact and float32 output of a float16 file works.
    widened = {name: t.float() if t.dtype.is_floating_point else t for name, t in tensors.items()}
    stored = stored_weights(widened, weights_dtype)
    metadata = {**raw, **extra, 'weights_sha256': checksum(stored), 'weights_dtype': weights_dtype}
    write_model_file(out, stored, metadata)
    load_keypoint_model(out, device='cpu', compile=False)  # what was written loads, or the error says why
    summary = {'source': str(source), 'out': str(out), 'format': raw.get('format'), 'weights_dtype': weights_dtype,
               'bytes_in': source.stat().st_size, 'bytes_out': out.stat().st_size}
    if 'softmax_temperature' in metadata:
        summary['softmax_temperature'] = json.loads(metadata['softmax_temperature'])
    return summary


def run(args: argparse.Namespace) -> int:
    from .io import ModelFileError

    try:
        summary = export_model(Path(args.source), Path(args.out), args.weights_dtype, args.softmax_temperature)
    except (ModelFileError, ValueError, OSError) as exc:
        print(f'keygrid export-model: {exc}', file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
