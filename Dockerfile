# One image for every process of a deployment: the sidecar (the default command), the workload
# services, the gateway, Temporal workers, the Restate handler and DBOS (see docs/deployment.md).
#
#   docker build -t accompanist .                                 # FROM python:3.11-slim
#   docker build --build-arg BASE=accompanist-base -t accompanist .   # a local debootstrap base
#
# `make image` picks the base. Both bases work: python3 is /usr/local/bin/python3 on the slim
# image and /usr/bin/python3 on the Debian one, and everything runs from the venv in /opt/venv.
ARG BASE=python:3.11-slim

# The dependencies, read from pyproject.toml alone. The next stage copies the list, not
# pyproject.toml, so that a change there that leaves the dependencies alone (pytest settings,
# the version) keeps the dependency layer cached.
FROM ${BASE} AS requirements
COPY pyproject.toml /pyproject.toml
RUN python3 -c 'import tomllib; p = tomllib.load(open("/pyproject.toml", "rb")); \
print("\n".join(p["build-system"]["requires"] + p["project"]["dependencies"] \
+ p["project"]["optional-dependencies"]["bench"]))' > /requirements.txt

FROM ${BASE}

ENV LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    ACCOMPANIST_CONFIG=/etc/accompanist/sidecar.toml

# The unprivileged user every process runs as; its home holds the SQLite files (mount a volume).
RUN python3 -m venv /opt/venv \
    && groupadd --gid 10001 accompanist \
    && useradd --uid 10001 --gid accompanist --no-log-init --home-dir /var/lib/accompanist \
        --no-create-home --shell /usr/sbin/nologin accompanist \
    && install -d -o accompanist -g accompanist -m 0750 /var/lib/accompanist \
    && install -d -m 0755 /etc/accompanist

# Dependencies before the source: this layer is rebuilt only when they change. EXTRA_CA_CERTS
# (PEM text) is trusted by pip for this step only, for a network whose HTTPS goes through an
# intercepting proxy; the image does not keep it (deploy/build-image.sh passes the host's
# /usr/local/share/ca-certificates).
ARG EXTRA_CA_CERTS=
COPY --from=requirements /requirements.txt /tmp/requirements.txt
RUN if [ -n "$EXTRA_CA_CERTS" ]; then \
        { cat /etc/ssl/certs/ca-certificates.crt; printf '%s\n' "$EXTRA_CA_CERTS"; } > /tmp/ca.pem \
        && export PIP_CERT=/tmp/ca.pem; fi \
    && pip install --quiet -r /tmp/requirements.txt \
    && rm -f /tmp/requirements.txt /tmp/ca.pem

# The project itself, non-editable, with no dependency resolution left to do.
COPY . /src
RUN pip install --quiet --no-deps --no-build-isolation /src \
    && rm -rf /src \
    && install -d -m 0755 /opt/accompanist \
    && python3 -c 'import accompanist_py, bench, baselines, workloads' \
    && test -x /opt/venv/bin/temporal
COPY deploy/healthcheck.py /opt/accompanist/healthcheck.py

USER accompanist:accompanist
WORKDIR /var/lib/accompanist

# Asks /health the way a peer does (verified TLS, the sidecar's own certificate): see
# deploy/healthcheck.py. A container running something else than the sidecar overrides it.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/venv/bin/python", "/opt/accompanist/healthcheck.py"]

# The sidecar, configured by a mounted TOML file (its [tls] and [store] paths as seen inside).
CMD ["python", "-m", "accompanist_py.sidecar", "--config", "/etc/accompanist/sidecar.toml"]
