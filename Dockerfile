# syntax=docker/dockerfile:1
#
# StacyVM control plane, built from this repository (packages/server).
#
#   docker build -t stacyvm:dev .
#   docker run -e STACYVM_AUTH_API_KEY=$(openssl rand -hex 32) -p 7423:7423 stacyvm:dev
#
# The server binds 0.0.0.0 inside the container, which it only does with an
# API key (STACYVM_AUTH_API_KEY): without one it refuses to start. Every
# setting can come from STACYVM_* variables or a file named by STACYVM_CONFIG
# (see docs/configuration.md). deploy/ has Compose files with Traefik.

ARG NODE_IMAGE=node:20-slim

# --- production dependencies (native better-sqlite3 needs a compiler when no prebuilt binary fits)
FROM ${NODE_IMAGE} AS deps
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
COPY packages/server/package.json packages/server/
COPY packages/sdk/package.json packages/sdk/
RUN npm ci --omit=dev --workspace packages/server --include-workspace-root=false \
 && npm cache clean --force

# --- compile TypeScript
FROM deps AS build
RUN npm ci --workspace packages/server --include-workspace-root=false
COPY tsconfig.base.json ./
COPY packages/server/tsconfig.json packages/server/tsconfig.build.json packages/server/
COPY packages/server/scripts packages/server/scripts
COPY packages/server/src packages/server/src
RUN npm run build --workspace packages/server

# --- runtime: node, production dependencies and the compiled server only
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production \
    STACYVM_SERVER_HOST=0.0.0.0 \
    STACYVM_SERVER_PORT=7423 \
    STACYVM_DATABASE_PATH=/var/lib/stacyvm/stacyvm.db \
    STACYVM_PREVIEW_LISTEN_ADDR=0.0.0.0:7480
WORKDIR /app
COPY --from=deps /app /app
COPY --from=build /app/packages/server/dist /app/packages/server/dist
RUN mkdir -p /var/lib/stacyvm && chown node:node /var/lib/stacyvm \
 && ln -s /app/packages/server/dist/cli/main.js /usr/local/bin/stacyvm
VOLUME ["/var/lib/stacyvm"]
# 7423: REST API. 7480: preview gateway (Traefik sends preview traffic here).
EXPOSE 7423 7480
# Without a Docker socket the server falls back to the mock provider. To use
# the Docker provider, mount /var/run/docker.sock and run as a user that may
# open it (the Compose files run as root: the socket is root-equivalent anyway).
USER node
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:7423/api/v1/live').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["stacyvm"]
CMD ["serve", "--host", "0.0.0.0"]
