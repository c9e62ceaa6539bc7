"""Make cyclonedds-python (de)serialise ``sequence[uint8]`` as one bytes block.

Stock cyclonedds 11.0.1 turns ``sequence<uint8>`` into a Python list of ints (``struct`` per element): about
150 ms to serialise and 20 ms to deserialise a 640x480 PointCloud2. Its own ``BytesMachine`` writes the same
wire bytes (uint32 length + raw octets, 4-aligned length) in one copy. This swaps it in for unbounded
``sequence[uint8]`` members. Private API: pinned to cyclonedds 11.0.1 (setup.py extra ``dds``); the golden
tests compare the bytes with rosbags' serializer, so a changed internals would be caught there.

Values may be bytes, bytearray, or any C-contiguous buffer (converted with ``memoryview(...).cast('B')``
by :mod:`keygrid_ros.ros.dds.convert`); received values are ``bytes``.
"""

from __future__ import annotations

_applied = False


def apply() -> None:
    """Idempotent; must run before any IdlStruct using sequence[uint8] is first (de)serialised."""
    global _applied
    if _applied:
        return
    from cyclonedds.idl._builder import Builder
    from cyclonedds.idl._machinery import BytesMachine
    from cyclonedds.idl.types import sequence, uint8

    original = Builder._machine_for_type.__func__

    def machine_for_type(cls, _type, memberid_muflag, add_size_header, use_version_2):
        if isinstance(_type, sequence) and _type.subtype == uint8 and _type.max_length is None:
            return BytesMachine()
        return original(cls, _type, memberid_muflag, add_size_header, use_version_2)

    Builder._machine_for_type = classmethod(machine_for_type)
    _applied = True
