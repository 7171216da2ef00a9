"""OpenVINO backend for hotswap, registered under the entry-point group `hotswap.backends`."""

from hotswap_openvino.backend import OpenVINOBackend, OpenVINOOptions

__all__ = ["OpenVINOBackend", "OpenVINOOptions"]
