# trtflow on NVIDIA's TensorRT container: the only place its TensorRT backend can run
# (TensorRT installs from NVIDIA's own index, unreachable from this project's machines).
# Not built or run on this project's machines: see docs/tensorrt.md.
#
#   docker build -f docker/tensorrt.Dockerfile -t trtflow-tensorrt .
#   docker run --rm --gpus all trtflow-tensorrt            # = make trt-check inside
#
# The tag picks the TensorRT version (NVIDIA's TensorRT container release notes list
# which TensorRT, CUDA and Python each YY.MM-py3 tag holds); trtflow needs Python >= 3.11.
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:25.10-py3
FROM ${TENSORRT_IMAGE}

# NVIDIA's image installs its Python packages into the system interpreter
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
WORKDIR /workspace/trtflow

# Dependencies first (a layer that survives code edits); the pinned set of a fresh clone.
COPY pyproject.toml constraints.txt README.md ./
COPY trtflow/__init__.py trtflow/__init__.py
RUN python3 -m pip install --upgrade "pip>=26" \
 && python3 -m pip install -c constraints.txt -e '.[dev,tensorrt]'

COPY . .
RUN python3 -m pip install --no-deps -e . \
 && python3 -c "import tensorrt, polygraphy; assert hasattr(tensorrt, 'Builder'), \
'this image has no real TensorRT'; print('TensorRT', tensorrt.__version__, \
'Polygraphy', polygraphy.__version__)"

CMD ["bash", "docker/trt-check.sh"]
