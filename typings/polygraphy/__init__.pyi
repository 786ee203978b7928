# Typed stub of the NVIDIA Polygraphy 0.53 API subset trtflow calls (Polygraphy ships no
# py.typed). Written from its docstrings (github.com/NVIDIA/TensorRT, tools/Polygraphy);
# tests/unit/test_tensorrt_backend.py checks every name and parameter here against the
# installed polygraphy (inspect.signature). Loaders return the TensorRT types of
# typings/tensorrt, so mypy checks what trtflow does with an engine.
__version__: str
