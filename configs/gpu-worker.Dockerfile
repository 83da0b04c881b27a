# Dataflow GPU worker image (configs/dataflow-gpu.yaml): the Beam SDK image with the GPU build
# of TensorFlow and its CUDA libraries. This package itself is staged by --setup_file;
# NNMF_TENSORFLOW=tensorflow makes it require the TensorFlow build already in the image
# instead of tensorflow-cpu. Dataflow installs the NVIDIA driver (see the config's
# worker_accelerator option). Build from the repository root and push to Artifact Registry:
#
#   docker build -f configs/gpu-worker.Dockerfile -t REGION-docker.pkg.dev/PROJECT/REPO/nnmf-gpu:2.77.0 .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/nnmf-gpu:2.77.0
FROM apache/beam_python3.11_sdk:2.77.0
ENV NNMF_TENSORFLOW=tensorflow
RUN pip install --no-cache-dir 'tensorflow[and-cuda]>=2.16'
