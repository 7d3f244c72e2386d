# The fedtune SuperExec image: Flower's official SuperExec plus fedtune and its dependencies.
# The ServerApp and every ClientApp run in it (docker-compose.yml); runtime dependency
# installation stays off, so nothing is fetched when a run starts.
#   docker build -t fedtune-superexec:0.1.0 .
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 ...   # GPU
FROM flwr/superexec:1.42.0

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md ./
COPY fedtune fedtune
COPY scenarios scenarios
# Editable, as the README installs it: shipped scenarios are found by name in /app/scenarios
# (the warm worker runs this install, not the app bundle).
# The image's flwr stays as it is (no Ray: the Simulation Engine is not used here).
RUN sed -i -e 's/"flwr\[simulation,dp\]/"flwr[dp]/' -e '/^    "ray",/d' pyproject.toml \
 && python -m pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}" \
 && python -m pip install --no-cache-dir -e .

# The image runs as Flower's user `app` (uid 49999): the warm worker's socket directory and the
# tokenized-shard cache (a named volume starts with this directory's owner) belong to it.
USER root
RUN install -d -m 0700 -o app -g app /run/fedtune && install -d -o app -g app /cache
USER app

ENV HF_HUB_OFFLINE=1
ENTRYPOINT ["flower-superexec"]
