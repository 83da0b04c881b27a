# Beam SDK worker image holding this package, for runners whose workers cannot install it from
# --setup_file (Flink and Spark with environment_type DOCKER: configs/flink.yaml, spark.yaml).
# Build from the repository root and push where the cluster can pull it:
#
#   docker build -f configs/worker.Dockerfile -t YOUR_REGISTRY/nnmf-pipeline-beam-sdk:2.77.0 .
#   docker push YOUR_REGISTRY/nnmf-pipeline-beam-sdk:2.77.0
#
# The base image's Beam and Python versions must match the launching environment's
# (apache-beam 2.77.0, Python 3.11 here).
FROM apache/beam_python3.11_sdk:2.77.0
# A compiler for the native half-step kernel (nnmf_tf/native.py builds it on first use).
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
COPY setup.py README.md /opt/nnmf-pipeline/
COPY nnmf_tf /opt/nnmf-pipeline/nnmf_tf
COPY pipeline /opt/nnmf-pipeline/pipeline
RUN pip install --no-cache-dir /opt/nnmf-pipeline
# Build the kernel into the image for the build machine's CPU; a worker with another CPU
# builds its own copy at its first half-step (the folder stays writable for every user).
ENV NNMF_KERNEL_CACHE=/opt/nnmf-kernels
RUN python -c "from nnmf_tf import native; assert native.solve_rows_op() is not None, native.unavailable_reason()" \
    && chmod 1777 /opt/nnmf-kernels
