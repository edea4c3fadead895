"""Screen sharing: capture (mss), change detection, encoding once for many viewers (PyAV).

- ``monitors()`` lists the monitors; ``Capturer`` grabs one in its own thread and
  hands on changed frames (``grab``).
- ``EncodedScreen`` encodes each changed frame once and gives every viewer a
  ``PacketTrack`` of the same packets; ``ScreenTrack`` is the plain alternative where
  aiortc encodes per viewer (``tracks``).
- ``add_screen_transceiver`` / ``share`` / ``unshare`` put them on aiortc peer
  connections without renegotiation (``rtc``).
- ``ScreenViewer`` is the CSR's side: latest decoded frame, fps, PNG snapshots
  (``viewer``).

Bitrate and frame-rate bounds, and the measurements behind them, are in
``encoder`` and ``grab``.
"""

from agent.capture.encoder import (
    BITRATE_1080P,
    BITRATE_MAX,
    BITRATE_MIN,
    Encoder,
    EncoderSettings,
    default_bitrate,
)
from agent.capture.grab import (
    FPS_IDLE,
    FPS_MAX,
    FPS_MIN,
    Capture,
    Capturer,
    CaptureStats,
    MonitorInfo,
    monitors,
)
from agent.capture.rtc import add_screen_transceiver, raise_aiortc_bitrate_caps, share, unshare
from agent.capture.tracks import EncodedScreen, PacketTrack, ScreenStats, ScreenTrack
from agent.capture.viewer import FrameTime, ScreenViewer

__all__ = [
    "BITRATE_1080P",
    "BITRATE_MAX",
    "BITRATE_MIN",
    "FPS_IDLE",
    "FPS_MAX",
    "FPS_MIN",
    "Capture",
    "CaptureStats",
    "Capturer",
    "EncodedScreen",
    "Encoder",
    "EncoderSettings",
    "FrameTime",
    "MonitorInfo",
    "PacketTrack",
    "ScreenStats",
    "ScreenTrack",
    "ScreenViewer",
    "add_screen_transceiver",
    "default_bitrate",
    "monitors",
    "raise_aiortc_bitrate_caps",
    "share",
    "unshare",
]
