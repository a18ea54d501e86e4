"""Node families: sources, transforms, predict, deblur, restore, upsample, sinks.

``BUILTIN_NODES`` maps the type names used in graph YAML to ``module:Class``; classes are imported
only when a graph uses them, so listing or validating a graph never loads torch needlessly.
A graph can also name any Node subclass by dotted path (``mypackage.nodes:MyNode``).
"""

BUILTIN_NODES: dict[str, str] = {
    "event_generator": "evpipe.nodes.sources.generator:EventGenerator",
    "camera": "evpipe.nodes.sources.camera:Camera",
    "dv_network_source": "evpipe.nodes.sources.dv_network:DvNetworkSource",
    "dv_network_sink": "evpipe.nodes.sinks.dv_network:DvNetworkSink",
    "event_filter": "evpipe.nodes.transforms.filter:EventFilter",
    "metrics": "evpipe.nodes.sinks.metrics:Metrics",
    "replay": "evpipe.nodes.sources.replay:Replay",
    "simulator": "evpipe.nodes.sources.simulator:Simulator",
    "voxelizer": "evpipe.nodes.transforms.voxelizer:Voxelizer",
    "video": "evpipe.nodes.sinks.video:VideoWriter",
    "aedat4": "evpipe.nodes.sinks.aedat4:Aedat4Recorder",
    "rosbag": "evpipe.nodes.sinks.rosbag:RosbagRecorder",
    "images": "evpipe.nodes.sinks.images:ImageWriter",
    "npz": "evpipe.nodes.sinks.npz:NpzWriter",
    "viewer": "evpipe.nodes.sinks.viewer:Viewer",
    "predictor": "evpipe.nodes.predict.node:Predictor",
    "deblur": "evpipe.nodes.deblur.node:Deblur",
    "clip_reader": "evpipe.nodes.restore.node:ClipReader",
    "restore": "evpipe.nodes.restore.node:Restore",
    "upsample": "evpipe.nodes.upsample.node:Upsample",
}
