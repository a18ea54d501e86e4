"""ROS message types of event cameras for `rosbags`: built-in definitions and the typestores that hold them.

A bag normally embeds the definition of every message type it holds (ROS 1 and ROS 2 ``.msg`` text, or
ROS 2 IDL); the reader parses those first. These built-in definitions are the fallback for a bag whose
embedded definition is missing or cannot be parsed, and what the ``rosbag`` sink writes. They are the
upstream packages' own: ``dvs_msgs`` (rpg_dvs_ros), ``prophesee_event_msgs`` (prophesee_ros_wrapper) and
``event_camera_msgs`` (ros-event-camera). ``sensor_msgs/Image`` and ``sensor_msgs/Imu`` come from the
typestores rosbags ships (ROS 1 Noetic, ROS 2 Humble).
"""

from __future__ import annotations

from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

EVENT_PACKET = "event_camera_msgs/msg/EventPacket"
DVS_EVENT_ARRAY = "dvs_msgs/msg/EventArray"
PROPHESEE_EVENT_ARRAY = "prophesee_event_msgs/msg/EventArray"
IMAGE = "sensor_msgs/msg/Image"
IMU = "sensor_msgs/msg/Imu"

_EVENT = "uint16 x\nuint16 y\nbuiltin_interfaces/Time ts\nbool polarity\n"
_EVENT_ARRAY = "std_msgs/Header header\nuint32 height\nuint32 width\n{event}[] events\n"
BUILTIN_DEFINITIONS: dict[str, str] = {
    "dvs_msgs/msg/Event": _EVENT,
    DVS_EVENT_ARRAY: _EVENT_ARRAY.format(event="dvs_msgs/Event"),
    "prophesee_event_msgs/msg/Event": _EVENT,
    PROPHESEE_EVENT_ARRAY: _EVENT_ARRAY.format(event="prophesee_event_msgs/Event"),
    EVENT_PACKET: "std_msgs/Header header\nuint32 height\nuint32 width\nuint64 seq\nuint64 time_base\n"
    "string encoding\nbool is_bigendian\nuint8[] events\n",
}
EVENT_TYPES = (EVENT_PACKET, DVS_EVENT_ARRAY, PROPHESEE_EVENT_ARRAY)
SUPPORTED_TYPES = (*EVENT_TYPES, IMAGE, IMU)


def builtin_typestore(ros1: bool) -> Typestore:
    """ROS 1 Noetic's or ROS 2 Humble's standard types plus the built-in event camera types."""
    store = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)
    types = {}
    for name, text in BUILTIN_DEFINITIONS.items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    return store


def embedded_typestore(definition: str, msgtype: str, idl: bool) -> Typestore:
    """A typestore holding ``msgtype`` as the bag's embedded definition declares it (with its dependencies).

    ``idl``: the definition is ROS 2 IDL (one or several IDL files, each after a line of 80 '=' and
    ``IDL: name``), else ``.msg`` text. Raises what rosbags raises on a definition it cannot parse.
    """
    if idl:
        separator = "=" * 80 + "\n"
        types = {}
        parts = definition.split(separator)[1:] if definition.startswith(separator + "IDL: ") else [definition]
        for part in parts:
            types.update(get_types_from_idl(part.split("\n", 1)[1] if part.startswith("IDL: ") else part))
    else:
        types = get_types_from_msg(definition, msgtype)
    store = get_typestore(Stores.EMPTY)
    store.register(types)
    store.get_msgdef(msgtype)  # every field's type resolves, or this raises
    return store

