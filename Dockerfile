# matdesign API / worker image. Models and data are mounted (see docker-compose.yml).
FROM python:3.11-slim
ARG TORCH_VERSION=2.13.0
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home matdesign
WORKDIR /app
# torch first: its (CUDA) wheel is the largest layer and changes least often.
RUN pip install "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
COPY ml ./ml
RUN pip install . && mkdir -p /cache && chown matdesign /cache
USER matdesign
EXPOSE 8000
CMD ["matdesign", "serve", "--host", "0.0.0.0", "--port", "8000"]
